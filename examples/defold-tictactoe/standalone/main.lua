-- standalone/main.lua: the tic-tac-toe server (tictactoe/server_logic.lua) as a Rally runtime
-- under plain Lua 5.1 or LuaJIT, with the Defold server SDK on the lua-http engine adapter.
-- The platform starts it the way it starts a headless Defold build: a program of the bundle
-- (bin/server) with the runtime's environment. make-bundle.sh assembles the bundle.

local engine = require("luahttp_engine")
local server = require("rally.server")
local logic = require("tictactoe.server_logic")

server.start({ engine = engine, handler = logic.handler })
engine.run()
