-- The player SDK over real sockets against a misbehaving server: lua-http's server side stands
-- in for the platform on a loopback port and does what a real platform never should (cut a
-- frame in half, send garbage), so that what the SDK does then is seen over real I/O.

local engine = require("luahttp_engine")
local http_server = require("http.server")
local http_headers = require("http.headers")
local websocket = require("http.websocket")
local cjson = require("cjson")
local rally = require("rally.player")

local function respond(stream, status, body)
    local headers = http_headers.new()
    headers:append(":status", tostring(status))
    headers:append("content-type", "application/json")
    stream:write_headers(headers, false)
    stream:write_chunk(cjson.encode(body), true)
end

local TOKENS = { access_token = "token", token_type = "Bearer", expires_in = 900, refresh_token = "refresh" }

-- A fake platform on a free loopback port; `on_socket(ws, count)` runs for each player socket.
local function fake_platform(on_socket)
    local sockets = 0
    local server = assert(http_server.listen({
        host = "127.0.0.1",
        port = 0,
        onstream = function(_, stream)
            local headers = stream:get_headers()
            local path = headers:get(":path")
            if path:find("/ws", 1, true) then
                local ws = assert(websocket.new_from_stream(stream, headers))
                assert(ws:accept({ protocols = { "rally.player.v1" } }))
                sockets = sockets + 1
                on_socket(ws, sockets)
            elseif path:find("/sign-in", 1, true) then
                respond(stream, 200, TOKENS)
            elseif path:find("/clients", 1, true) then
                respond(stream, 201, { client_id = "c1", socket_path = "/api/v1/clients/c1/ws" })
            else
                respond(stream, 404, { error = { code = "not_found", message = path } })
            end
        end,
    }))
    assert(server:listen())
    local _, _, port = server:localname()
    engine.loop:wrap(function()
        server:loop()
    end)
    return "http://127.0.0.1:" .. port, server
end

local GREETED = { type = "greeted", client_id = "c1", user_id = "u1", resumed = false,
    limits = { max_frame_bytes = 65536, messages_per_sec = 50, reconnect_grace_secs = 30 } }

local function connected_client(url)
    local client = assert(rally.new({ engine = engine, url = url, tenant = "t", project = "p", stage = "s",
        save_key = "engine-spec-" .. os.time() }))
    local events = {}
    client:on_event(function(event)
        events[#events + 1] = event
    end)
    client:sign_in("u1", "secret")
    assert(engine.run_until(function()
        return client:access_token() ~= nil
    end, 5))
    client:connect()
    return client, events
end

local function find(events, predicate)
    for _, event in ipairs(events) do
        if predicate(event) then
            return event
        end
    end
end

describe("the player SDK over real sockets", function()
    it("hears a frame cut in half as a dropped connection, and resumes", function()
        local url, server = fake_platform(function(ws, count)
            local greeted = cjson.decode(cjson.encode(GREETED))
            greeted.resumed = count > 1
            ws:send(cjson.encode(greeted), "text")
            if count == 1 then
                -- A text frame announcing 16 bytes, of which 3 arrive; then the connection ends.
                ws.socket:xwrite(string.char(0x81, 16) .. "abc", "bn")
                ws.socket:flush()
                ws.socket:shutdown()
            else
                ws:send(cjson.encode({ type = "message", text = "welcome back" }), "text")
                ws:receive(5)
            end
        end)
        local client, events = connected_client(url)
        assert.is_true(engine.run_until(function()
            return find(events, function(event)
                return event.type == "message"
            end) ~= nil
        end, 10), "no message after the reconnect")
        local dropped = find(events, function(event)
            return event.type == "disconnected"
        end)
        assert.are.equal(1006, dropped.code)
        assert.is_true(dropped.reconnecting)
        assert.is_true(find(events, function(event)
            return event.type == "greeted" and event.resumed
        end) ~= nil)
        assert.is_true(client:is_connected())
        client:close()
        server:close()
    end)

    it("reports garbage and unknown events from the server and keeps the connection", function()
        local url, server = fake_platform(function(ws)
            ws:send(cjson.encode(GREETED), "text")
            ws:send("}{ not json", "text")
            ws:send(cjson.encode({ type = "teleport" }), "text")
            ws:send(cjson.encode({ type = "message", text = "still fine" }), "text")
            ws:receive(5)
        end)
        local client, events = connected_client(url)
        assert.is_true(engine.run_until(function()
            return find(events, function(event)
                return event.type == "message"
            end) ~= nil
        end, 10))
        assert.is_true(find(events, function(event)
            return event.code == "malformed_frame"
        end) ~= nil)
        assert.is_true(find(events, function(event)
            return event.code == "unknown_event"
        end) ~= nil)
        assert.is_true(client:is_connected())
        client:close()
        server:close()
    end)
end)
