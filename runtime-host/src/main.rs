//! `rally-runtime`: the process that runs one lobby or match of a game's server logic.
//!
//! The engines (Lua, WASM) and the runtime protocol arrive with their own issue; until then the
//! binary only identifies itself, so that packaging and process pools can already be built
//! around it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Exit code for a command line the binary does not understand.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("rally-runtime {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "rally-runtime {}: no game engine is built into this version yet; \
                 usage: rally-runtime --version",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}
