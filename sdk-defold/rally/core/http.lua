-- rally/core/http.lua: JSON calls to the platform's HTTP API through the engine adapter, with
-- the platform's refusals turned into SDK errors. No engine calls here.

local util = require("rally.core.util")

local http = {}

local TIMEOUT_SECONDS = 35 -- above the long-poll's longest wait (30 s)

-- Decodes `text` as JSON with the engine's decoder; nil when it is not JSON.
function http.decode(engine, text)
    if type(text) ~= "string" or text == "" then
        return nil
    end
    local ok, value = pcall(engine.json_decode, text)
    if ok then
        return value
    end
    return nil
end

-- The SDK error for an HTTP answer that is not a success: the platform's own code and message
-- (`{"error": {"code", "message"}}`) when it sent them.
function http.refusal(engine, status, body)
    if status == 0 or status == nil then
        return util.error("unreachable", "the platform did not answer" .. (body and (": " .. tostring(body)) or ""))
    end
    local decoded = http.decode(engine, body)
    if type(decoded) == "table" and type(decoded.error) == "table" and type(decoded.error.code) == "string" then
        local err = util.error(decoded.error.code, tostring(decoded.error.message or decoded.error.code), status)
        if type(decoded.error.details) == "table" then
            err.details = decoded.error.details
        end
        return err
    end
    return util.error("http_" .. tostring(status), "the platform answered HTTP " .. tostring(status), status)
end

-- Calls `method url` with `body` (a table sent as JSON, or nil) and, when `token` is given, the
-- bearer token. `callback(err, value)` gets the decoded JSON answer (true for an empty one), or
-- an SDK error. The callback is always called, once, and never raises into the engine.
function http.call(engine, method, url, body, token, callback, timeout)
    local headers = { ["Accept"] = "application/json" }
    local encoded = nil
    if body ~= nil then
        encoded = type(body) == "string" and body or engine.json_encode(body)
        headers["Content-Type"] = "application/json"
    end
    if token then
        headers["Authorization"] = "Bearer " .. token
    end
    local done = false
    local function finish(err, value)
        if done then
            return
        end
        done = true
        if not callback then
            return
        end
        local ok, failure = util.protect(callback, err, value)
        if not ok then
            print("rally: a callback failed: " .. failure)
        end
    end
    local ok, failure = util.protect(engine.http, {
        method = method,
        url = url,
        headers = headers,
        body = encoded,
        timeout = timeout or TIMEOUT_SECONDS,
    }, function(response)
        local status = response and response.status or 0
        if status == 0 then
            finish(util.error("unreachable", "the platform did not answer: " .. tostring(response and response.error or "no response")))
        elseif status >= 200 and status < 300 then
            if response.body == nil or response.body == "" then
                finish(nil, true)
            else
                local value = http.decode(engine, response.body)
                if value == nil then
                    finish(util.error("malformed_response", "the platform's answer is not JSON", status))
                else
                    finish(nil, value)
                end
            end
        else
            finish(http.refusal(engine, status, response.body))
        end
    end)
    if not ok then
        finish(util.error("unreachable", "the request could not be sent: " .. failure))
    end
end

return http
