-- rally/server.lua: the server SDK. It makes a program (a headless Defold build, or any Lua
-- program with an engine adapter) a Rally runtime: it reads the runtime's environment,
-- exchanges the one-time secret for tokens, holds the runtime WebSocket, and calls the game's
-- handler for each event. The contract is docs/protocol.md of the Rally repository.
--
--     local server = require("rally.server")
--     server.start({ engine = require("rally.engine.defold"), handler = {
--         message = function(runtime, client_id, text) runtime:respond(client_id, text) end,
--     } })
--
-- Handler functions (all optional), each called with the runtime first:
--   runtime_created(runtime, info)     once: info.qualifier ("lobby"/"match"), mode, manifest,
--                                      config, user_data
--   client_assigned(runtime, client)   client.id, user_id, profile, group (nil in lobbies)
--   client_removed(runtime, client_id, reason)
--   message(runtime, client_id, data, kind)   kind "text" or "binary" (data: the bytes)
--   tick(runtime, dt)                  tick_rate times a second (start option, or the
--                                      manifest's runtime.tick_rate; 0 for none)
--   stop(runtime, deadline_ms)         the platform asks the runtime to finish; after it returns
--                                      the SDK sends what it emitted, closes and exits 0
--   error(runtime, err)                a command was refused (err.code, err.message)
-- A handler that raises is logged (level error) and the runtime goes on.
--
-- Exit codes, as rally-runtime's (protocol §6): 0 stopped as asked, 2 bad environment,
-- 4 credentials refused, 5 platform unreachable for longer than 60 s, 6 another protocol
-- version.

local util = require("rally.core.util")
local http = require("rally.core.http")
local base64 = require("rally.core.base64")

local server = {}

server.EXIT_STOPPED = 0
server.EXIT_ENVIRONMENT = 2
server.EXIT_REFUSED = 4
server.EXIT_UNREACHABLE = 5
server.EXIT_PROTOCOL = 6

local PROTOCOL = "rally.runtime.v2"
local PROTOCOL_VERSION = 2
local UNREACHABLE_SECONDS = 60
local FRAME_LIMIT = 1024 * 1024
local QUEUE_LIMIT = 16384

local Runtime = {}
Runtime.__index = Runtime

-- ---------------------------------------------------------------------------------------
-- Frames (protocol §3): JSON text, or a binary envelope with attachments.

local function u32(data, position)
    local a, b, c, d = data:byte(position, position + 3)
    if not d then
        return nil
    end
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- The frame's JSON text and its attachments, or nil and a reason.
function server.open_envelope(data)
    local length = u32(data, 1)
    if not length or 4 + length > #data then
        return nil, "the envelope is cut short"
    end
    local json = data:sub(5, 4 + length)
    local attachments = {}
    local position = 5 + length
    while position <= #data do
        local size = u32(data, position)
        if not size or position + 3 + size > #data then
            return nil, "an attachment is cut short"
        end
        attachments[#attachments + 1] = data:sub(position + 4, position + 3 + size)
        position = position + 4 + size
    end
    return json, attachments
end

-- A payload's data and kind ("text" or "binary"), or nil and a reason.
local function read_payload(payload, attachments)
    if type(payload) ~= "table" then
        return nil, "a payload is not an object"
    elseif type(payload.text) == "string" then
        return payload.text, "text"
    elseif type(payload.binary) == "string" then
        local bytes, why = base64.decode(payload.binary)
        return bytes, bytes and "binary" or why
    elseif type(payload.attachment) == "number" then
        local bytes = attachments and attachments[payload.attachment + 1]
        return bytes, bytes and "binary" or "the attachment is not there"
    end
    return nil, "a payload has neither text, binary nor attachment"
end

-- ---------------------------------------------------------------------------------------
-- Start-up

-- Starts the runtime: `options.engine` (an adapter), `options.handler`, optionally
-- `options.tick_rate`. Returns the runtime object (the same one every handler gets). With a
-- bad environment it reports why and exits 2.
function server.start(options)
    local engine = options.engine
    local runtime = setmetatable({
        engine = engine,
        handler = options.handler or {},
        tick_rate = options.tick_rate,
        clients = {},
        queue = {},
        json = { encode = engine.json_encode, decode = engine.json_decode, null = engine.null },
        state = "starting",
        reconnect_attempt = 0,
    }, Runtime)
    local missing = {}
    for _, name in ipairs({ "RALLY_RUNTIME_ID", "RALLY_RUNTIME_SECRET", "RALLY_RUNTIME_QUALIFIER", "RALLY_PLATFORM_URL" }) do
        if not engine.getenv(name) or engine.getenv(name) == "" then
            missing[#missing + 1] = name
        end
    end
    local base = util.base_url(engine.getenv("RALLY_PLATFORM_URL"))
    if #missing > 0 or not base then
        local why = #missing > 0 and ("missing " .. table.concat(missing, ", ")) or "RALLY_PLATFORM_URL is not an http(s) URL"
        return runtime:exit(server.EXIT_ENVIRONMENT, "bad environment: " .. why .. " (the platform starts runtimes with these set)")
    end
    runtime.id = engine.getenv("RALLY_RUNTIME_ID")
    runtime.qualifier = engine.getenv("RALLY_RUNTIME_QUALIFIER")
    runtime.bundle = engine.getenv("RALLY_BUNDLE")
    runtime.base = base
    if engine.on_terminate then
        engine.on_terminate(function()
            runtime:stop_requested(0)
        end)
    end
    runtime:exchange_secret(engine.getenv("RALLY_RUNTIME_SECRET"))
    return runtime
end

function Runtime:report(message)
    io.stderr:write("rally server: ", message, "\n")
end

function Runtime:exit(code, why)
    if self.state == "exited" then
        return
    end
    self.state = "exited"
    if why then
        self:report(why)
    end
    for _, timer in pairs(self.timers or {}) do
        self.engine.cancel(timer)
    end
    self.engine.exit(code)
end

-- Gives up with exit code 5 once the platform has not answered for 60 s; else waits a back-off
-- step and calls `retry`.
function Runtime:retry_later(why, retry)
    local now = self.engine.now()
    self.unreachable_since = self.unreachable_since or now
    if now - self.unreachable_since > UNREACHABLE_SECONDS then
        return self:exit(server.EXIT_UNREACHABLE, "the platform was unreachable for more than " .. UNREACHABLE_SECONDS .. " s: " .. why)
    end
    self.reconnect_attempt = self.reconnect_attempt + 1
    self.engine.delay(util.backoff(self.reconnect_attempt), retry)
end

function Runtime:exchange_secret(secret)
    http.call(self.engine, "POST", self.base .. "/api/v1/runtime/token",
        { runtime_id = self.id, secret = secret }, nil, function(err, tokens)
            if err and err.status == nil then
                return self:retry_later(err.message, function()
                    self:exchange_secret(secret)
                end)
            elseif err and err.status >= 500 then
                return self:retry_later(tostring(err), function()
                    self:exchange_secret(secret)
                end)
            elseif err then
                return self:exit(server.EXIT_REFUSED, "the platform refused the runtime's secret: " .. tostring(err))
            elseif not self:take_tokens(tokens) then
                return self:retry_later("the token answer has no tokens", function()
                    self:exchange_secret(secret)
                end)
            end
            self:open_socket()
        end)
end

-- Keeps a token pair; false when the answer is not one.
function Runtime:take_tokens(tokens)
    if type(tokens) ~= "table" or type(tokens.access_token) ~= "string" or type(tokens.refresh_token) ~= "string" then
        return false
    end
    self.access_token = tokens.access_token
    self.refresh_token = tokens.refresh_token
    self.expires_at = self.engine.now() + (tonumber(tokens.expires_in) or 900)
    self.renew_before_connecting = false
    return true
end

-- Renews the access token, then calls `after()`.
function Runtime:refresh(after)
    http.call(self.engine, "POST", self.base .. "/api/v1/auth/refresh",
        { refresh_token = self.refresh_token }, nil, function(err, tokens)
            if err and (err.status == nil or err.status >= 500) then
                return self:retry_later(tostring(err), function()
                    self:refresh(after)
                end)
            elseif err then
                return self:exit(server.EXIT_REFUSED, "the platform refused the runtime's refresh token: " .. tostring(err))
            elseif not self:take_tokens(tokens) then
                return self:retry_later("the refresh answer has no tokens", function()
                    self:refresh(after)
                end)
            end
            after()
        end)
end

function Runtime:open_socket()
    if self.state == "exited" or self.state == "stopping" then
        return
    end
    -- Protocol §4: a reconnect renews the access token first (and so does a token near its end).
    if self.renew_before_connecting or self.expires_at - self.engine.now() < 60 then
        return self:refresh(function()
            self:open_socket()
        end)
    end
    self.generation = (self.generation or 0) + 1
    local generation = self.generation
    local url = util.socket_url(self.base, "/api/v1/runtime/ws")
    local ok, socket = util.protect(self.engine.websocket, url, {
        protocols = { PROTOCOL },
        headers = { Authorization = "Bearer " .. self.access_token },
        timeout = 10,
    }, {
        open = function() end,
        message = function(data, kind)
            if generation == self.generation then
                self:receive_frame(data, kind)
            end
        end,
        close = function(code, reason)
            if generation == self.generation then
                self:socket_lost("closed with " .. tostring(code) .. " " .. tostring(reason))
            end
        end,
        error = function(message, response)
            if generation ~= self.generation then
                return
            end
            if response and response.status then
                local err = http.refusal(self.engine, response.status, response.body)
                if response.status == 401 and not self.renewed_for_retry then
                    -- An expired token, most likely (Defold's extension does not pass the
                    -- answer's body on): renew it and try once more.
                    self.renewed_for_retry = true
                    self.renew_before_connecting = true
                    return self:socket_lost(tostring(err))
                elseif response.status < 500 then
                    return self:exit(server.EXIT_REFUSED, "the platform refused the runtime's socket: " .. tostring(err))
                end
            end
            self:socket_lost(tostring(message))
        end,
    })
    if not ok then
        return self:socket_lost(socket)
    end
    self.socket = socket
end

function Runtime:socket_lost(why)
    self.socket = nil
    self.connected = false
    self.renew_before_connecting = true
    if self.state == "exited" then
        return
    end
    if self.state == "stopping" then
        return self:exit(server.EXIT_STOPPED)
    end
    self:retry_later(why, function()
        self:open_socket()
    end)
end

-- ---------------------------------------------------------------------------------------
-- Platform -> runtime

function Runtime:receive_frame(data, kind)
    local json, attachments = data, nil
    if kind == "binary" or (kind == nil and data:sub(1, 1) ~= "{") then
        json, attachments = server.open_envelope(data)
        if not json then
            return self:frame_error(attachments)
        end
    end
    local frame = http.decode(self.engine, json)
    if type(frame) ~= "table" or type(frame.messages) ~= "table" then
        return self:frame_error("not a JSON object with messages")
    end
    for _, message in ipairs(frame.messages) do
        if self.state == "exited" then
            return
        end
        self:dispatch(message, attachments)
    end
    self:flush()
end

function Runtime:frame_error(why)
    self:report("the platform sent a frame that cannot be read: " .. tostring(why))
    self:call("error", util.error("malformed_frame", "a frame from the platform cannot be read: " .. tostring(why)))
end

-- Calls the handler's `name` with the runtime and `...`, logging (not raising) its failure.
function Runtime:call(name, ...)
    local fn = self.handler[name]
    if type(fn) ~= "function" then
        return
    end
    local ok, failure = util.protect(fn, self, ...)
    if not ok then
        self:report("handler " .. name .. " failed: " .. failure)
        self:log("error", "handler " .. name .. " failed: " .. failure)
    end
end

function Runtime:dispatch(message, attachments)
    local kind = type(message) == "table" and message.type or nil
    if kind == "hello" then
        if message.protocol ~= PROTOCOL_VERSION then
            return self:exit(server.EXIT_PROTOCOL, "the platform speaks protocol " .. tostring(message.protocol) .. ", this SDK " .. PROTOCOL_VERSION)
        end
        self.connected = true
        self.unreachable_since = nil
        self.reconnect_attempt = 0
        self.renewed_for_retry = false
        self.heartbeat_secs = message.heartbeat_secs
        if self.state == "starting" then
            self.state = "running"
        end
    elseif kind == "runtime_created" then
        self.mode = message.mode ~= self.engine.null and message.mode or nil
        self.manifest = message.manifest
        self.config = message.config
        self.user_data = message.user_data
        self:call("runtime_created", {
            qualifier = message.qualifier,
            mode = self.mode,
            manifest = message.manifest,
            config = message.config,
            user_data = message.user_data,
        })
        self:start_ticks()
    elseif kind == "client_assigned" then
        local client = {
            id = message.client_id,
            user_id = message.user_id,
            profile = type(message.profile) == "table" and message.profile or {},
            group = message.group ~= self.engine.null and message.group or nil,
        }
        self.clients[client.id] = client
        self:call("client_assigned", client)
    elseif kind == "client_removed" then
        self.clients[message.client_id] = nil
        self:call("client_removed", message.client_id, message.reason)
    elseif kind == "message_received" then
        local data, payload_kind = read_payload(message.payload, attachments)
        if data == nil then
            return self:frame_error(payload_kind)
        end
        self:call("message", message.client_id, data, payload_kind)
    elseif kind == "stop_requested" then
        self:stop_requested(message.deadline_ms)
    elseif kind == "error" then
        self:call("error", util.error(tostring(message.code), tostring(message.message)))
    else
        -- Newer platforms may send more; protocol §7 says to ignore what is unknown.
        self:report("ignored an unknown message: " .. tostring(kind))
    end
end

function Runtime:stop_requested(deadline_ms)
    if self.state == "stopping" or self.state == "exited" then
        return
    end
    self:call("stop", deadline_ms)
    self.state = "stopping"
    self:flush()
    -- A moment for the last frame to leave before the close.
    self.engine.delay(0.2, function()
        if self.socket then
            util.protect(self.socket.close, self.socket, 1000, "stopped")
        end
        self:exit(server.EXIT_STOPPED)
    end)
end

function Runtime:start_ticks()
    local manifest_rate = type(self.manifest) == "table" and type(self.manifest.runtime) == "table"
        and tonumber(self.manifest.runtime.tick_rate) or nil
    local rate = tonumber(self.tick_rate) or manifest_rate or 0
    if rate <= 0 or type(self.handler.tick) ~= "function" then
        return
    end
    local interval = 1 / rate
    local last = self.engine.now()
    local function tick()
        if self.state == "exited" or self.state == "stopping" then
            return
        end
        local now = self.engine.now()
        self:call("tick", now - last)
        last = now
        self:flush()
        self.engine.delay(interval, tick)
    end
    self.engine.delay(interval, tick)
end

-- ---------------------------------------------------------------------------------------
-- Runtime -> platform: commands are queued and sent together, one frame per batch of events.

function Runtime:command(message)
    if self.state == "exited" then
        return false
    end
    if #self.queue >= QUEUE_LIMIT then
        self:report("the command queue is full (" .. QUEUE_LIMIT .. "); a command was dropped")
        return false
    end
    self.queue[#self.queue + 1] = message
    return true
end

function Runtime:flush()
    if not self.connected or not self.socket or #self.queue == 0 then
        return
    end
    -- Whole frames of at most 1 MiB; what cannot be sent stays queued for the next connection.
    local sent = 0
    while sent < #self.queue do
        local frame, size = {}, 0
        for index = sent + 1, #self.queue do
            local text = self.engine.json_encode(self.queue[index])
            if #frame > 0 and size + #text + 16 > FRAME_LIMIT then
                break
            end
            frame[#frame + 1] = text
            size = size + #text + 1
        end
        local ok, accepted = util.protect(self.socket.send, self.socket,
            '{"messages":[' .. table.concat(frame, ",") .. "]}", "text")
        if not ok or accepted == false then
            break
        end
        sent = sent + #frame
    end
    local rest = {}
    for index = sent + 1, #self.queue do
        rest[#rest + 1] = self.queue[index]
    end
    self.queue = rest
end

local function payload_of(data, kind)
    if kind == "binary" then
        return { binary = base64.encode(data) }
    end
    return { text = tostring(data) }
end

-- Sends `data` to one client: text, or bytes with `kind` "binary".
function Runtime:respond(client_id, data, kind)
    return self:command({ type = "respond_client", client_id = client_id, payload = payload_of(data, kind) })
end

function Runtime:multicast(client_ids, data, kind)
    if #client_ids == 0 then
        return true
    end
    return self:command({ type = "multicast", client_ids = client_ids, payload = payload_of(data, kind) })
end

function Runtime:broadcast(data, kind)
    return self:command({ type = "broadcast", payload = payload_of(data, kind) })
end

function Runtime:kick(client_id, reason)
    return self:command({ type = "kick_client", client_id = client_id, reason = reason or "kicked" })
end

-- Replaces the player's profile (a table, at most 64 KiB as JSON); it is stored before
-- anything sent after it reaches a player.
function Runtime:set_profile(client_id, profile)
    local client = self.clients[client_id]
    if client then
        client.profile = profile
    end
    return self:command({ type = "set_profile", client_id = client_id, profile = profile })
end

function Runtime:request_matchmaking(client_id, mode)
    return self:command({ type = "request_matchmaking", client_id = client_id, mode = mode })
end

function Runtime:stop_match(reason)
    return self:command({ type = "stop_match", reason = reason or "finished" })
end

-- A line in the runtime's log: level "debug", "info", "warn" or "error".
function Runtime:log(level, message)
    return self:command({ type = "log", level = level, message = tostring(message) })
end

-- Calls `fn(runtime)` after `seconds`, then sends what it emitted. Returns a handle for
-- `cancel`.
function Runtime:after(seconds, fn)
    self.timers = self.timers or {}
    local handle = {}
    self.timers[handle] = self.engine.delay(seconds, function()
        if self.timers[handle] == nil or self.state == "exited" then
            return
        end
        self.timers[handle] = nil
        local ok, failure = util.protect(fn, self)
        if not ok then
            self:report("a timer failed: " .. failure)
            self:log("error", "a timer failed: " .. failure)
        end
        self:flush()
    end)
    return handle
end

function Runtime:cancel(handle)
    if self.timers and self.timers[handle] then
        self.engine.cancel(self.timers[handle])
        self.timers[handle] = nil
    end
end

return server
