-- lobby.lua: the lobby of the "hello" example. Every client lands here after connecting.
-- Sending "duel" asks the matchmaker for a match; anything else is echoed back.
-- The handler names follow the runtime API; a game starts by copying this file.

local lobby = {}

function lobby.on_start(ctx)
    ctx.log("lobby started")
end

function lobby.on_client_assigned(ctx, client)
    -- Greet on arrival so the client knows it reached a lobby and what it may send.
    ctx.respond(client.id, ctx.user_data.greeting .. " Send \"duel\" to find an opponent.")
end

function lobby.on_message(ctx, client_id, payload)
    if payload == "duel" then
        ctx.request_matchmaking(client_id, "duel")
    else
        ctx.respond(client_id, payload)
    end
end

function lobby.on_tick(ctx, dt)
    -- A lobby has nothing to simulate; matchmaking happens in the platform.
end

function lobby.on_stop(ctx)
    ctx.log("lobby stopping")
end

return lobby
