-- match.lua: one duel of the "hello" example. It echoes what players send and ends the match
-- after a minute, which sends both players back to a lobby.

local MATCH_SECONDS = 60

local match = {
    elapsed = 0,
}

function match.on_start(ctx)
    ctx.log("match started")
end

function match.on_client_assigned(ctx, client)
    ctx.respond(client.id, "you play for " .. client.group)
end

function match.on_message(ctx, client_id, payload)
    ctx.respond(client_id, payload)
end

function match.on_tick(ctx, dt)
    -- dt is in seconds: with tick_rate = 10 it is about 0.1.
    match.elapsed = match.elapsed + dt
    if match.elapsed >= MATCH_SECONDS then
        ctx.stop_match()
    end
end

function match.on_stop(ctx)
    ctx.log("match over after " .. math.floor(match.elapsed) .. " s")
end

return match
