-- lobby.lua: the lobby of the tic-tac-toe example. Every client lands here after connecting, and
-- comes back here after each game. It greets the player with its record and, on request, asks
-- the matchmaker for a `duel`. Messages are JSON text; README.md describes them.

local messages = require("messages")
local send, decode = messages.send, messages.decode

local lobby = {}

function lobby.on_start(ctx)
    ctx.log.info("lobby started for", ctx.user_data.game)
end

function lobby.on_client_assigned(ctx, client)
    -- The profile is the player's, kept by the platform between sessions; match.lua updates
    -- these counters. A new player has an empty profile, hence the defaults.
    local profile = client.profile or {}
    send(ctx, client.id, {
        type = "welcome",
        game = ctx.user_data.game,
        wins = tonumber(profile.wins) or 0,
        losses = tonumber(profile.losses) or 0,
        draws = tonumber(profile.draws) or 0,
    })
end

function lobby.on_message(ctx, client_id, payload, kind)
    local message = decode(ctx, payload, kind)
    if message == nil then
        send(ctx, client_id, { type = "error", reason = "malformed" })
    elseif message.type == "play" then
        -- The platform finds an opponent, starts a match and moves both players there. If it
        -- refuses (e.g. the player is already searching), it tells the runtime, not the script.
        ctx.request_matchmaking(client_id, "duel")
        send(ctx, client_id, { type = "searching" })
    else
        send(ctx, client_id, { type = "error", reason = "unknown_type" })
    end
end

function lobby.on_client_removed(ctx, client_id, reason)
    ctx.log.debug("client", client_id, "left the lobby:", reason)
end

function lobby.on_stop(ctx)
    ctx.log.info("lobby stopping")
end

return lobby
