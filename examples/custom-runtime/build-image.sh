#!/usr/bin/env bash
# Builds a runtime image of tic-tac-toe from nothing but this checkout, for pushing to the
# studio's registry:  examples/custom-runtime/build-image.sh 127.0.0.1:5000/studio/tictactoe:v2
# The image is FROM scratch: the static `rally-runtime` (scripts/build-static-runtime, a release
# build) and the game's files in /app, where RALLY_BUNDLE points.
set -euo pipefail
reference=${1:?usage: build-image.sh REGISTRY/TENANT/PROJECT:vNUMBER}
here="$(cd "$(dirname "$0")" && pwd)"
runtime="$("$here/../../scripts/build-static-runtime")"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$runtime" "$context/rally-runtime"
mkdir "$context/app"
cp "$here/../tictactoe/"*.lua "$here/../tictactoe/rally.toml" "$context/app/"
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rally-runtime /rally-runtime
COPY app /app
ENV RALLY_BUNDLE=/app
USER 65534:65534
ENTRYPOINT ["/rally-runtime"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --tag "$reference" "$context" >/dev/null
echo "$reference"
