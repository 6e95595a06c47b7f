-- lobby.lua: the lobby of the "hello" example. Every client lands here after connecting.
-- Sending "duel" asks the matchmaker for a match; anything else is echoed back.
-- The module returns its handlers; each receives `ctx`, the runtime's API. A game starts by
-- copying this file.

local lobby = {}

function lobby.on_start(ctx)
    ctx.log.info("lobby started")
end

function lobby.on_client_assigned(ctx, client)
    -- Greet on arrival so the client knows it reached a lobby and what it may send.
    ctx.respond(client.id, ctx.user_data.greeting .. " Send \"duel\" to find an opponent.")
end

function lobby.on_message(ctx, client_id, payload, kind)
    if kind == "text" and payload == "duel" then
        ctx.request_matchmaking(client_id, "duel")
    else
        -- Echo; a binary message goes back as binary.
        ctx.respond(client_id, payload, kind)
    end
end

function lobby.on_client_removed(ctx, client_id, reason)
    ctx.log.debug("client", client_id, "left the lobby:", reason)
end

function lobby.on_stop(ctx)
    ctx.log.info("lobby stopping")
end

return lobby
