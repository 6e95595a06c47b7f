#!/usr/bin/env bash
# Builds the guest for wasm32-unknown-unknown and puts echo.wasm next to rally.toml, which makes
# this directory a complete bundle (`rally deploy examples/wasm-echo`).
# Needs the target once: rustup target add wasm32-unknown-unknown
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --target wasm32-unknown-unknown "$@"
target_dir="${CARGO_TARGET_DIR:-target}"
# Copied under a temporary name and renamed, so a reader never sees half a module.
cp "$target_dir/wasm32-unknown-unknown/release/wasm_echo.wasm" echo.wasm.tmp
mv echo.wasm.tmp echo.wasm
echo "built $(pwd)/echo.wasm ($(wc -c <echo.wasm) bytes)"
