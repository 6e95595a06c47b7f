-- rally/engine/defold.lua against stand-ins for Defold's modules that behave as the engine's
-- documentation and extension-websocket's source say: what the adapter asks of Defold, and
-- what it makes of Defold's answers (among them the disconnect the extension sends after an
-- error).

local cjson = require("cjson")

local GLOBALS = { "json", "http", "websocket", "timer", "sys", "socket" }

local function fake_defold()
    local fake = { requests = {}, connections = {}, timers = {}, saved = {}, config = {}, clock = 100 }
    _G.json = {
        null = cjson.null,
        encode = cjson.encode,
        decode = function(text, options)
            assert(options and options.decode_null_as_userdata, "null must decode as json.null")
            return cjson.decode(text)
        end,
    }
    _G.http = {
        request = function(url, method, callback, headers, post_data, options)
            fake.requests[#fake.requests + 1] = { url = url, method = method, callback = callback,
                headers = headers, body = post_data, options = options }
        end,
    }
    _G.websocket = {
        EVENT_CONNECTED = 0, EVENT_DISCONNECTED = 1, EVENT_MESSAGE = 2, EVENT_ERROR = 3,
        DATA_TYPE_BINARY = 2, DATA_TYPE_TEXT = 1,
        connect = function(url, params, callback)
            local connection = { url = url, params = params, callback = callback, sent = {} }
            fake.connections[#fake.connections + 1] = connection
            return connection
        end,
        send = function(connection, message, options)
            if connection.down then
                error("Connection isn't connected")
            end
            connection.sent[#connection.sent + 1] = { message = message, type = options.type }
        end,
        disconnect = function(connection)
            connection.disconnected = true
        end,
    }
    _G.timer = {
        delay = function(seconds, repeating, callback)
            local handle = #fake.timers + 1
            fake.timers[handle] = { seconds = seconds, repeating = repeating, callback = callback }
            return handle
        end,
        cancel = function(handle)
            fake.timers[handle].cancelled = true
        end,
    }
    _G.sys = {
        get_save_file = function(app, name)
            return "/saves/" .. app .. "/" .. name
        end,
        save = function(path, data)
            fake.saved[path] = data
            return true
        end,
        load = function(path)
            return fake.saved[path] or {}
        end,
        get_config_string = function(key, default)
            return fake.config[key] or default
        end,
        exit = function(code)
            fake.exit_code = code
        end,
    }
    _G.socket = {
        gettime = function()
            return fake.clock
        end,
    }
    package.loaded["rally.engine.defold"] = nil
    return fake, require("rally.engine.defold")
end

local function recording_handlers()
    local calls = {}
    local function record(name)
        return function(...)
            calls[#calls + 1] = { name, ... }
        end
    end
    return { open = record("open"), message = record("message"), close = record("close"), error = record("error") }, calls
end

describe("the Defold engine adapter", function()
    after_each(function()
        for _, name in ipairs(GLOBALS) do
            _G[name] = nil
        end
        package.loaded["rally.engine.defold"] = nil
    end)

    it("makes HTTP requests and reads Defold's answers, status 0 when none came", function()
        local fake, engine = fake_defold()
        local answers = {}
        engine.http({ method = "POST", url = "http://p/api", headers = { ["Content-Type"] = "application/json" },
            body = "{}", timeout = 35 }, function(response)
            answers[#answers + 1] = response
        end)
        local request = fake.requests[1]
        assert.are.same({ "http://p/api", "POST", "{}", 35 }, { request.url, request.method, request.body, request.options.timeout })
        assert.are.equal("application/json", request.headers["Content-Type"])
        request.callback({}, 1, { status = 201, response = '{"ok":true}', headers = {} })
        request.callback({}, 1, { status = 0, error = "connection refused" })
        assert.are.same({ status = 201, body = '{"ok":true}' }, answers[1])
        assert.are.same({ status = 0, error = "connection refused" }, answers[2])
    end)

    it("offers both subprotocols in one string and the headers as lines", function()
        local fake, engine = fake_defold()
        engine.websocket("ws://p/ws", { protocols = { "rally.player.v1", "rally.token.abc" },
            headers = { Authorization = "Bearer t" }, timeout = 10 }, recording_handlers())
        local params = fake.connections[1].params
        assert.are.equal("rally.player.v1,rally.token.abc", params.protocol)
        assert.are.equal("Authorization: Bearer t", params.headers)
        assert.are.equal(10000, params.timeout)
    end)

    it("reports a refused upgrade once, though the extension adds a disconnect", function()
        local fake, engine = fake_defold()
        local handlers, calls = recording_handlers()
        engine.websocket("ws://p/ws", {}, handlers)
        local connection = fake.connections[1]
        connection.callback({}, connection, { event = websocket.EVENT_ERROR, message = "handshake failed",
            handshake_response = { status = 410, headers = {}, response = "" } })
        connection.callback({}, connection, { event = websocket.EVENT_DISCONNECTED, code = 0 })
        assert.are.same({ { "error", "handshake failed", { status = 410, body = "" } } }, calls)
    end)

    it("reports an open connection's end once, with its close code", function()
        local fake, engine = fake_defold()
        local handlers, calls = recording_handlers()
        local socket = engine.websocket("ws://p/ws", {}, handlers)
        local connection = fake.connections[1]
        connection.callback({}, connection, { event = websocket.EVENT_CONNECTED })
        connection.callback({}, connection, { event = websocket.EVENT_MESSAGE, message = '{"type":"greeted"}' })
        assert.is_true(socket:send("hi", "text"))
        assert.is_true(socket:send("\0", "binary"))
        assert.are.same({ { message = "hi", type = 1 }, { message = "\0", type = 2 } }, connection.sent)
        connection.callback({}, connection, { event = websocket.EVENT_ERROR, message = "reset by peer" })
        connection.callback({}, connection, { event = websocket.EVENT_DISCONNECTED, code = 0 })
        assert.are.same({ { "open" }, { "message", '{"type":"greeted"}', nil }, { "close", 1006, "reset by peer" } }, calls)
        assert.is_false(socket:send("late", "text"))

        local handlers2, calls2 = recording_handlers()
        engine.websocket("ws://p/ws", {}, handlers2)
        local second = fake.connections[2]
        second.callback({}, second, { event = websocket.EVENT_CONNECTED })
        second.callback({}, second, { event = websocket.EVENT_DISCONNECTED, code = 4001, message = "connection_replaced" })
        assert.are.same({ { "open" }, { "close", 4001, "connection_replaced" } }, calls2)
    end)

    it("does not raise when the connection went down before Defold said so", function()
        local fake, engine = fake_defold()
        local socket = engine.websocket("ws://p/ws", {}, recording_handlers())
        local connection = fake.connections[1]
        connection.callback({}, connection, { event = websocket.EVENT_CONNECTED })
        connection.down = true
        assert.is_false(socket:send("x", "text"))
    end)

    it("saves sessions under the game's own title, and reads settings", function()
        local fake, engine = fake_defold()
        fake.config["project.title"] = "Rally Tic-tac-toe"
        fake.config["rally.url"] = "http://127.0.0.1:7350"
        assert.is_true(engine.save("session", { user_id = "u" }))
        assert.are.same({ user_id = "u" }, fake.saved["/saves/Rally_Tic-tac-toe/rally-session"])
        assert.are.same({ user_id = "u" }, engine.load("session"))
        assert.is_nil(engine.load("nothing"))
        assert.are.equal("http://127.0.0.1:7350", engine.config("rally.url"))
        assert.is_nil(engine.config("rally.stage"))
        assert.are.equal(100, engine.now())
        local handle = engine.delay(2, function() end)
        engine.cancel(handle)
        assert.is_true(fake.timers[handle].cancelled)
        assert.is_false(fake.timers[handle].repeating)
        engine.exit(4)
        assert.are.equal(4, fake.exit_code)
    end)
end)
