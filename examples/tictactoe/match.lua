-- match.lua: one game of tic-tac-toe between the players of groups "x" and "o". The server is
-- authoritative: clients only ask to play a cell, and every rule is checked here. Messages are
-- JSON text; README.md describes them.
--
-- A match runtime runs one match, so the module locals below are the match's state. When the
-- game ends the match stops, and the platform sends both players back to a lobby.

local OPPONENT_WAIT_SECONDS = 30 -- default; rally.toml's user_data can change it
local STOP_DELAY_SECONDS = 1     -- lets the last messages reach the players before they move

-- Cells are numbered 0..8 in messages, row by row; `board` is indexed 1..9 as Lua likes.
local LINES = {
    { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 }, -- rows
    { 1, 4, 7 }, { 2, 5, 8 }, { 3, 6, 9 }, -- columns
    { 1, 5, 9 }, { 3, 5, 7 },              -- diagonals
}

local messages = require("messages")
local send, broadcast, decode = messages.send, messages.broadcast, messages.decode

local match = {}

local players = {}           -- by mark ("x" or "o"): { id =, user_id =, profile = }
local board = { "-", "-", "-", "-", "-", "-", "-", "-", "-" }
local turn = "x"             -- whose move it is
local phase = "waiting"      -- "waiting" for both players, "playing", then "over"
local wait_timer = nil       -- the timer that gives up on a missing opponent
local summary = "not played" -- how the game ended, for the log

local function other(mark)
    return mark == "x" and "o" or "x"
end

-- The mark of a client, or nil if it does not play here.
local function mark_of(client_id)
    for mark, player in pairs(players) do
        if player.id == client_id then
            return mark
        end
    end
    return nil
end

local function board_text()
    return table.concat(board)
end

-- The winning mark, "draw" when the board is full, or nil while the game goes on.
local function outcome()
    for _, line in ipairs(LINES) do
        local mark = board[line[1]]
        if mark ~= "-" and mark == board[line[2]] and mark == board[line[3]] then
            return mark
        end
    end
    for cell = 1, 9 do
        if board[cell] == "-" then
            return nil
        end
    end
    return "draw"
end

-- The player's profile with the counters this game keeps, 0 for a new player. Other fields are
-- kept: set_profile replaces the whole profile, so they must be sent back too.
local function with_counters(profile)
    profile = profile or {}
    for _, counter in ipairs({ "wins", "losses", "draws" }) do
        profile[counter] = tonumber(profile[counter]) or 0
    end
    return profile
end

-- Adds one to a counter of a player's profile and saves the whole profile.
local function record(ctx, player, counter)
    player.profile[counter] = player.profile[counter] + 1
    ctx.set_profile(player.id, player.profile)
end

local function stop_waiting(ctx)
    if wait_timer then
        ctx.cancel(wait_timer)
        wait_timer = nil
    end
end

-- Ends the match: no more moves, and the runtime stops after a short pause. `reason` goes to
-- the platform; `how` is for the log.
local function finish(ctx, reason, how)
    phase = "over"
    summary = how or reason
    stop_waiting(ctx)
    ctx.after(STOP_DELAY_SECONDS, function(ctx)
        ctx.stop_match(reason)
    end)
end

local function start_game(ctx)
    phase = "playing"
    stop_waiting(ctx)
    -- Each player gets its own start message, since `you` differs.
    for _, mark in ipairs({ "x", "o" }) do
        send(ctx, players[mark].id, {
            type = "start",
            board = board_text(),
            turn = turn,
            you = mark,
            opponent = players[other(mark)].user_id,
        })
    end
end

-- Why `client_id` may not play `cell` now, or nil if it may.
local function illegal_reason(client_id, cell)
    if phase == "waiting" then
        return "not_started"
    elseif phase == "over" then
        return "game_over"
    elseif mark_of(client_id) ~= turn then
        return "not_your_turn"
    elseif type(cell) ~= "number" or cell ~= math.floor(cell) or cell < 0 or cell > 8 then
        return "bad_cell"
    elseif board[cell + 1] ~= "-" then
        return "cell_taken"
    end
    return nil
end

local function play(ctx, client_id, cell)
    local reason = illegal_reason(client_id, cell)
    if reason then
        send(ctx, client_id, { type = "illegal", reason = reason })
        return
    end
    local mark = turn
    board[cell + 1] = mark
    local ended = outcome()
    if not ended then
        turn = other(mark)
    end
    broadcast(ctx, {
        type = "state",
        board = board_text(),
        -- json.null, because a nil field would be left out of the JSON.
        turn = ended and ctx.json.null or turn,
        last = { mark = mark, cell = cell },
    })
    if ended == "draw" then
        broadcast(ctx, {
            type = "over",
            result = "draw",
            winner = ctx.json.null,
            board = board_text(),
        })
        record(ctx, players.x, "draws")
        record(ctx, players.o, "draws")
        finish(ctx, "finished", "draw")
    elseif ended then
        broadcast(ctx, { type = "over", result = "win", winner = ended, board = board_text() })
        record(ctx, players[ended], "wins")
        record(ctx, players[other(ended)], "losses")
        finish(ctx, "finished", ended .. " won")
    end
end

function match.on_start(ctx)
    ctx.log.info("match started, mode", ctx.mode)
end

function match.on_client_assigned(ctx, client)
    local mark = client.group
    if phase ~= "waiting" or (mark ~= "x" and mark ~= "o") or players[mark] then
        -- Only if the manifest's groups change, or a player arrives as the match ends.
        ctx.kick(client.id, "no_seat")
        return
    end
    players[mark] = {
        id = client.id,
        user_id = client.user_id,
        profile = with_counters(client.profile),
    }
    if players[other(mark)] then
        start_game(ctx)
    else
        send(ctx, client.id, { type = "waiting", you = mark })
        local seconds = tonumber(ctx.user_data.opponent_wait_seconds) or OPPONENT_WAIT_SECONDS
        wait_timer = ctx.after(seconds, function(ctx)
            broadcast(ctx, { type = "cancelled", reason = "opponent_missing" })
            finish(ctx, "opponent_missing")
        end)
    end
end

function match.on_message(ctx, client_id, payload, kind)
    local message = decode(ctx, payload, kind)
    if message == nil then
        send(ctx, client_id, { type = "error", reason = "malformed" })
    elseif message.type == "move" then
        play(ctx, client_id, message.cell)
    else
        send(ctx, client_id, { type = "error", reason = "unknown_type" })
    end
end

function match.on_client_removed(ctx, client_id, reason)
    local mark = mark_of(client_id)
    if mark == nil then
        return
    end
    players[mark] = nil
    ctx.log.info("player", mark, "left:", reason)
    if phase == "waiting" then
        finish(ctx, "opponent_left")
    elseif phase == "playing" then
        -- The player who stayed wins by forfeit. The leaver's loss is not recorded: the
        -- platform accepts set_profile only for clients still in the match.
        local winner = other(mark)
        send(ctx, players[winner].id, {
            type = "over",
            result = "forfeit",
            winner = winner,
            board = board_text(),
        })
        record(ctx, players[winner], "wins")
        finish(ctx, "finished", winner .. " won by forfeit")
    end
end

function match.on_stop(ctx)
    ctx.log.info("match stopping:", summary, "board", board_text())
end

return match
