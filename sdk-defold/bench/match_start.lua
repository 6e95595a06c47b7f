-- bench/match_start.lua: how long SDK players wait, measured from the player's side with the
-- player SDK on lua-http. Pairs of new players, one pair at a time: sign-up to the lobby's
-- welcome, and from asking for a match to both players seeing the board (a cold match
-- runtime start, unless the deployment keeps warm ones). Then they play a short game and
-- leave. Prints p50 and p90 of both, in milliseconds.
--
--     cd sdk-defold
--     LUA_PATH="./?.lua;./standalone/?.lua;../examples/defold-tictactoe/?.lua;;" \
--         luajit bench/match_start.lua http://127.0.0.1:7350 dev tictactoe default 20

local engine = require("luahttp_engine")
local rally = require("rally.player")
local game_model = require("tictactoe.game")

local url, tenant, project, stage, pairs_count = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5] or "20")
assert(url and tenant and project and stage, "usage: match_start.lua URL TENANT PROJECT STAGE [PAIRS]")

local function wait(predicate, what)
    assert(engine.run_until(predicate, 30), "timed out waiting for " .. what)
end

local function player(index)
    local client = assert(rally.new({ engine = engine, url = url, tenant = tenant, project = project,
        stage = stage, save_key = "bench-" .. index }))
    return { client = client, game = game_model.new(client) }
end

local function percentile(values, p)
    table.sort(values)
    return values[math.max(1, math.ceil(#values * p))]
end

local lobby_ms, match_ms = {}, {}
for pair = 1, pairs_count do
    local players = { player(pair * 2), player(pair * 2 + 1) }
    for _, who in ipairs(players) do
        local started = engine.now()
        who.client:sign_up(function(err)
            assert(err == nil, tostring(err))
            who.client:connect()
        end)
        wait(function()
            return who.game.phase == "lobby"
        end, "the lobby")
        lobby_ms[#lobby_ms + 1] = (engine.now() - started) * 1000
    end
    local started = engine.now()
    players[1].game:play()
    players[2].game:play()
    wait(function()
        return players[1].game.phase == "playing" and players[2].game.phase == "playing"
    end, "the match")
    match_ms[#match_ms + 1] = (engine.now() - started) * 1000
    local x = players[1].game.you == "x" and players[1] or players[2]
    local o = x == players[1] and players[2] or players[1]
    for index, step in ipairs({ { x, 0 }, { o, 3 }, { x, 1 }, { o, 4 }, { x, 2 } }) do
        -- The mover has seen every earlier move, so the turn it sees is current.
        wait(function()
            local _, marks = step[1].game.board:gsub("[xo]", "")
            return marks == index - 1 and step[1].game:my_turn()
        end, "a turn")
        step[1].game:move(step[2])
    end
    wait(function()
        return x.game.phase == "over" and o.game.phase == "over"
    end, "the end")
    for _, who in ipairs(players) do
        who.client:leave()
    end
end

print(string.format("%s, %d pairs: sign-up to lobby p50 %.1f ms, p90 %.1f ms; match start p50 %.1f ms, p90 %.1f ms",
    jit and jit.version or _VERSION, pairs_count, percentile(lobby_ms, 0.5), percentile(lobby_ms, 0.9),
    percentile(match_ms, 0.5), percentile(match_ms, 0.9)))
os.exit(0)
