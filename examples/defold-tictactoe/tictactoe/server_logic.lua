-- tictactoe/server_logic.lua: the server of examples/tictactoe written against the Defold server
-- SDK (rally/server.lua) instead of Rally's Lua logic API: the same lobby, the same match, the
-- same messages (examples/tictactoe/README.md), so either server plays with the same game.
-- One handler serves both kinds of runtime; `runtime.qualifier` says which this one is. No
-- engine calls: server/server.script runs it in a headless Defold build, standalone/main.lua
-- under plain Lua.

local rules = require("tictactoe.rules")

local OPPONENT_WAIT_SECONDS = 30
local STOP_DELAY_SECONDS = 1 -- lets the last messages reach the players before they move

local logic = {}

local function send(runtime, client_id, message)
    runtime:respond(client_id, runtime.json.encode(message))
end

local function broadcast(runtime, message)
    runtime:broadcast(runtime.json.encode(message))
end

-- A player's message: a JSON object with a string `type`, or nil.
local function decode(runtime, data, kind)
    if kind ~= "text" then
        return nil
    end
    local ok, message = pcall(runtime.json.decode, data)
    if ok and type(message) == "table" and type(message.type) == "string" then
        return message
    end
    return nil
end

local function counters(profile)
    profile = type(profile) == "table" and profile or {}
    for _, counter in ipairs({ "wins", "losses", "draws" }) do
        profile[counter] = tonumber(profile[counter]) or 0
    end
    return profile
end

-- ---------------------------------------------------------------------------------------
-- The lobby

local lobby = {}

function lobby.client_assigned(runtime, client)
    local profile = counters(client.profile)
    send(runtime, client.id, {
        type = "welcome",
        game = runtime.user_data and runtime.user_data.game or "Tic-tac-toe",
        wins = profile.wins,
        losses = profile.losses,
        draws = profile.draws,
    })
end

function lobby.message(runtime, client_id, data, kind)
    local message = decode(runtime, data, kind)
    if message == nil then
        send(runtime, client_id, { type = "error", reason = "malformed" })
    elseif message.type == "play" then
        runtime:request_matchmaking(client_id, "duel")
        send(runtime, client_id, { type = "searching" })
    else
        send(runtime, client_id, { type = "error", reason = "unknown_type" })
    end
end

-- ---------------------------------------------------------------------------------------
-- The match: one game, its state on the runtime object.

local match = {}

local function mark_of(game, client_id)
    for mark, player in pairs(game.players) do
        if player.id == client_id then
            return mark
        end
    end
    return nil
end

local function record(runtime, player, counter)
    player.profile[counter] = player.profile[counter] + 1
    runtime:set_profile(player.id, player.profile)
end

local function finish(runtime, reason, how)
    local game = runtime.game
    game.phase = "over"
    game.summary = how or reason
    if game.wait_timer then
        runtime:cancel(game.wait_timer)
        game.wait_timer = nil
    end
    runtime:after(STOP_DELAY_SECONDS, function()
        runtime:stop_match(reason)
    end)
end

local function start_game(runtime)
    local game = runtime.game
    game.phase = "playing"
    if game.wait_timer then
        runtime:cancel(game.wait_timer)
        game.wait_timer = nil
    end
    for _, mark in ipairs({ "x", "o" }) do
        send(runtime, game.players[mark].id, {
            type = "start",
            board = game.board,
            turn = game.turn,
            you = mark,
            opponent = game.players[rules.other(mark)].user_id,
        })
    end
end

local function play(runtime, client_id, cell)
    local game = runtime.game
    local reason = rules.illegal_reason(game.phase, game.board, game.turn, mark_of(game, client_id), cell)
    if reason then
        return send(runtime, client_id, { type = "illegal", reason = reason })
    end
    local mark = game.turn
    game.board = rules.place(game.board, cell, mark)
    local ended = rules.outcome(game.board)
    if not ended then
        game.turn = rules.other(mark)
    end
    broadcast(runtime, {
        type = "state",
        board = game.board,
        turn = ended and runtime.json.null or game.turn,
        last = { mark = mark, cell = cell },
    })
    if ended == "draw" then
        broadcast(runtime, { type = "over", result = "draw", winner = runtime.json.null, board = game.board })
        record(runtime, game.players.x, "draws")
        record(runtime, game.players.o, "draws")
        finish(runtime, "finished", "draw")
    elseif ended then
        broadcast(runtime, { type = "over", result = "win", winner = ended, board = game.board })
        record(runtime, game.players[ended], "wins")
        record(runtime, game.players[rules.other(ended)], "losses")
        finish(runtime, "finished", ended .. " won")
    end
end

function match.runtime_created(runtime)
    runtime.game = { players = {}, board = rules.EMPTY_BOARD, turn = "x", phase = "waiting", summary = "not played" }
end

function match.client_assigned(runtime, client)
    local game = runtime.game
    local mark = client.group
    if game.phase ~= "waiting" or (mark ~= "x" and mark ~= "o") or game.players[mark] then
        return runtime:kick(client.id, "no_seat")
    end
    game.players[mark] = { id = client.id, user_id = client.user_id, profile = counters(client.profile) }
    if game.players[rules.other(mark)] then
        return start_game(runtime)
    end
    send(runtime, client.id, { type = "waiting", you = mark })
    local seconds = tonumber(runtime.user_data and runtime.user_data.opponent_wait_seconds) or OPPONENT_WAIT_SECONDS
    game.wait_timer = runtime:after(seconds, function()
        broadcast(runtime, { type = "cancelled", reason = "opponent_missing" })
        finish(runtime, "opponent_missing")
    end)
end

function match.message(runtime, client_id, data, kind)
    local message = decode(runtime, data, kind)
    if message == nil then
        send(runtime, client_id, { type = "error", reason = "malformed" })
    elseif message.type == "move" then
        play(runtime, client_id, message.cell)
    else
        send(runtime, client_id, { type = "error", reason = "unknown_type" })
    end
end

function match.client_removed(runtime, client_id, reason)
    local game = runtime.game
    local mark = mark_of(game, client_id)
    if mark == nil then
        return
    end
    game.players[mark] = nil
    runtime:log("info", "player " .. mark .. " left: " .. tostring(reason))
    if game.phase == "waiting" then
        finish(runtime, "opponent_left")
    elseif game.phase == "playing" then
        local winner = rules.other(mark)
        send(runtime, game.players[winner].id, { type = "over", result = "forfeit", winner = winner, board = game.board })
        record(runtime, game.players[winner], "wins")
        finish(runtime, "finished", winner .. " won by forfeit")
    end
end

function match.stop(runtime)
    runtime:log("info", "match stopping: " .. runtime.game.summary .. " board " .. runtime.game.board)
end

-- ---------------------------------------------------------------------------------------
-- The handler for rally/server.lua: each event goes to the lobby's or the match's function.

local function route(name)
    return function(runtime, ...)
        local part = runtime.qualifier == "match" and match or lobby
        if part[name] then
            return part[name](runtime, ...)
        end
    end
end

logic.handler = {
    runtime_created = function(runtime, info)
        runtime:log("info", (info.qualifier or "?") .. " started" .. (info.mode and (", mode " .. info.mode) or ""))
        return route("runtime_created")(runtime, info)
    end,
    client_assigned = route("client_assigned"),
    client_removed = route("client_removed"),
    message = route("message"),
    stop = route("stop"),
    error = function(runtime, err)
        runtime:log("warn", "the platform refused a command: " .. tostring(err))
    end,
}

return logic
