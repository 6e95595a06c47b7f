-- rally/core/util.lua: small pieces the player and server SDKs share: error values, protected
-- calls into game code, URL building and the reconnect back-off. No engine calls here.

local util = {}

local error_meta = {
    __tostring = function(err)
        if err.status then
            return string.format("%s (HTTP %d): %s", err.code, err.status, err.message)
        end
        return err.code .. ": " .. err.message
    end,
}

-- An SDK error: a table with a stable `code`, a readable `message` and, for refusals from the
-- platform, the HTTP `status`. `tostring(err)` reads well in a log.
function util.error(code, message, status)
    return setmetatable({ code = code, message = message or code, status = status }, error_meta)
end

-- Calls `fn(...)` and never lets an error escape into the caller (the game's `update`, or an
-- engine callback). Returns true and the results, or false and the error as text.
function util.protect(fn, ...)
    return util.settle(pcall(fn, ...))
end

-- pcall's results with the error as text; every result kept, nils included.
function util.settle(ok, ...)
    if not ok then
        return false, tostring((...))
    end
    return true, ...
end

-- The delay before reconnect attempt `attempt` (1, 2, ...): 100 ms doubling to `ceiling`
-- seconds (5 by default), with up to a tenth added at random so that many clients dropped at
-- once do not come back in step.
function util.backoff(attempt, ceiling)
    local delay = math.min(0.1 * 2 ^ (attempt - 1), ceiling or 5)
    return delay + delay * 0.1 * math.random()
end

-- `text` made safe for a URL path segment or a query value.
function util.escape(text)
    return (tostring(text):gsub("[^%w%-%._~]", function(char)
        return string.format("%%%02X", string.byte(char))
    end))
end

-- The platform's base URL without a trailing slash, or nil and an error.
function util.base_url(url)
    if type(url) ~= "string" or not url:match("^https?://[^/]+") then
        return nil, util.error("invalid_config", "the platform URL must start with http:// or https://")
    end
    return (url:gsub("/+$", ""))
end

-- The WebSocket URL of `path` on the platform at `base` (http -> ws, https -> wss).
function util.socket_url(base, path)
    return (base:gsub("^http", "ws")) .. path
end

-- Copies the keys of `source` into a new table (one level).
function util.copy(source)
    local copy = {}
    for key, value in pairs(source or {}) do
        copy[key] = value
    end
    return copy
end

return util
