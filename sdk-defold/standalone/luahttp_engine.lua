-- standalone/luahttp_engine.lua: the Rally SDKs' engine adapter for plain Lua 5.1 and LuaJIT,
-- outside Defold: real HTTP and WebSocket I/O with lua-http on a cqueues event loop, JSON with
-- lua-cjson. The SDK tests play against a real platform with it, and a server written against
-- rally/server.lua runs as a Rally runtime with it (`lua5.1 main.lua`), the way a headless
-- Defold build runs with rally/engine/defold.lua. It is not part of the Defold library
-- (`include_dirs = rally`): Defold has engine APIs of its own for all of this.
--
-- Debian: apt-get install lua5.1 luajit lua-http lua-cqueues lua-cjson lua-bitop
--
-- Besides the adapter functions (rally/engine/defold.lua describes them), it offers the loop:
-- `engine.run_until(predicate, timeout_seconds)` steps the event loop until `predicate()` is
-- true (false on timeout), and `engine.run()` steps it until `engine.exit` is called.

local cqueues = require("cqueues")
local condition = require("cqueues.condition")
local request = require("http.request")
local websocket = require("http.websocket")
local cjson = require("cjson")

local engine = { name = "luahttp" }

local loop = cqueues.new()
engine.loop = loop

-- One sleeping task keeps `loop:step(timeout)` waiting for I/O instead of spinning when
-- nothing else is scheduled.
loop:wrap(function()
    while true do
        cqueues.sleep(3600)
    end
end)

-- A task on the loop. Not under pcall: Lua 5.1 cannot yield across it. A task that fails ends
-- alone, and `loop:step` reports it (see run_until and run).
local function spawn(fn)
    loop:wrap(fn)
end

engine.null = cjson.null
engine.json_encode = cjson.encode
engine.json_decode = cjson.decode
engine.now = cqueues.monotime

function engine.http(options, callback)
    spawn(function()
        local call = request.new_from_uri(options.url)
        call.headers:upsert(":method", options.method)
        for name, value in pairs(options.headers or {}) do
            call.headers:upsert(name:lower(), value)
        end
        if options.body then
            call:set_body(options.body)
            call.headers:delete("expect")
        end
        local headers, stream = call:go(options.timeout)
        if not headers then
            callback({ status = 0, error = tostring(stream) })
            return
        end
        local body, err = stream:get_body_as_string(options.timeout)
        stream:shutdown()
        if body == nil then
            callback({ status = 0, error = "the answer was cut short: " .. tostring(err) })
            return
        end
        callback({ status = tonumber(headers:get(":status")), body = body })
    end)
end

