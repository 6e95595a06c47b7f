-- test/scripted_engine.lua: an engine adapter for unit tests. Nothing leaves the process: HTTP
-- requests and sockets are recorded for the test to answer, and time moves only when the test
-- calls `advance`.

local cjson = require("cjson")

local scripted = {}

function scripted.new()
    local engine = {
        name = "scripted",
        null = cjson.null,
        json_encode = cjson.encode,
        json_decode = cjson.decode,
        clock = 0,
        requests = {},
        sockets = {},
        timers = {},
        saved = {},
        settings = {},
        env = {},
        exit_code = nil,
    }

    function engine.now()
        return engine.clock
    end

    function engine.http(options, callback)
        local request = { method = options.method, url = options.url, headers = options.headers, timeout = options.timeout }
        if options.body then
            request.body = cjson.decode(options.body)
        end
        -- Answers the request: `body` a table (sent as JSON) or a string; status 0 is "no answer".
        function request.answer(_, status, body)
            assert(not request.answered, "answered twice: " .. request.method .. " " .. request.url)
            request.answered = true
            if type(body) == "table" then
                body = cjson.encode(body)
            end
            callback({ status = status, body = body, error = status == 0 and "connection refused" or nil })
        end
        engine.requests[#engine.requests + 1] = request
    end

    -- The oldest unanswered request whose "METHOD url" contains `pattern` (plain text).
    function engine.request(pattern)
        for _, request in ipairs(engine.requests) do
            if not request.answered and (request.method .. " " .. request.url):find(pattern, 1, true) then
                return request
            end
        end
        local pending = {}
        for _, request in ipairs(engine.requests) do
            if not request.answered then
                pending[#pending + 1] = request.method .. " " .. request.url
            end
        end
        error("no pending request matches '" .. pattern .. "'; pending: " .. table.concat(pending, ", "), 2)
    end

    function engine.pending(pattern)
        for _, request in ipairs(engine.requests) do
            if not request.answered and (request.method .. " " .. request.url):find(pattern, 1, true) then
                return true
            end
        end
        return false
    end

    function engine.websocket(url, options, handlers)
        local socket = { url = url, options = options, handlers = handlers, sent = {}, state = "connecting" }
        function socket.send(_, data, kind)
            if socket.state ~= "open" then
                return false
            end
            socket.sent[#socket.sent + 1] = { data = data, kind = kind }
            return true
        end
        function socket.close(_, code)
            socket.state = "closed"
            socket.closed_with = code or 1000
        end
        -- What the platform does, for the test to call:
        function socket.open()
            socket.state = "open"
            handlers.open()
        end
        function socket.receive(_, data, kind)
            if type(data) == "table" then
                data = cjson.encode(data)
            end
            handlers.message(data, kind)
        end
        function socket.drop(_, code, reason)
            socket.state = "closed"
            handlers.close(code, reason or "")
        end
        function socket.refuse(_, status, body)
            socket.state = "closed"
            handlers.error("refused", status and { status = status, body = type(body) == "table" and cjson.encode(body) or body } or nil)
        end
        -- The commands the SDK sent, decoded.
        function socket.sent_json()
            local decoded = {}
            for _, item in ipairs(socket.sent) do
                decoded[#decoded + 1] = item.kind == "binary" and { binary = item.data } or cjson.decode(item.data)
            end
            return decoded
        end
        engine.sockets[#engine.sockets + 1] = socket
        return socket
    end

    function engine.socket()
        return engine.sockets[#engine.sockets]
    end

    function engine.delay(seconds, fn)
        local timer = { at = engine.clock + seconds, fn = fn }
        engine.timers[#engine.timers + 1] = timer
        return timer
    end

    function engine.cancel(timer)
        if timer then
            timer.cancelled = true
        end
    end

    -- Moves the clock by `seconds`, firing the timers that come due, in order.
    function engine.advance(seconds)
        local target = engine.clock + seconds
        while true do
            local next_timer, index = nil, nil
            for position, timer in ipairs(engine.timers) do
                if not timer.cancelled and timer.at <= target and (next_timer == nil or timer.at < next_timer.at) then
                    next_timer, index = timer, position
                end
            end
            if not next_timer then
                break
            end
            table.remove(engine.timers, index)
            engine.clock = math.max(engine.clock, next_timer.at)
            next_timer.fn()
        end
        engine.clock = target
    end

    function engine.save(key, data)
        engine.saved[key] = cjson.decode(cjson.encode(data))
        return true
    end

    function engine.load(key)
        return engine.saved[key]
    end

    function engine.config(key)
        return engine.settings[key]
    end

    function engine.getenv(name)
        return engine.env[name]
    end

    function engine.exit(code)
        engine.exit_code = code
    end

    return engine
end

-- A token pair as the platform answers it.
function scripted.tokens(name, expires_in)
    return { access_token = "access-" .. name, token_type = "Bearer", expires_in = expires_in or 900,
        refresh_token = "refresh-" .. name, refresh_expires_in = 2592000 }
end

return scripted
