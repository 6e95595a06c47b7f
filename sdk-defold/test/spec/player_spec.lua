-- The player SDK against a scripted engine: every answer and every socket event is the test's.

local cjson = require("cjson")
local scripted = require("scripted_engine")

local function cjson_decode(text)
    return cjson.decode(text)
end
local player = require("rally.player")

local BASE = "http://127.0.0.1:7350"
local CONFIG = { url = BASE, tenant = "studio", project = "tictactoe", stage = "default" }

local function new_client(extra)
    local engine = scripted.new()
    local config = { engine = engine }
    for key, value in pairs(CONFIG) do
        config[key] = value
    end
    for key, value in pairs(extra or {}) do
        config[key] = value
    end
    local client = assert(player.new(config))
    local events = {}
    client:on_event(function(event)
        events[#events + 1] = event
    end)
    return client, engine, events
end

-- The events of `kind` received so far.
local function of_type(events, kind)
    local found = {}
    for _, event in ipairs(events) do
        if event.type == kind then
            found[#found + 1] = event
        end
    end
    return found
end

local function last_error(events)
    local errors = of_type(events, "error")
    return errors[#errors]
end

local function signed_in(client, engine, expires_in)
    client:sign_in("user-1", "secret-1")
    engine.request("POST " .. BASE .. "/api/v1/users/sign-in"):answer(200, scripted.tokens("one", expires_in))
end

local GREETED = { type = "greeted", client_id = "client-1", user_id = "user-1", deployment_id = "d1",
    resumed = false, heartbeat_secs = 15,
    limits = { max_frame_bytes = 65536, messages_per_sec = 50, reconnect_grace_secs = 30 } }

-- A signed-in client with an open, greeted socket.
local function connected(extra)
    local client, engine, events = new_client(extra)
    signed_in(client, engine)
    client:connect()
    engine.request("/stages/default/clients"):answer(201, { client_id = "client-1", user_id = "user-1",
        player_id = "p1", deployment_id = "d1", version = 1, socket_path = "/api/v1/clients/client-1/ws" })
    local socket = engine.socket()
    socket:open()
    socket:receive(GREETED, "text")
    return client, engine, events, socket
end

describe("player.new", function()
    it("refuses an incomplete config with invalid_config instead of raising", function()
        local client, err = player.new({ url = BASE, tenant = "studio", project = "p" })
        assert.is_nil(client)
        assert.are.equal("invalid_config", err.code)
        client, err = player.new({ engine = scripted.new(), url = "ftp://x", tenant = "t", project = "p", stage = "s" })
        assert.is_nil(client)
        assert.are.equal("invalid_config", err.code)
        client, err = player.new({ engine = scripted.new(), url = BASE, tenant = "t", project = "p", stage = "s", transport = "pigeon" })
        assert.is_nil(client)
        assert.are.equal("invalid_config", err.code)
    end)

    it("reads what the config leaves out from game.project's [rally] section", function()
        local engine = scripted.new()
        engine.settings = { ["rally.url"] = BASE .. "/", ["rally.tenant"] = "studio", ["rally.project"] = "tictactoe", ["rally.stage"] = "live" }
        local client = assert(player.new({ engine = engine }))
        assert.are.equal(BASE, client.base)
        assert.are.equal("/api/v1/tenants/studio/projects/tictactoe/stages/live", client.stage_path)
    end)
end)

describe("signing in", function()
    it("signs up an anonymous player and saves its credentials", function()
        local client, engine, events = new_client()
        local result
        client:sign_up(function(err, value)
            assert.is_nil(err)
            result = value
        end)
        local create = engine.request("POST " .. BASE .. "/api/v1/users")
        create:answer(201, { user_id = "user-1", secret = "secret-1" })
        local sign_in = engine.request("/api/v1/users/sign-in")
        assert.are.same({ user_id = "user-1", secret = "secret-1" }, sign_in.body)
        sign_in:answer(200, scripted.tokens("one"))
        assert.are.same({ user_id = "user-1" }, result)
        assert.are.equal("access-one", client:access_token())
        assert.are.equal("user-1", engine.saved.session.user_id)
        assert.are.equal("secret-1", engine.saved.session.secret)
        assert.are.equal("refresh-one", engine.saved.session.refresh_token)
        assert.are.equal(1, #of_type(events, "session"))
    end)

    it("signs in by device id", function()
        local client, engine = new_client()
        local result
        client:sign_in_device("device-9", function(err, value)
            result = value
        end)
        local request = engine.request("/api/v1/users/device-sign-in")
        assert.are.same({ device_id = "device-9" }, request.body)
        request:answer(200, { user_id = "user-9", created = true, tokens = scripted.tokens("nine") })
        assert.are.same({ user_id = "user-9", created = true }, result)
        assert.are.equal("device-9", engine.saved.session.device_id)
    end)

    it("reports wrong credentials with the platform's code", function()
        local client, engine, events = new_client()
        local failure
        client:sign_in("user-1", "wrong", function(err)
            failure = err
        end)
        engine.request("/api/v1/users/sign-in"):answer(401, { error = { code = "invalid_credentials", message = "wrong user id or secret" } })
        assert.are.equal("invalid_credentials", failure.code)
        assert.are.equal(401, failure.status)
        assert.are.equal("invalid_credentials", last_error(events).code)
        assert.is_nil(client:access_token())
    end)

    it("reports an unreachable platform", function()
        local client, engine, events = new_client()
        local failure
        client:sign_up(function(err)
            failure = err
        end)
        engine.request("/api/v1/users"):answer(0)
        assert.are.equal("unreachable", failure.code)
        assert.are.equal("unreachable", last_error(events).code)
    end)

    it("reports an answer that is not JSON as malformed_response", function()
        local client, engine = new_client()
        local failure
        client:sign_up(function(err)
            failure = err
        end)
        engine.request("/api/v1/users"):answer(201, "<html>proxy</html>")
        assert.are.equal("malformed_response", failure.code)
    end)

    it("refreshes the access token before it expires", function()
        local client, engine, events = new_client({ refresh_margin = 60 })
        signed_in(client, engine, 120)
        engine.advance(59)
        assert.is_false(engine.pending("/auth/refresh"))
        engine.advance(1)
        local refresh = engine.request("/api/v1/auth/refresh")
        assert.are.same({ refresh_token = "refresh-one" }, refresh.body)
        refresh:answer(200, scripted.tokens("two", 120))
        assert.are.equal("access-two", client:access_token())
        assert.are.equal("refresh-two", engine.saved.session.refresh_token)
        engine.advance(60)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("three", 120))
        assert.are.equal("access-three", client:access_token())
        assert.are.equal(0, #of_type(events, "error"))
    end)

    it("signs in again when the refresh token is refused, and says session_expired when that fails", function()
        local client, engine, events = new_client()
        signed_in(client, engine, 120)
        engine.advance(60)
        engine.request("/api/v1/auth/refresh"):answer(401, { error = { code = "refresh_token_reused", message = "spent" } })
        engine.request("/api/v1/users/sign-in"):answer(200, scripted.tokens("again", 120))
        assert.are.equal("access-again", client:access_token())

        -- A player with no credentials kept (a revoked session restored from a refresh token).
        local other, other_engine, other_events = new_client()
        other_engine.saved.session = { user_id = "user-2", refresh_token = "revoked" }
        local failure
        other:restore(function(err)
            failure = err
        end)
        other_engine.request("/api/v1/auth/refresh"):answer(401, { error = { code = "refresh_token_reused", message = "revoked" } })
        assert.are.equal("session_expired", failure.code)
        assert.are.equal("session_expired", last_error(other_events).code)
    end)

    it("restores a saved session, and says no_session when there is none", function()
        local client, engine = new_client()
        local failure
        client:restore(function(err)
            failure = err
        end)
        assert.are.equal("no_session", failure.code)

        engine.saved.session = { user_id = "user-1", secret = "secret-1", refresh_token = "refresh-old",
            client_id = "client-7", saved_at = os.time() }
        local restored
        client:restore(function(err, value)
            restored = value
        end)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("fresh"))
        assert.are.same({ user_id = "user-1" }, restored)
        -- The saved client is recent: connect resumes it instead of creating one.
        client:connect()
        assert.is_false(engine.pending("/clients"))
        assert.are.equal(BASE:gsub("^http", "ws") .. "/api/v1/clients/client-7/ws", engine.socket().url)
    end)

    it("makes a new client when the restored one has ended", function()
        local client, engine = new_client()
        engine.saved.session = { user_id = "user-1", secret = "s", refresh_token = "r", client_id = "client-old", saved_at = os.time() }
        client:restore()
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("fresh"))
        client:connect()
        engine.socket():refuse(410, { error = { code = "client_deleted", message = "disconnected" } })
        engine.request("/stages/default/clients"):answer(201, { client_id = "client-new", socket_path = "/api/v1/clients/client-new/ws" })
        assert.are.equal("ws://127.0.0.1:7350/api/v1/clients/client-new/ws", engine.socket().url)
    end)
end)

describe("the socket", function()
    it("connects with the token as a subprotocol and delivers every event", function()
        local client, engine, events = new_client()
        signed_in(client, engine)
        local greeted
        client:connect(function(err, event)
            greeted = event
        end)
        local create = engine.request("POST " .. BASE .. "/api/v1/tenants/studio/projects/tictactoe/stages/default/clients")
        assert.are.equal("Bearer access-one", create.headers.Authorization)
        create:answer(201, { client_id = "client-1", socket_path = "/api/v1/clients/client-1/ws" })
        local socket = engine.socket()
        assert.are.equal("ws://127.0.0.1:7350/api/v1/clients/client-1/ws", socket.url)
        assert.are.same({ "rally.player.v1", "rally.token.access-one" }, socket.options.protocols)
        socket:open()
        socket:receive(GREETED, "text")
        assert.are.equal("client-1", greeted.client_id)
        assert.is_true(client:is_connected())
        socket:receive({ type = "runtime_assigned", runtime_id = "r1", qualifier = "lobby", version = 1 }, "text")
        socket:receive({ type = "message", text = "hello" }, "text")
        socket:receive("\0\1\2\255", "binary")
        socket:receive({ type = "matchmaking_failed", mode = "duel", reason = "timeout" }, "text")
        socket:receive({ type = "error", code = "rate_limited", message = "slow down" }, "text")
        local kinds = {}
        for _, event in ipairs(events) do
            kinds[#kinds + 1] = event.type
        end
        assert.are.same({ "session", "greeted", "runtime_assigned", "message", "message", "matchmaking_failed", "error" }, kinds)
        assert.are.equal("hello", events[4].text)
        assert.are.equal("\0\1\2\255", events[5].binary)
        assert.are.equal("r1", client.assignment.runtime_id)
    end)

    it("tells events from binary messages when the engine cannot (Defold)", function()
        local client, engine, events, socket = connected()
        socket:receive('{"type":"message","text":"hi"}', nil)
        socket:receive("\0binary", nil)
        socket:receive('{"not":"an event"}', nil)
        local messages = of_type(events, "message")
        assert.are.equal("hi", messages[1].text)
        assert.are.equal("\0binary", messages[2].binary)
        assert.are.equal('{"not":"an event"}', messages[3].binary)
    end)

    it("sends text, JSON and binary messages, and leave", function()
        local client, engine, events, socket = connected()
        assert.is_true(client:send_text("hi"))
        assert.is_true(client:send_json({ type = "play" }))
        assert.is_true(client:send_binary("\1\2"))
        client:leave()
        local sent = socket.sent_json()
        assert.are.same({ type = "message", text = "hi" }, sent[1])
        assert.are.same({ type = "play" }, cjson_decode(sent[2].text))
        assert.are.same({ binary = "\1\2" }, sent[3])
        assert.are.same({ type = "leave" }, sent[4])
        socket:receive({ type = "client_deleted", reason = "left" }, "text")
        assert.are.equal("left", of_type(events, "client_deleted")[1].reason)
        assert.are.equal("closed", client:send_text("x") == nil and last_error(events).code)
    end)

    it("reports malformed and unknown frames and carries on", function()
        local client, engine, events, socket = connected()
        socket:receive("this is not json", "text")
        assert.are.equal("malformed_frame", last_error(events).code)
        socket:receive({ type = "weather", rain = true }, "text")
        assert.are.equal("unknown_event", last_error(events).code)
        socket:receive({ no_type = 1 }, "text")
        assert.are.equal("malformed_frame", last_error(events).code)
        socket:receive({ type = "message", text = "still here" }, "text")
        assert.are.equal("still here", of_type(events, "message")[1].text)
    end)

    it("keeps a failing handler's error out of the game", function()
        local client, engine, events, socket = connected()
        client:on_event(function()
            error("the game's handler is broken")
        end)
        assert.has_no.errors(function()
            socket:receive({ type = "message", text = "x" }, "text")
        end)
        assert.are.equal("x", of_type(events, "message")[1].text)
    end)

    it("reports calls made before signing in, before connecting and after closing", function()
        local client, engine, events = new_client()
        local failure
        assert.has_no.errors(function()
            client:connect(function(err)
                failure = err
            end)
        end)
        assert.are.equal("not_signed_in", failure.code)
        assert.is_nil(client:send_text("x"))
        assert.are.equal("not_connected", last_error(events).code)
        assert.is_nil(client:send_binary("x"))
        assert.is_nil(client:leave())
        client:refresh(function(err)
            failure = err
        end)
        assert.are.equal("not_signed_in", failure.code)

        local other, _, other_events = connected()
        other:close()
        assert.is_nil(other:send_text("x"))
        assert.are.equal("closed", last_error(other_events).code)
        assert.is_nil(other:send_text(42))
    end)

    it("asks for a match through the lobby and reports where it landed", function()
        local client, engine, events, socket = connected()
        local landed, failure
        client:request_matchmaking("duel", { type = "play" }, function(err, assignment)
            failure, landed = err, assignment
        end)
        assert.are.same({ type = "play" }, cjson_decode(socket.sent_json()[1].text))
        socket:receive({ type = "runtime_assigned", runtime_id = "m1", qualifier = "match", mode = "duel", group = "x" }, "text")
        assert.is_nil(failure)
        assert.are.equal("x", landed.group)

        local superseded
        client:request_matchmaking("duel", nil, function(err)
            superseded = err
        end)
        assert.are.same({ type = "matchmake", mode = "duel" }, cjson_decode(socket.sent_json()[2].text))
        -- A lobby may ignore a request: a new one replaces it rather than waiting forever.
        assert.is_true(client:request_matchmaking("duel", nil, function(err)
            failure = err
        end))
        assert.are.equal("superseded", superseded.code)
        socket:receive({ type = "matchmaking_failed", mode = "duel", reason = "timeout" }, "text")
        assert.are.equal("matchmaking_failed", failure.code)
        -- Sent back to a lobby instead (a restart, a kick): the request is over too.
        client:request_matchmaking("duel", nil, function(err)
            failure = err
        end)
        socket:receive({ type = "runtime_assigned", runtime_id = "l2", qualifier = "lobby" }, "text")
        assert.are.equal("matchmaking_failed", failure.code)
        assert.is_nil(client.matchmaking)
    end)
end)

describe("reconnecting", function()
    it("reconnects after a drop and sends what waited, after greeted", function()
        local client, engine, events, socket = connected()
        socket:drop(1006, "connection lost")
        local dropped = of_type(events, "disconnected")[1]
        assert.are.equal(1006, dropped.code)
        assert.is_true(dropped.reconnecting)
        assert.is_true(client:send_text("while away"))
        engine.advance(0.2)
        local again = engine.socket()
        assert.are_not.equal(socket, again)
        assert.are.equal(socket.url, again.url)
        again:open()
        assert.are.equal(0, #again.sent)
        local resumed = {}
        for key, value in pairs(GREETED) do
            resumed[key] = value
        end
        resumed.resumed = true
        again:receive(resumed, "text")
        assert.are.same({ type = "message", text = "while away" }, again.sent_json()[1])
        assert.is_true(client:is_connected())
        assert.is_true(of_type(events, "greeted")[2].resumed)
    end)

    it("follows the client to the node that serves it, and back through the configured URL", function()
        local client, engine, events = new_client()
        signed_in(client, engine)
        client:connect()
        engine.request("/stages/default/clients"):answer(201, { client_id = "client-1", user_id = "user-1",
            player_id = "p1", deployment_id = "d1", version = 1, socket_path = "/api/v1/clients/client-1/ws",
            node_url = "http://127.0.0.1:7351" })
        local socket = engine.socket()
        assert.are.equal("ws://127.0.0.1:7351/api/v1/clients/client-1/ws", socket.url)
        socket:open()
        socket:receive(GREETED, "text")
        -- The stage moves: the platform names the next node in the close reason.
        socket:drop(4010, "http://127.0.0.1:7352")
        local moved = engine.socket()
        assert.are_not.equal(socket, moved)
        assert.are.equal("ws://127.0.0.1:7352/api/v1/clients/client-1/ws", moved.url)
        assert.is_true(of_type(events, "disconnected")[1].reconnecting)
        moved:open()
        moved:receive(GREETED, "text")
        assert.is_true(client:is_connected())
        -- That node dies: the attempt there finds nobody, the next one goes through the
        -- configured URL, which knows where the client is now.
        moved:drop(1006, "")
        engine.advance(0.2)
        engine.socket():refuse(nil)
        engine.advance(5)
        assert.are.equal("ws://127.0.0.1:7350/api/v1/clients/client-1/ws", engine.socket().url)
    end)

    it("backs off, and gives up after the grace period with client_deleted", function()
        local client, engine, events, socket = connected()
        socket:drop(1012, "platform_restarting")
        local attempts = 0
        for _ = 1, 40 do
            engine.advance(5.5)
            local latest = engine.socket()
            if latest.state == "connecting" then
                attempts = attempts + 1
                latest:refuse(nil)
            end
        end
        assert.is_true(attempts >= 6, "attempts: " .. attempts)
        local delays = {}
        for _, event in ipairs(of_type(events, "reconnecting")) do
            delays[#delays + 1] = event.delay
        end
        assert.is_true(delays[1] < 0.12 and delays[2] > delays[1] and delays[#delays] <= 5.5)
        local deleted = of_type(events, "client_deleted")
        assert.are.equal(1, #deleted)
        assert.are.equal("disconnected", deleted[1].reason)
    end)

    it("refreshes an expired token before reconnecting", function()
        local client, engine, events, socket = connected()
        socket:drop(1006)
        engine.advance(0.2)
        engine.socket():refuse(401, { error = { code = "token_expired", message = "expired" } })
        engine.advance(0.5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("renewed"))
        assert.are.same({ "rally.player.v1", "rally.token.access-renewed" }, engine.socket().options.protocols)
    end)

    it("stops for good on the close codes that end a client", function()
        for code, reason in pairs({ [1000] = "kicked", [4008] = "slow_reader" }) do
            local client, engine, events, socket = connected()
            socket:drop(code, reason)
            engine.advance(10)
            assert.are.equal(1, #engine.sockets)
            assert.are.equal(reason, of_type(events, "client_deleted")[1].reason)
        end
        local client, engine, events, socket = connected()
        socket:drop(4001, "connection_replaced")
        engine.advance(10)
        assert.are.equal(1, #engine.sockets)
        assert.is_false(of_type(events, "disconnected")[1].reconnecting)
    end)

    it("ends the client when the platform says it was deleted while away", function()
        local client, engine, events, socket = connected()
        socket:drop(1006)
        engine.advance(0.2)
        engine.socket():refuse(410, { error = { code = "client_deleted", message = "the client was deleted: disconnected" } })
        assert.are.equal("deleted", of_type(events, "client_deleted")[1].reason)
        assert.are.equal("the client was deleted: disconnected", of_type(events, "client_deleted")[1].message)
        assert.is_nil(client.client_id)
    end)

    it("does not reconnect when asked not to", function()
        local client, engine, events, socket = connected({ reconnect = false })
        socket:drop(1006)
        engine.advance(10)
        assert.are.equal(1, #engine.sockets)
        assert.is_false(of_type(events, "disconnected")[1].reconnecting)
    end)
end)

describe("reconnecting, the hard cases", function()
    it("renews the token once on a 401 with a body it cannot read (Defold), then reconnects", function()
        local client, engine, events, socket = connected()
        socket:drop(1006)
        engine.advance(0.2)
        engine.socket():refuse(401, "Connection refused: garbage from the extension")
        engine.advance(0.5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("renewed"))
        local again = engine.socket()
        assert.are.same({ "rally.player.v1", "rally.token.access-renewed" }, again.options.protocols)
        -- A second 401 right after a renewal is a real refusal.
        again:refuse(401, "")
        assert.are.equal("idle", client.state)
        assert.are.equal(401, last_error(events).status)
    end)

    it("keeps a client through a platform that answers 503 while it restarts", function()
        local client, engine, events, socket = connected()
        client.session.expires_at = 0 -- the token needs renewing before the reconnect
        socket:drop(1012, "platform_restarting")
        engine.advance(0.2)
        engine.request("/api/v1/auth/refresh"):answer(503, { error = { code = "unavailable", message = "starting" } })
        assert.are.equal("reconnecting", client.state)
        engine.advance(0.5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("later"))
        engine.socket():open()
        engine.socket():receive(GREETED, "text")
        assert.is_true(client:is_connected())
        assert.are.equal(0, #of_type(events, "client_deleted"))
    end)

    it("retries a scheduled refresh that met no platform, before the token runs out", function()
        local client, engine = new_client({ refresh_margin = 60 })
        signed_in(client, engine, 120)
        engine.advance(60)
        engine.request("/api/v1/auth/refresh"):answer(0)
        engine.advance(5)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("retried", 120))
        assert.are.equal("access-retried", client:access_token())
    end)

    it("makes a new client when a resumed one turns out gone after a failed attempt", function()
        local client, engine, events = new_client()
        engine.saved.session = { user_id = "user-1", secret = "s", refresh_token = "r", client_id = "old", saved_at = os.time() }
        client:restore()
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("fresh"))
        client:connect()
        engine.socket():refuse(nil) -- no answer at all
        engine.advance(0.2)
        engine.socket():refuse(404, { error = { code = "not_found", message = "no such client" } })
        engine.request("/stages/default/clients"):answer(201, { client_id = "new", socket_path = "/api/v1/clients/new/ws" })
        assert.are.equal("ws://127.0.0.1:7350/api/v1/clients/new/ws", engine.socket().url)
        engine.socket():open()
        engine.socket():receive(GREETED, "text")
        assert.is_true(client:is_connected())
    end)

    it("renews an expiring token before connecting again after close", function()
        local client, engine, events, socket = connected()
        client:close()
        engine.advance(900)
        client:connect()
        assert.are.equal(1, #engine.sockets)
        engine.request("/api/v1/auth/refresh"):answer(200, scripted.tokens("second", 900))
        assert.are.same({ "rally.player.v1", "rally.token.access-second" }, engine.socket().options.protocols)
        -- And the refresh timer runs again.
        engine.socket():open()
        engine.socket():receive(GREETED, "text")
        engine.advance(841)
        assert.is_true(engine.pending("/api/v1/auth/refresh"))
    end)

    it("ends a client made after the game left while it was being made", function()
        local client, engine, events = new_client()
        signed_in(client, engine)
        client:connect()
        client:leave()
        assert.are.equal("left", of_type(events, "client_deleted")[1].reason)
        engine.request("/stages/default/clients"):answer(201, { client_id = "late", socket_path = "/api/v1/clients/late/ws" })
        engine.request("DELETE " .. BASE .. "/api/v1/clients/late"):answer(204, "")
        assert.are.equal(0, #engine.sockets)
    end)
end)

describe("the long-poll fallback", function()
    local function polling()
        local client, engine, events = new_client({ transport = "poll" })
        signed_in(client, engine)
        client:connect()
        engine.request("/stages/default/clients"):answer(201, { client_id = "client-1", socket_path = "/api/v1/clients/client-1/ws" })
        return client, engine, events
    end

    it("delivers the same events, in order, and confirms them with after=", function()
        local client, engine, events = polling()
        local first = engine.request("GET " .. BASE .. "/api/v1/clients/client-1/events?after=0&wait_ms=25000")
        assert.are.equal("Bearer access-one", first.headers.Authorization)
        local greeted = { seq = 1 }
        for key, value in pairs(GREETED) do
            greeted[key] = value
        end
        first:answer(200, { open = true, events = {
            greeted,
            { seq = 2, type = "runtime_assigned", runtime_id = "r1", qualifier = "lobby" },
            { seq = 3, type = "message", binary = "AAEC/w==" },
        } })
        assert.is_true(client:is_connected())
        assert.are.equal("\0\1\2\255", of_type(events, "message")[1].binary)
        local second = engine.request("/events?after=3&")
        -- An answer lost in transit is asked again with the same after=; repeats are skipped.
        second:answer(200, { open = true, events = { { seq = 3, type = "message", binary = "AAEC/w==" },
            { seq = 4, type = "message", text = "hi" } } })
        assert.are.equal(2, #of_type(events, "message"))
        engine.request("/events?after=4&"):answer(200, { open = false, events = {
            { seq = 5, type = "client_deleted", reason = "kicked", message = "bye" } } })
        assert.are.equal("kicked", of_type(events, "client_deleted")[1].reason)
        assert.is_false(engine.pending("/events"))
    end)

    it("sends commands with POST, binary as base64", function()
        local client, engine = polling()
        engine.request("/events?after=0"):answer(200, { open = true, events = { { seq = 1, type = "greeted", limits = {} } } })
        client:send_text("hi")
        local post = engine.request("POST " .. BASE .. "/api/v1/clients/client-1/commands")
        assert.are.same({ commands = { { type = "message", text = "hi" } } }, post.body)
        post:answer(204, "")
        client:send_binary("\0\1\2\255")
        assert.are.same({ commands = { { type = "message", binary = "AAEC/w==" } } }, engine.request("/commands").body)
    end)

    it("polls again after a failure and goes on where it was", function()
        local client, engine, events = polling()
        engine.request("/events?after=0"):answer(200, { open = true, events = { { seq = 1, type = "greeted", limits = {} } } })
        engine.request("/events?after=1"):answer(0)
        assert.is_true(of_type(events, "reconnecting")[1] ~= nil)
        client:send_text("later")
        assert.is_false(engine.pending("/commands"))
        engine.advance(0.2)
        engine.request("/events?after=1"):answer(200, { open = true, events = { { seq = 2, type = "message", text = "x" } } })
        assert.is_true(client:is_connected())
        assert.are.same({ commands = { { type = "message", text = "later" } } }, engine.request("/commands").body)
    end)

    it("polls and posts commands at the node named by wrong_node", function()
        local client, engine, events = polling()
        engine.request("GET " .. BASE .. "/api/v1/clients/client-1/events?after=0"):answer(421,
            { error = { code = "wrong_node", message = "served elsewhere", details = { node_url = "http://127.0.0.1:7351" } } })
        engine.request("GET http://127.0.0.1:7351/api/v1/clients/client-1/events?after=0"):answer(200,
            { open = true, events = { { seq = 1, type = "greeted", limits = {} } } })
        assert.is_true(client:is_connected())
        client:send_text("here")
        assert.are.same({ commands = { { type = "message", text = "here" } } },
            engine.request("POST http://127.0.0.1:7351/api/v1/clients/client-1/commands").body)
        assert.are.equal(0, #of_type(events, "error"))
    end)

    it("sends commands one POST at a time, in order, and again after a failure", function()
        local client, engine, events = polling()
        engine.request("/events?after=0"):answer(200, { open = true, events = { { seq = 1, type = "greeted", limits = {} } } })
        client:send_text("one")
        client:send_text("two")
        client:send_text("three")
        local first = engine.request("/commands")
        assert.are.same({ { type = "message", text = "one" } }, first.body.commands)
        first:answer(502, "bad gateway")
        engine.advance(0.5)
        local second = engine.request("/commands")
        assert.are.same({ { type = "message", text = "one" }, { type = "message", text = "two" },
            { type = "message", text = "three" } }, second.body.commands)
        second:answer(204, "")
        assert.is_false(engine.pending("/commands"))
    end)

    it("resumes a polled client after close: the SDK greets it", function()
        local client, engine, events = polling()
        engine.request("/events?after=0"):answer(200, { open = true, events = { { seq = 1, type = "greeted", limits = {} },
            { seq = 2, type = "runtime_assigned", runtime_id = "r1", qualifier = "lobby" } } })
        client:close()
        local greeted
        client:connect(function(err, event)
            greeted = event
        end)
        -- The poll of the closed connection comes back too, and is ignored.
        engine.request("/events?after=2"):answer(200, { open = true, events = { { seq = 3, type = "message", text = "stale" } } })
        assert.is_nil(greeted)
        engine.request("/events?after=2"):answer(200, { open = true, events = { { seq = 3, type = "message", text = "while away" } } })
        assert.is_true(greeted.resumed)
        assert.are.equal("r1", greeted.runtime.runtime_id)
        assert.is_true(client:is_connected())
        assert.are.equal("while away", of_type(events, "message")[1].text)
    end)

    it("ends the client on 410", function()
        local client, engine, events = polling()
        engine.request("/events?after=0"):answer(410, { error = { code = "client_deleted", message = "gone" } })
        assert.are.equal(1, #of_type(events, "client_deleted"))
    end)
end)

describe("coroutines", function()
    it("awaits calls and events without blocking", function()
        local client, engine = new_client()
        local steps = {}
        player.run(function()
            local err = client:await("sign_up")
            steps[#steps + 1] = err == nil and "signed up" or err.code
            local failure, greeted = client:await("connect")
            steps[#steps + 1] = greeted and greeted.type or failure.code
            local event = client:await_event("message")
            steps[#steps + 1] = event.text
            local nothing = client:await_event("message", 5)
            steps[#steps + 1] = nothing == nil and "timed out" or "?"
        end)
        engine.request("/api/v1/users"):answer(201, { user_id = "u", secret = "s" })
        engine.request("/sign-in"):answer(200, scripted.tokens("co"))
        assert.are.same({ "signed up" }, steps)
        engine.request("/clients"):answer(201, { client_id = "c", socket_path = "/api/v1/clients/c/ws" })
        engine.socket():open()
        engine.socket():receive(GREETED, "text")
        engine.socket():receive({ type = "message", text = "hello" }, "text")
        engine.advance(5)
        assert.are.same({ "signed up", "greeted", "hello", "timed out" }, steps)
    end)

    it("says so when await is used outside a coroutine", function()
        local client = new_client()
        local err = client:await("sign_up")
        assert.are.equal("not_in_coroutine", err.code)
    end)
end)