function engine.websocket(url, options, handlers)
    local ws = websocket.new_from_uri(url, options.protocols)
    for name, value in pairs(options.headers or {}) do
        ws.request.headers:upsert(name:lower(), value)
    end
    -- lua-http reports a refused upgrade as "status code not 101"; keep the answer so that the
    -- SDK can read the platform's error code.
    local answer, answer_stream
    local go = ws.request.go
    ws.request.go = function(self, timeout)
        local headers, stream, errno = go(self, timeout)
        answer, answer_stream = headers, stream
        return headers, stream, errno
    end

    local outbox, wake = {}, condition.new()
    local socket = { state = "connecting" }

    function socket.send(_, data, kind)
        if socket.state ~= "open" then
            return false
        end
        outbox[#outbox + 1] = { data = data, kind = kind == "binary" and "binary" or "text" }
        wake:signal()
        return true
    end

    function socket.close(_, code, reason)
        if socket.state == "open" or socket.state == "connecting" then
            socket.state = "closing"
            spawn(function()
                ws:close(code or 1000, reason or "", 2)
            end)
        end
    end

    -- For tests: the connection vanishes without a close frame, as when a phone loses its
    -- network. The platform sees the TCP connection end; the SDK hears code 1006.
    function socket.abort()
        socket.state = "closing"
        if ws.socket then
            ws.socket:shutdown()
        end
        wake:signal()
    end

    spawn(function()
        local ok, err = ws:connect(options.timeout or 10)
        if not ok then
            socket.state = "closed"
            local response = nil
            if answer and answer:get(":status") ~= "101" then
                response = {
                    status = tonumber(answer:get(":status")),
                    body = answer_stream:get_body_as_string(2),
                }
            end
            handlers.error(tostring(err), response)
            return
        end
        if socket.state == "closing" then
            ws:close(1000, "", 1)
            socket.state = "closed"
            handlers.close(1000, "closed before it opened")
            return
        end
        socket.state = "open"
        spawn(function()
            while socket.state == "open" do
                local item = table.remove(outbox, 1)
                if item then
                    ws:send(item.data, item.kind)
                else
                    wake:wait(1)
                end
            end
        end)
        handlers.open()
        while true do
            local data, kind, errno = ws:receive()
            if data == nil then
                local was = socket.state
                socket.state = "closed"
                wake:signal()
                if ws.got_close_code then
                    handlers.close(ws.got_close_code, kind or "")
                else
                    ws:close(1006, "", 0)
                    handlers.close(1006, was == "closing" and "aborted" or ("connection lost: " .. tostring(kind or errno)))
                end
                return
            end
            handlers.message(data, kind)
        end
    end)
    return socket
end

function engine.delay(seconds, fn)
    local timer = { cancelled = false }
    spawn(function()
        cqueues.sleep(seconds)
        if not timer.cancelled then
            fn()
        end
    end)
    return timer
end

function engine.cancel(timer)
    if timer then
        timer.cancelled = true
    end
end

-- Saved sessions: JSON files in `engine.save_dir` (a temporary directory by default).
engine.save_dir = os.getenv("RALLY_SAVE_DIR") or os.getenv("TMPDIR") or "/tmp"

local function save_path(key)
    return engine.save_dir .. "/rally-" .. key:gsub("[^%w_%-]", "_") .. ".json"
end

function engine.save(key, data)
    local file = io.open(save_path(key), "w")
    if not file then
        return false
    end
    file:write(cjson.encode(data))
    file:close()
    return true
end

function engine.load(key)
    local file = io.open(save_path(key), "r")
    if not file then
        return nil
    end
    local text = file:read("*a")
    file:close()
    local ok, data = pcall(cjson.decode, text)
    return ok and type(data) == "table" and data or nil
end

-- Project settings, as Defold's game.project would give them: `engine.settings["rally.url"]`.
engine.settings = {}

function engine.config(key)
    return engine.settings[key]
end

engine.getenv = os.getenv

local exiting = nil

function engine.exit(code)
    exiting = code
end

-- Calls `fn()` on SIGTERM (the platform's stop signal), instead of dying at once.
function engine.on_terminate(fn)
    local ok, signal = pcall(require, "cqueues.signal")
    if not ok then
        return false
    end
    signal.block(signal.SIGTERM)
    local listener = signal.listen(signal.SIGTERM)
    spawn(function()
        while true do
            if listener:wait(3600) then
                fn()
            end
        end
    end)
    return true
end

function engine.run_until(predicate, timeout)
    local deadline = cqueues.monotime() + (timeout or 10)
    while not predicate() do
        if exiting then
            return false
        end
        local now = cqueues.monotime()
        if now >= deadline then
            return false
        end
        local ok, err = loop:step(math.min(0.05, deadline - now))
        if not ok then
            io.stderr:write("luahttp_engine: ", tostring(err), "\n")
        end
    end
    return true
end

function engine.run()
    while not exiting do
        local ok, err = loop:step(1)
        if not ok then
            io.stderr:write("luahttp_engine: ", tostring(err), "\n")
        end
    end
    io.stdout:flush()
    io.stderr:flush()
    os.exit(exiting)
end

return engine
