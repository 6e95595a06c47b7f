-- match.lua: one duel of the "hello" example. It echoes what players send and ends the match
-- after a minute, which sends both players back to a lobby.

local MATCH_SECONDS = 60

local match = {}

-- State of this match. A match runtime runs one match, so module locals are its state.
local elapsed = 0

function match.on_start(ctx)
    ctx.log.info("match started, mode", ctx.mode)
    -- Timers run on the tick clock, after on_tick.
    ctx.after(MATCH_SECONDS, function(ctx)
        ctx.broadcast("time is up")
        ctx.stop_match("time is up")
    end)
end

function match.on_client_assigned(ctx, client)
    ctx.respond(client.id, "you play for " .. client.group)
end

function match.on_message(ctx, client_id, payload, kind)
    ctx.respond(client_id, payload, kind)
end

function match.on_tick(ctx, dt)
    -- dt is in seconds: with tick_rate = 10 it is about 0.1. A real game simulates here.
    elapsed = elapsed + dt
end

function match.on_stop(ctx)
    ctx.log.info(string.format("match over after %.0f s", elapsed))
end

return match
