-- rally/engine/defold.lua: the engine adapter for Defold, and the only file of the SDK that
-- calls Defold APIs: `http.request`, the `websocket` extension (defold/extension-websocket),
-- `timer.delay`, `json`, `sys.save`/`sys.load`, `sys.get_config_*` and `sys.exit`.
--
-- The player and server SDKs take an adapter in their config (`engine = require(
-- "rally.engine.defold")`) and do all their I/O through it, so that the same SDK code runs
-- outside the engine against a real platform (standalone/luahttp_engine.lua) and in unit tests
-- (test/scripted_engine.lua). An adapter is a table of:
--
--   http(options, callback)       options: method, url, headers (name -> value), body (string
--                                 or nil), timeout (seconds); callback({status, body, error}),
--                                 status 0 when no answer came
--   websocket(url, options, handlers) -> socket
--                                 options: protocols (list), headers, timeout; handlers:
--                                 open(), message(data, kind) with kind "text", "binary" or nil
--                                 when the engine cannot tell, close(code, reason) once after
--                                 open, error(message, response) instead of open when the
--                                 connection fails (response: {status, body} of a refused
--                                 upgrade); socket:send(data, kind), socket:close(code, reason)
--   delay(seconds, fn) -> handle, cancel(handle)
--   now()                         seconds (for intervals)
--   json_encode(value), json_decode(text) (may raise), null (JSON null)
--   save(key, table), load(key) -> table or nil
--   config(key) -> string or nil  (game.project's settings)
--   getenv(name), exit(code)      (the server SDK)
--
-- Callbacks Defold makes into the SDK arrive on the main thread, between frames, like any
-- script callback: nothing here blocks.

local engine = { name = "defold" }

engine.null = json.null

function engine.json_encode(value)
    return json.encode(value)
end

function engine.json_decode(text)
    return json.decode(text, { decode_null_as_userdata = true })
end

-- Seconds, from LuaSocket's clock, which every Defold build has (wall time: a clock set back
-- makes a refresh come early, never late, as timers still run).
function engine.now()
    return socket.gettime()
end

local function header_lines(headers)
    local lines = {}
    for name, value in pairs(headers or {}) do
        lines[#lines + 1] = name .. ": " .. value
    end
    return lines
end

function engine.http(options, callback)
    local headers = {}
    for name, value in pairs(options.headers or {}) do
        headers[name] = value
    end
    http.request(options.url, options.method, function(_, _, response)
        -- Defold answers status 0 when no HTTP answer came (no route, refused, timed out).
        callback({
            status = response.status or 0,
            body = response.response,
            error = response.error,
        })
    end, headers, options.body, { timeout = options.timeout })
end

function engine.websocket(url, options, handlers)
    local state = "connecting"
    local params = {
        timeout = math.floor((options.timeout or 10) * 1000),
        -- One string: native builds send it as the Sec-WebSocket-Protocol header, HTML5 builds
        -- split it on commas for the browser's WebSocket.
        protocol = options.protocols and table.concat(options.protocols, ",") or nil,
    }
    local lines = header_lines(options.headers)
    if #lines > 0 then
        params.headers = table.concat(lines, "\r\n")
    end
    local connection
    connection = websocket.connect(url, params, function(_, _, data)
        if data.event == websocket.EVENT_CONNECTED then
            state = "open"
            handlers.open()
        elseif data.event == websocket.EVENT_MESSAGE then
            -- The extension does not say whether a frame was text or binary.
            handlers.message(data.message, nil)
        elseif data.event == websocket.EVENT_DISCONNECTED then
            local was = state
            state = "closed"
            if was == "closed" then
                -- The extension follows an error with a disconnect: one end is reported once.
                return
            elseif was == "connecting" then
                handlers.error(data.message or "disconnected", nil)
            else
                handlers.close(data.code or 1006, data.message or "")
            end
        elseif data.event == websocket.EVENT_ERROR then
            local was = state
            state = "closed"
            local answer = data.handshake_response
            if was == "connecting" then
                handlers.error(data.message or data.error or "connection failed",
                    answer and { status = answer.status, body = answer.response } or nil)
            elseif was == "open" then
                handlers.close(1006, data.message or data.error or "connection lost")
            end
        end
    end)
    local socket_object = {}
    function socket_object.send(_, payload, kind)
        if state ~= "open" then
            return false
        end
        local data_type = kind == "binary" and websocket.DATA_TYPE_BINARY or websocket.DATA_TYPE_TEXT
        -- It raises when the connection went down before its callback said so.
        return (pcall(websocket.send, connection, payload, { type = data_type }))
    end
    function socket_object.close()
        if state == "open" or state == "connecting" then
            local was = state
            state = "closed"
            websocket.disconnect(connection)
            if was == "open" then
                handlers.close(1000, "closed by the game")
            end
        end
    end
    return socket_object
end

function engine.delay(seconds, fn)
    return timer.delay(seconds, false, function()
        fn()
    end)
end

function engine.cancel(handle)
    if handle then
        timer.cancel(handle)
    end
end

-- Each game saves under its own name: game.project's title (or `rally.save_app`).
local function save_file(key)
    local app = engine.config("rally.save_app") or engine.config("project.title") or "rally"
    return sys.get_save_file((app:gsub("[^%w_%-]", "_")), "rally-" .. key)
end

function engine.save(key, data)
    return sys.save(save_file(key), data)
end

function engine.load(key)
    local data = sys.load(save_file(key))
    if data == nil or next(data) == nil then
        return nil
    end
    return data
end

function engine.config(key)
    local value
    if sys.get_config_string then
        value = sys.get_config_string(key, "")
    else
        value = sys.get_config(key, "")
    end
    if value == nil or value == "" then
        return nil
    end
    return value
end

function engine.getenv(name)
    return os.getenv(name)
end

function engine.exit(code)
    sys.exit(code)
end

return engine
