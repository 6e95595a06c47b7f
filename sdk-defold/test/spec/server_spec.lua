-- The server SDK against a scripted engine: the environment, the platform's answers and the
-- runtime socket are the test's.

local cjson = require("cjson")
local scripted = require("scripted_engine")
local server = require("rally.server")

local BASE = "http://127.0.0.1:7350"

local function environment(engine)
    engine.env = {
        RALLY_RUNTIME_ID = "runtime-1",
        RALLY_RUNTIME_SECRET = "one-time-secret",
        RALLY_RUNTIME_QUALIFIER = "lobby",
        RALLY_PLATFORM_URL = BASE,
        RALLY_BUNDLE = "/bundle",
    }
end

-- A handler that records every call as a line.
local function recorder()
    local calls = {}
    local handler = {}
    for _, name in ipairs({ "runtime_created", "client_assigned", "client_removed", "message", "stop", "error", "tick" }) do
        handler[name] = function(runtime, ...)
            calls[#calls + 1] = { name = name, args = { ... } }
        end
    end
    return handler, calls
end

local function names(calls)
    local list = {}
    for _, call in ipairs(calls) do
        if call.name ~= "tick" then
            list[#list + 1] = call.name
        end
    end
    return list
end

local function hello()
    return { messages = { { type = "hello", protocol = 2, runtime_id = "runtime-1", heartbeat_secs = 10 } } }
end

-- A runtime that has its tokens and an open socket greeted with hello and runtime_created.
local function running(handler, created)
    local engine = scripted.new()
    environment(engine)
    local runtime = server.start({ engine = engine, handler = handler })
    engine.request("POST " .. BASE .. "/api/v1/runtime/token"):answer(200, scripted.tokens("rt"))
    local socket = engine.socket()
    socket:open()
    socket:receive(hello(), "text")
    socket:receive({ messages = { created or { type = "runtime_created", qualifier = "lobby", manifest = { runtime = { kind = "program" } },
        config = {}, user_data = { game = "Tic-tac-toe" }, mode = cjson.null } } }, "text")
    return runtime, engine, socket
end

-- The envelope of protocol §3: the JSON, then each attachment, with 4-byte big-endian lengths.
local function u32(n)
    return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end

local function envelope(frame, attachments)
    local json = cjson.encode(frame)
    local parts = { u32(#json), json }
    for _, bytes in ipairs(attachments) do
        parts[#parts + 1] = u32(#bytes)
        parts[#parts + 1] = bytes
    end
    return table.concat(parts)
end

describe("server start-up", function()
    it("exits 2 with a bad environment, naming what is missing", function()
        local engine = scripted.new()
        engine.env = { RALLY_RUNTIME_ID = "r" }
        server.start({ engine = engine, handler = {} })
        assert.are.equal(2, engine.exit_code)
        assert.are.equal(0, #engine.requests)
    end)

    it("exchanges the secret once and opens the socket with the token and protocol v2", function()
        local engine = scripted.new()
        environment(engine)
        local runtime = server.start({ engine = engine, handler = {} })
        local exchange = engine.request("POST " .. BASE .. "/api/v1/runtime/token")
        assert.are.same({ runtime_id = "runtime-1", secret = "one-time-secret" }, exchange.body)
        exchange:answer(200, scripted.tokens("rt"))
        local socket = engine.socket()
        assert.are.equal("ws://127.0.0.1:7350/api/v1/runtime/ws", socket.url)
        assert.are.same({ "rally.runtime.v2" }, socket.options.protocols)
        assert.are.equal("Bearer access-rt", socket.options.headers.Authorization)
        assert.are.equal("lobby", runtime.qualifier)
        assert.are.equal("runtime-1", runtime.id)
    end)

    it("exits 4 when the secret is refused", function()
        local engine = scripted.new()
        environment(engine)
        server.start({ engine = engine, handler = {} })
        engine.request("/runtime/token"):answer(401, { error = { code = "runtime_secret_used", message = "used" } })
        assert.are.equal(4, engine.exit_code)
    end)

    it("retries an unreachable platform and exits 5 after 60 s", function()
        local engine = scripted.new()
        environment(engine)
        server.start({ engine = engine, handler = {} })
        local tries = 0
        while engine.exit_code == nil and tries < 100 do
            engine.request("/runtime/token"):answer(0)
            tries = tries + 1
            engine.advance(5.5)
        end
        assert.are.equal(5, engine.exit_code)
        assert.is_true(tries > 10)
    end)

    it("exits 6 when the platform speaks another protocol version", function()
        local engine = scripted.new()
        environment(engine)
        server.start({ engine = engine, handler = {} })
        engine.request("/runtime/token"):answer(200, scripted.tokens("rt"))
        engine.socket():open()
        engine.socket():receive({ messages = { { type = "hello", protocol = 3 } } }, "text")
        assert.are.equal(6, engine.exit_code)
    end)

    it("exits 4 when the socket is refused for good", function()
        local engine = scripted.new()
        environment(engine)
        server.start({ engine = engine, handler = {} })
        engine.request("/runtime/token"):answer(200, scripted.tokens("rt"))
        engine.socket():refuse(409, { error = { code = "runtime_ended", message = "stopped" } })
        assert.are.equal(4, engine.exit_code)
    end)
end)

describe("server events and commands", function()
    it("delivers each event to the handler and batches the commands into one frame", function()
        local handler, calls = recorder()
        handler.message = function(runtime, client_id, data, kind)
            calls[#calls + 1] = { name = "message", args = { client_id, data, kind } }
            runtime:respond(client_id, "echo " .. data)
            runtime:broadcast("to all")
            runtime:multicast({ "c1", "c2" }, "\0\1", "binary")
            runtime:set_profile(client_id, { wins = 1 })
            runtime:request_matchmaking(client_id, "duel")
            runtime:kick("c2", "no reason")
            runtime:log("info", "handled")
        end
        local runtime, engine, socket = running(handler)
        assert.are.equal("Tic-tac-toe", calls[1].args[1].user_data.game)
        assert.is_nil(calls[1].args[1].mode)
        socket:receive({ messages = {
            { type = "client_assigned", client_id = "c1", user_id = "u1", profile = { wins = 0 }, group = cjson.null },
            { type = "message_received", client_id = "c1", payload = { text = "hi" } },
        } }, "text")
        assert.are.same({ "runtime_created", "client_assigned", "message" }, names(calls))
        assert.are.equal("u1", calls[2].args[1].user_id)
        assert.is_nil(calls[2].args[1].group)
        assert.are.same({ "c1", "hi", "text" }, calls[3].args)
        assert.are.equal(1, #socket.sent)
        local frame = cjson.decode(socket.sent[1].data).messages
        assert.are.same({ type = "respond_client", client_id = "c1", payload = { text = "echo hi" } }, frame[1])
        assert.are.same({ type = "broadcast", payload = { text = "to all" } }, frame[2])
        assert.are.same({ type = "multicast", client_ids = { "c1", "c2" }, payload = { binary = "AAE=" } }, frame[3])
        assert.are.same({ type = "set_profile", client_id = "c1", profile = { wins = 1 } }, frame[4])
        assert.are.same({ type = "request_matchmaking", client_id = "c1", mode = "duel" }, frame[5])
        assert.are.same({ type = "kick_client", client_id = "c2", reason = "no reason" }, frame[6])
        assert.are.same({ type = "log", level = "info", message = "handled" }, frame[7])
        assert.are.equal(7, #frame)
    end)

    it("reads binary envelopes, and frames the engine could not label", function()
        local handler, calls = recorder()
        local runtime, engine, socket = running(handler)
        local bytes = "\0\255{binary}"
        local frame = envelope({ messages = { { type = "message_received", client_id = "c1", payload = { attachment = 0 } },
            { type = "message_received", client_id = "c1", payload = { binary = "AAEC" } } } }, { bytes })
        socket:receive(frame, "binary")
        socket:receive(frame, nil)
        assert.are.same({ "c1", bytes, "binary" }, calls[2].args)
        assert.are.same({ "c1", "\0\1\2", "binary" }, calls[3].args)
        assert.are.same({ "c1", bytes, "binary" }, calls[4].args)
    end)

    it("reports frames it cannot read and carries on", function()
        local handler, calls = recorder()
        local runtime, engine, socket = running(handler)
        socket:receive("not json", "text")
        socket:receive(u32(100) .. "{}", "binary")
        socket:receive(envelope({ messages = { { type = "message_received", client_id = "c1", payload = { attachment = 3 } } } }, {}), "binary")
        socket:receive({ messages = { { type = "from_the_future" } } }, "text")
        socket:receive({ messages = { { type = "message_received", client_id = "c1", payload = { text = "ok" } } } }, "text")
        assert.are.same({ "runtime_created", "error", "error", "error", "message" }, names(calls))
        assert.are.equal("malformed_frame", calls[2].args[1].code)
        assert.is_nil(engine.exit_code)
    end)

    it("logs a failing handler instead of dying", function()
        local runtime, engine, socket = running({
            message = function()
                error("bug in the game")
            end,
        })
        socket:receive({ messages = { { type = "message_received", client_id = "c1", payload = { text = "x" } } } }, "text")
        local frame = cjson.decode(socket.sent[1].data).messages
        assert.are.equal("log", frame[1].type)
        assert.are.equal("error", frame[1].level)
        assert.truthy(frame[1].message:find("bug in the game", 1, true))
        assert.is_nil(engine.exit_code)
    end)

    it("passes the platform's refusals to the handler", function()
        local handler, calls = recorder()
        local runtime, engine, socket = running(handler)
        socket:receive({ messages = { { type = "error", code = "unknown_client", message = "no such client" } } }, "text")
        assert.are.equal("unknown_client", calls[2].args[1].code)
    end)

    it("ticks at the manifest's tick rate and runs timers", function()
        local handler, calls = recorder()
        local runtime, engine, socket = running(handler, { type = "runtime_created", qualifier = "match", mode = "duel",
            manifest = { runtime = { kind = "program", tick_rate = 10 } }, config = {}, user_data = {} })
        assert.are.equal("duel", runtime.mode)
        local fired = 0
        local keep = runtime:after(0.5, function(rt)
            fired = fired + 1
            rt:stop_match("finished")
        end)
        local dropped = runtime:after(0.3, function()
            fired = fired + 100
        end)
        runtime:cancel(dropped)
        engine.advance(1.05)
        local ticks = 0
        for _, call in ipairs(calls) do
            if call.name == "tick" then
                ticks = ticks + 1
            end
        end
        assert.are.equal(10, ticks)
        assert.are.equal(1, fired)
        assert.are.same({ type = "stop_match", reason = "finished" }, cjson.decode(socket.sent[1].data).messages[1])
        assert.truthy(keep)
    end)

    it("stops when asked: runs the stop handler, sends its commands, closes and exits 0", function()
        local runtime, engine, socket = running({
            stop = function(rt, deadline_ms)
                rt:log("info", "bye after " .. deadline_ms)
            end,
        })
        socket:receive({ messages = { { type = "stop_requested", deadline_ms = 5000 } } }, "text")
        assert.are.same({ type = "log", level = "info", message = "bye after 5000" }, cjson.decode(socket.sent[1].data).messages[1])
        engine.advance(0.3)
        assert.are.equal(1000, socket.closed_with)
        assert.are.equal(0, engine.exit_code)
    end)

    it("reconnects with a fresh token, keeps its state and sends what waited", function()
        local handler, calls = recorder()
        local runtime, engine, socket = running(handler)
        socket:drop(1006, "connection lost")
        runtime:respond("c1", "queued while away")
        runtime:flush()
        engine.advance(0.2)
        -- Protocol §4: the token is renewed before reconnecting.
        local refresh = engine.request("/api/v1/auth/refresh")
        assert.are.same({ refresh_token = "refresh-rt" }, refresh.body)
        refresh:answer(200, scripted.tokens("second"))
        local again = engine.socket()
        assert.are_not.equal(socket, again)
        assert.are.equal("Bearer access-second", again.options.headers.Authorization)
        -- A 401 whose body cannot be read (Defold): renewed once more, then connected.
        again:refuse(401, "garbage")
        engine.advance(0.5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("fresh"))
        local third = engine.socket()
        assert.are.equal("Bearer access-fresh", third.options.headers.Authorization)
        third:open()
        third:receive(hello(), "text")
        third:receive({ messages = { { type = "message_received", client_id = "c1", payload = { text = "back" } } } }, "text")
        assert.are.same({ "runtime_created", "message" }, names(calls))
        local frame = cjson.decode(third.sent[1].data).messages
        assert.are.same({ type = "respond_client", client_id = "c1", payload = { text = "queued while away" } }, frame[1])
    end)

    it("exits 4 when the socket is refused twice with 401, a renewal between", function()
        local runtime, engine, socket = running({})
        socket:drop(1006)
        engine.advance(0.2)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("a"))
        engine.socket():refuse(401, "")
        engine.advance(0.5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("b"))
        engine.socket():refuse(401, "")
        assert.are.equal(4, engine.exit_code)
    end)

    it("keeps commands the socket would not take, for the next connection", function()
        local runtime, engine, socket = running({})
        socket.send = function()
            error("Connection isn't connected")
        end
        runtime:respond("c1", "not lost")
        runtime:flush()
        assert.are.equal(1, #runtime.queue)
        socket:drop(1006)
        engine.advance(0.2)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("again"))
        local again = engine.socket()
        again:open()
        again:receive(hello(), "text")
        again:receive({ messages = {} }, "text")
        assert.are.same({ type = "respond_client", client_id = "c1", payload = { text = "not lost" } },
            cjson.decode(again.sent[1].data).messages[1])
    end)

    it("splits commands over 1 MiB into several frames", function()
        local runtime, engine, socket = running({
            message = function(rt, client_id)
                for _ = 1, 5 do
                    rt:respond(client_id, string.rep("a", 300 * 1024))
                end
            end,
        })
        socket:receive({ messages = { { type = "message_received", client_id = "c1", payload = { text = "go" } } } }, "text")
        assert.is_true(#socket.sent >= 2)
        local total = 0
        for _, sent in ipairs(socket.sent) do
            assert.is_true(#sent.data <= 1024 * 1024)
            total = total + #cjson.decode(sent.data).messages
        end
        assert.are.equal(5, total)
    end)
end)

describe("the tic-tac-toe server logic", function()
    local logic = require("tictactoe.server_logic")

    it("plays a game in a match runtime and records the result", function()
        local engine = scripted.new()
        environment(engine)
        engine.env.RALLY_RUNTIME_QUALIFIER = "match"
        server.start({ engine = engine, handler = logic.handler })
        engine.request("/runtime/token"):answer(200, scripted.tokens("m"))
        local socket = engine.socket()
        socket:open()
        socket:receive(hello(), "text")
        socket:receive({ messages = {
            { type = "runtime_created", qualifier = "match", mode = "duel", manifest = {}, config = {}, user_data = { game = "Tic-tac-toe" } },
            { type = "client_assigned", client_id = "a", user_id = "ada", profile = { wins = 2, avatar = "cat" }, group = "x" },
            { type = "client_assigned", client_id = "b", user_id = "bob", profile = {}, group = "o" },
        } }, "text")
        local function move(client, cell)
            socket:receive({ messages = { { type = "message_received", client_id = client, payload = { text = cjson.encode({ type = "move", cell = cell }) } } } }, "text")
        end
        move("b", 4)
        for _, step in ipairs({ { "a", 0 }, { "b", 3 }, { "a", 1 }, { "b", 4 }, { "a", 2 } }) do
            move(step[1], step[2])
        end
        local sent = {}
        for _, frame in ipairs(socket.sent) do
            for _, message in ipairs(cjson.decode(frame.data).messages) do
                sent[#sent + 1] = message
            end
        end
        local function text_of(message)
            return message.payload and message.payload.text and cjson.decode(message.payload.text) or {}
        end
        local kinds = {}
        for _, message in ipairs(sent) do
            local text = text_of(message)
            if text.type and message.type == "respond_client" then
                kinds[#kinds + 1] = message.client_id .. ":" .. text.type .. (text.reason and ("/" .. text.reason) or "")
            end
        end
        assert.are.same({ "a:waiting", "a:start", "b:start", "b:illegal/not_your_turn" }, kinds)
        local profiles = {}
        local over
        for _, message in ipairs(sent) do
            if message.type == "set_profile" then
                profiles[message.client_id] = message.profile
            elseif text_of(message).type == "over" then
                over = text_of(message)
            end
        end
        assert.are.same({ type = "over", result = "win", winner = "x", board = "xxxoo----" }, over)
        assert.are.same({ wins = 3, losses = 0, draws = 0, avatar = "cat" }, profiles.a)
        assert.are.same({ wins = 0, losses = 1, draws = 0 }, profiles.b)
        engine.advance(1.1)
        local last = cjson.decode(socket.sent[#socket.sent].data).messages
        assert.are.same({ type = "stop_match", reason = "finished" }, last[#last])
    end)
end)
