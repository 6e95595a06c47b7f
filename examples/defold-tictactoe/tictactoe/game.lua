-- tictactoe/game.lua: the game's side of tic-tac-toe, free of engine calls: it follows the
-- player SDK's events and the example's messages (examples/tictactoe/README.md) and keeps what
-- the screen shows. main/game.gui_script draws it; the SDK tests play whole games with it.

local rules = require("tictactoe.rules")

local game = {}
game.__index = game

-- A game over `client` (a rally.player client). `on_change(game)` runs after every change.
function game.new(client, on_change)
    local self = setmetatable({
        client = client,
        on_change = on_change,
        phase = "offline", -- offline, lobby, searching, waiting, playing, over
        board = rules.EMPTY_BOARD,
        you = nil,
        turn = nil,
        record = { wins = 0, losses = 0, draws = 0 },
        result = nil,      -- the last `over` message
        notice = nil,      -- the last thing worth telling the player (errors, illegal moves)
        games_played = 0,
    }, game)
    client:on_event(function(event)
        self:handle(event)
    end)
    return self
end

function game:changed()
    if self.on_change then
        self.on_change(self)
    end
end

function game:handle(event)
    if event.type == "runtime_assigned" then
        if event.qualifier == "match" then
            self.phase = "waiting"
            self.you = event.group
            self.board = rules.EMPTY_BOARD
            self.turn = nil
        else
            self.phase = "lobby"
        end
    elseif event.type == "message" and event.text then
        local ok, message = pcall(self.client.engine.json_decode, event.text)
        if ok and type(message) == "table" then
            self:handle_message(message)
        end
    elseif event.type == "error" then
        self.notice = event.code .. (event.message and (": " .. event.message) or "")
    elseif event.type == "matchmaking_failed" then
        self.phase = "lobby"
        self.notice = "no opponent found (" .. tostring(event.reason) .. ")"
    elseif event.type == "disconnected" then
        self.notice = event.reconnecting and "connection lost, reconnecting" or "disconnected"
    elseif event.type == "greeted" then
        self.notice = event.resumed and "reconnected" or nil
    elseif event.type == "client_deleted" then
        self.phase = "offline"
        self.notice = "left the game (" .. tostring(event.reason) .. ")"
    end
    self:changed()
end

local NULL_SAFE = { turn = true, winner = true }

function game:handle_message(message)
    for key in pairs(NULL_SAFE) do
        if type(message[key]) ~= "string" then
            message[key] = nil
        end
    end
    if message.type == "welcome" then
        self.phase = "lobby"
        self.record = { wins = message.wins or 0, losses = message.losses or 0, draws = message.draws or 0 }
    elseif message.type == "searching" then
        self.phase = "searching"
    elseif message.type == "waiting" then
        self.phase = "waiting"
        self.you = message.you
    elseif message.type == "start" then
        self.phase = "playing"
        self.board = message.board
        self.turn = message.turn
        self.you = message.you
        self.result = nil
    elseif message.type == "state" then
        self.board = message.board
        self.turn = message.turn
    elseif message.type == "over" then
        self.phase = "over"
        self.board = message.board or self.board
        self.turn = nil
        self.result = message
        self.games_played = self.games_played + 1
    elseif message.type == "cancelled" then
        self.phase = "over"
        self.result = message
    elseif message.type == "illegal" or message.type == "error" then
        self.notice = message.type .. ": " .. tostring(message.reason)
    end
end

-- Asks the lobby for an opponent.
function game:play()
    return self.client:request_matchmaking("duel", { type = "play" })
end

-- Plays `cell` (0..8).
function game:move(cell)
    return self.client:send_json({ type = "move", cell = cell })
end

function game:my_turn()
    return self.phase == "playing" and self.turn == self.you
end

-- One line for the status bar.
function game:status()
    if self.phase == "offline" then
        return "offline"
    elseif self.phase == "lobby" then
        local r = self.record
        return string.format("lobby: %d won, %d lost, %d drawn. Tap to play", r.wins, r.losses, r.draws)
    elseif self.phase == "searching" then
        return "looking for an opponent..."
    elseif self.phase == "waiting" then
        return "you are " .. tostring(self.you) .. ", waiting for the opponent"
    elseif self.phase == "playing" then
        return self:my_turn() and ("your move (" .. self.you .. ")") or "their move"
    elseif self.result and self.result.type == "cancelled" then
        return "cancelled: " .. tostring(self.result.reason)
    elseif self.result and self.result.result == "draw" then
        return "draw"
    elseif self.result then
        return (self.result.winner == self.you and "you won" or "you lost")
            .. (self.result.result == "forfeit" and " (forfeit)" or "")
    end
    return self.phase
end

return game
