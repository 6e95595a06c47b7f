-- messages.lua: the JSON messages the lobby and the match exchange with players (README.md
-- describes them). Both `require("messages")`.

local messages = {}

-- Sends `message` (a table) to one client as JSON text.
function messages.send(ctx, client_id, message)
    ctx.respond(client_id, ctx.json.encode(message))
end

-- Sends `message` (a table) to every client of the runtime as JSON text.
function messages.broadcast(ctx, message)
    ctx.broadcast(ctx.json.encode(message))
end

-- Reads a client's message: a JSON object with a string `type`, or nil for anything else.
-- json.decode raises an error on bad JSON, so it runs under pcall: a bad message must never
-- make the handler fail.
function messages.decode(ctx, payload, kind)
    if kind ~= "text" then
        return nil
    end
    local ok, message = pcall(ctx.json.decode, payload)
    if ok and type(message) == "table" and type(message.type) == "string" then
        return message
    end
    return nil
end

return messages
