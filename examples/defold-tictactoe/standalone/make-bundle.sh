#!/usr/bin/env bash
# Assembles the bundle of the tic-tac-toe server that runs on the Defold server SDK under plain
# Lua: OUT/rally.toml, OUT/bin/server (runs main.lua with INTERPRETER, luajit by default), the
# SDK (rally/ and its lua-http engine adapter) and the game's server modules. Then:
#     rally deploy OUT --stage default
# The machine that runs the runtimes needs the interpreter, lua-http, lua-cqueues and
# lua-cjson (Debian: apt-get install luajit lua-http lua-cqueues lua-cjson).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT [lua5.1|luajit]" >&2
    exit 2
fi
out=$1
interpreter=${2:-luajit}
case "$interpreter" in
    lua5.1 | luajit) ;;
    *) echo "$0: the interpreter must be lua5.1 or luajit" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
example=$(dirname "$here")
sdk=$(cd "$example/../../sdk-defold" && pwd)

rm -rf "$out"
mkdir -p "$out/bin" "$out/tictactoe"
cp "$here/rally.toml" "$here/main.lua" "$out/"
cp -R "$sdk/rally" "$out/rally"
rm -rf "$out/rally/engine"          # the Defold adapter has no use outside Defold
cp "$sdk/standalone/luahttp_engine.lua" "$out/"
cp "$example/tictactoe/rules.lua" "$example/tictactoe/server_logic.lua" "$out/tictactoe/"
cat >"$out/bin/server" <<SCRIPT
#!/bin/sh
# The runtime program: the platform runs it in the bundle's directory with the runtime's
# environment (RALLY_RUNTIME_ID, RALLY_RUNTIME_SECRET, ...) and PATH.
cd "\$(dirname "\$0")/.." || exit 2
LUA_PATH="./?.lua;;" exec $interpreter main.lua
SCRIPT
chmod 755 "$out/bin/server"
echo "$out: tic-tac-toe on the Defold server SDK, run by $interpreter"
