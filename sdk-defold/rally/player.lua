-- rally/player.lua: the player SDK. A game signs a player in, creates a client on a stage and
-- holds its socket; everything the platform says arrives as events at one handler. The
-- contract is docs/player-protocol.md of the Rally repository.
--
--     local rally = require("rally.player")
--     local client = rally.new({ url = "http://127.0.0.1:7350", tenant = "studio",
--         project = "tictactoe", stage = "default", engine = require("rally.engine.defold") })
--     client:on_event(function(event) print(event.type) end)
--     client:sign_up(function(err) if not err then client:connect() end end)
--
-- Every asynchronous call takes an optional `callback(err, result)`: `err` is nil on success,
-- or a table with a stable `code`, a `message` and, for refusals, the HTTP `status`. Failures
-- also arrive at the handler as an `error` event, so a game may listen in one place. Nothing
-- in here raises into the game: a call made at the wrong time reports `not_signed_in`,
-- `not_connected` or `closed`.

local util = require("rally.core.util")
local http = require("rally.core.http")
local base64 = require("rally.core.base64")

local player = {}

-- Close codes after which the client still exists, so the SDK reconnects (player-protocol
-- §3): a dropped connection (1006, or none), a frame too large, a platform restart, a
-- connection still open, a missed heartbeat.
local RECONNECT_CODES = { [1001] = true, [1005] = true, [1006] = true, [1009] = true,
    [1011] = true, [1012] = true, [1013] = true, [4002] = true }
-- Close codes that end the client: 1000 carries the reason, 4004 and 4008 mean it was deleted.
local ENDED_CODES = { [1000] = true, [4004] = true, [4008] = true }
-- Another node serves the client; the close reason is its base URL (docs/nodes.md).
local MOVED_CODE = 4010

local EVENT_TYPES = { greeted = true, runtime_assigned = true, message = true, error = true,
    matchmaking_failed = true, client_deleted = true }

local DEFAULT_GRACE_SECONDS = 30
local OUTBOX_LIMIT = 256
local POLL_WAIT_MS = 25000
local POLL_BATCH = 100 -- commands per POST (the platform takes up to 256)

local Client = {}
Client.__index = Client

-- A client of the platform for one stage. `config`: `url`, `tenant`, `project`, `stage`,
-- `engine` (an adapter, e.g. require("rally.engine.defold")), and optionally `transport`
-- ("websocket", the default, or "poll" for the HTTP long-poll), `reconnect` (true),
-- `refresh_margin` (seconds before expiry to refresh the access token, 60) and `save_key`
-- (where sessions are saved, "session"). Missing values are read from game.project's
-- `[rally]` section through the engine (`rally.url`, `rally.tenant`, ...). Returns the client,
-- or nil and an error when the config is incomplete.
function player.new(config)
    config = config or {}
    local engine = config.engine
    if type(engine) ~= "table" or type(engine.http) ~= "function" then
        return nil, util.error("invalid_config", "config.engine must be an engine adapter, e.g. require(\"rally.engine.defold\")")
    end
    local function setting(name)
        if config[name] ~= nil then
            return config[name]
        end
        return engine.config and engine.config("rally." .. name) or nil
    end
    local base, err = util.base_url(setting("url"))
    if not base then
        return nil, err
    end
    for _, name in ipairs({ "tenant", "project", "stage" }) do
        if type(setting(name)) ~= "string" or setting(name) == "" then
            return nil, util.error("invalid_config", "config." .. name .. " is missing")
        end
    end
    local transport = setting("transport") or "websocket"
    if transport ~= "websocket" and transport ~= "poll" then
        return nil, util.error("invalid_config", "config.transport must be \"websocket\" or \"poll\"")
    end
    local self = setmetatable({
        engine = engine,
        base = base,
        stage_path = "/api/v1/tenants/" .. util.escape(setting("tenant")) .. "/projects/"
            .. util.escape(setting("project")) .. "/stages/" .. util.escape(setting("stage")),
        transport_kind = transport,
        reconnect_enabled = config.reconnect ~= false,
        refresh_margin = tonumber(config.refresh_margin) or 60,
        save_key = config.save_key or "session",
        handlers = {},
        waiters = {},
        state = "idle", -- idle, connecting, open, reconnecting, closed (by the game), ended
        outbox = {},
        limits = nil,
        assignment = nil,
    }, Client)
    return self
end

-- ---------------------------------------------------------------------------------------
-- Events

-- Adds `handler(event)` for every event. `event.type` is one of the platform's events
-- (`greeted`, `runtime_assigned`, `message`, `error`, `matchmaking_failed`, `client_deleted`)
-- with its fields, or one of the SDK's own: `disconnected` {code, reason, reconnecting},
-- `reconnecting` {attempt, delay}, `session` {user_id} after a sign-in or refresh. A text
-- message has `text`; a binary one `binary` (the bytes). Returns the handler, for `off_event`.
function Client:on_event(handler)
    self.handlers[#self.handlers + 1] = handler
    return handler
end

function Client:off_event(handler)
    for index, known in ipairs(self.handlers) do
        if known == handler then
            table.remove(self.handlers, index)
            return
        end
    end
end

function Client:emit(event)
    for _, handler in ipairs(self.handlers) do
        local ok, failure = util.protect(handler, event)
        if not ok then
            print("rally: an event handler failed on " .. tostring(event.type) .. ": " .. failure)
        end
    end
    for index = #self.waiters, 1, -1 do
        local waiter = self.waiters[index]
        if waiter.type == event.type or waiter.type == "*" then
            table.remove(self.waiters, index)
            waiter.resume(event)
        end
    end
end

-- Reports `err` as an `error` event and to `callback`, if any; returns nil and `err`.
function Client:fail(err, callback)
    self:emit({ type = "error", code = err.code, message = err.message, status = err.status, sdk = true })
    if callback then
        util.protect(callback, err)
    end
    return nil, err
end

-- A failure worth retrying: no answer, or the platform's own trouble (5xx).
local function is_transient(err)
    return err.status == nil or err.status >= 500
end

local function succeed(callback, result)
    if callback then
        local ok, failure = util.protect(callback, nil, result)
        if not ok then
            print("rally: a callback failed: " .. failure)
        end
    end
end

-- ---------------------------------------------------------------------------------------
-- Accounts and tokens (player-protocol §1)

function Client:save_session()
    local session = self.session
    if not session then
        return
    end
    util.protect(self.engine.save, self.save_key, {
        user_id = session.user_id,
        secret = session.secret,
        device_id = session.device_id,
        refresh_token = session.refresh_token,
        client_id = self.client_id,
        saved_at = os.time(),
    })
end

function Client:schedule_refresh()
    if self.refresh_timer then
        self.engine.cancel(self.refresh_timer)
        self.refresh_timer = nil
    end
    if not self.session or self.state == "closed" then
        return
    end
    local remaining = (self.session.expires_at or 0) - self.engine.now()
    local delay = math.max(1, remaining - self.refresh_margin)
    self.refresh_timer = self.engine.delay(delay, function()
        self.refresh_timer = nil
        self:timed_refresh()
    end)
end

function Client:timed_refresh()
    self:refresh(function(err)
        if err and is_transient(err) and self.session and not self.refresh_timer then
            -- The platform is away for now: try again (every 5 s) before the token runs out.
            self.refresh_timer = self.engine.delay(5, function()
                self.refresh_timer = nil
                self:timed_refresh()
            end)
        end
    end)
end

-- Keeps the token pair from a sign-in or refresh answer.
function Client:take_tokens(tokens, credentials)
    if type(tokens) ~= "table" or type(tokens.access_token) ~= "string" then
        return util.error("malformed_response", "the platform's answer has no access token")
    end
    local session = self.session or {}
    for key, value in pairs(credentials or {}) do
        session[key] = value
    end
    session.access_token = tokens.access_token
    session.refresh_token = tokens.refresh_token
    session.expires_in = tonumber(tokens.expires_in) or 900
    session.expires_at = self.engine.now() + session.expires_in
    self.session = session
    self:save_session()
    self:schedule_refresh()
    self:emit({ type = "session", user_id = session.user_id })
    return nil
end

function Client:post(path, body, token, callback)
    http.call(self.engine, "POST", self.base .. path, body, token, callback)
end

-- Signs in with a user id and its secret (from `sign_up` or an earlier session).
function Client:sign_in(user_id, secret, callback)
    if type(user_id) ~= "string" or type(secret) ~= "string" then
        return self:fail(util.error("invalid_argument", "sign_in needs a user id and a secret"), callback)
    end
    self:post("/api/v1/users/sign-in", { user_id = user_id, secret = secret }, nil, function(err, tokens)
        if not err then
            err = self:take_tokens(tokens, { user_id = user_id, secret = secret, device_id = false })
        end
        if err then
            return self:fail(err, callback)
        end
        succeed(callback, { user_id = user_id })
    end)
end

-- A new anonymous player, signed in. Its user id and secret are saved with the session, so
-- `restore` signs the same player in on the next start.
function Client:sign_up(callback)
    self:post("/api/v1/users", "{}", nil, function(err, user)
        if err then
            return self:fail(err, callback)
        end
        if type(user) ~= "table" or type(user.user_id) ~= "string" or type(user.secret) ~= "string" then
            return self:fail(util.error("malformed_response", "the platform's answer has no user"), callback)
        end
        self:sign_in(user.user_id, user.secret, callback)
    end)
end

-- Signs in by device id, creating the player on its first sign-in. `result.created` says so.
function Client:sign_in_device(device_id, callback)
    if type(device_id) ~= "string" or device_id == "" then
        return self:fail(util.error("invalid_argument", "sign_in_device needs a device id"), callback)
    end
    self:post("/api/v1/users/device-sign-in", { device_id = device_id }, nil, function(err, answer)
        if not err then
            err = self:take_tokens(answer and answer.tokens,
                { user_id = answer and answer.user_id, device_id = device_id, secret = false })
        end
        if err then
            return self:fail(err, callback)
        end
        succeed(callback, { user_id = answer.user_id, created = answer.created })
    end)
end

-- Signs in again with the credentials kept in the session (secret or device id).
function Client:sign_in_again(callback)
    local session = self.session or {}
    if session.secret then
        self:sign_in(session.user_id, session.secret, callback)
    elseif session.device_id then
        self:sign_in_device(session.device_id, callback)
    else
        self:fail(util.error("session_expired", "the session expired and there are no credentials to sign in again"), callback)
    end
end

-- Renews the access token with the refresh token (done by itself `refresh_margin` seconds
-- before expiry). When the refresh token is refused, signs in again with the saved
-- credentials; only when that fails too does the game hear `session_expired`.
function Client:refresh(callback)
    local session = self.session
    if not session or not session.refresh_token then
        return self:fail(util.error("not_signed_in", "refresh needs a signed-in player"), callback)
    end
    if self.refreshing then
        local waiting = self.refreshing
        waiting[#waiting + 1] = callback
        return
    end
    self.refreshing = { callback }
    local function done(err)
        local callbacks = self.refreshing
        self.refreshing = nil
        for _, waiting in ipairs(callbacks) do
            if err then
                util.protect(waiting, err)
            else
                succeed(waiting, { user_id = session.user_id })
            end
        end
    end
    self:post("/api/v1/auth/refresh", { refresh_token = session.refresh_token }, nil, function(err, tokens)
        if not err then
            err = self:take_tokens(tokens)
        end
        if not err then
            return done(nil)
        end
        if err.status == 401 and (session.secret or session.device_id) then
            return self:sign_in_again(function(again)
                if again then
                    return done(again)
                end
                done(nil)
            end)
        end
        if err.status == 401 then
            err = util.error("session_expired", "the refresh token was refused (" .. err.code .. "): sign in again", 401)
        end
        self:fail(err)
        done(err)
    end)
end

-- Signs in the player of the saved session: with its refresh token, else its credentials.
-- A client saved less than a grace period ago is resumed by the next `connect`.
-- `callback(err, {user_id})`; `err.code` is `no_session` when nothing was saved.
function Client:restore(callback)
    local ok, saved = util.protect(self.engine.load, self.save_key)
    if not ok or type(saved) ~= "table" or type(saved.user_id) ~= "string" then
        return self:fail(util.error("no_session", "no saved session"), callback)
    end
    self.session = {
        user_id = saved.user_id,
        secret = saved.secret or false,
        device_id = saved.device_id or false,
        refresh_token = saved.refresh_token,
        expires_in = 0,
    }
    if type(saved.client_id) == "string" and tonumber(saved.saved_at)
        and os.time() - saved.saved_at < DEFAULT_GRACE_SECONDS then
        self.client_id = saved.client_id
    end
    if saved.refresh_token then
        self:refresh(callback)
    else
        self:sign_in_again(callback)
    end
end

-- Forgets the saved session (a "sign out"), and closes the client if it is open.
function Client:forget()
    self:close()
    self.session = nil
    self.client_id = nil
    util.protect(self.engine.save, self.save_key, {})
end

function Client:user_id()
    return self.session and self.session.user_id or nil
end

function Client:access_token()
    return self.session and self.session.access_token or nil
end

-- Reads the player's profile on the stage: `callback(err, player)`, `player.profile`.
function Client:get_profile(callback)
    if not self:access_token() then
        return self:fail(util.error("not_signed_in", "sign in before reading the profile"), callback)
    end
    http.call(self.engine, "GET", self.base .. self.stage_path .. "/players/me", nil, self:access_token(), function(err, answer)
        if err then
            return self:fail(err, callback)
        end
        succeed(callback, answer)
    end)
end

-- ---------------------------------------------------------------------------------------
-- The client and its connection (player-protocol §2-§5)

-- Creates a client on the stage (or resumes the one of a restored session) and opens its
-- socket, or starts long-polling. `callback(err, greeted)` runs on the first `greeted`.
function Client:connect(callback)
    if not self:access_token() then
        return self:fail(util.error("not_signed_in", "sign in (sign_up, sign_in, sign_in_device or restore) before connecting"), callback)
    end
    if self.state == "connecting" or self.state == "open" or self.state == "reconnecting" then
        return self:fail(util.error("already_connected", "the client is connecting or connected already"), callback)
    end
    self.connect_callback = callback
    self.state = "connecting"
    self.outbox = {}
    self.dropped_at = nil
    self.reconnect_attempt = 0
    if self.session.expires_at - self.engine.now() <= self.refresh_margin then
        -- After a close, or from a restored session: a token that is about to expire first.
        return self:refresh(function(err)
            if self.state ~= "connecting" then
                return
            end
            if err then
                self.state = "idle"
                return self:connect_failed(err)
            end
            self:connect_with_token()
        end)
    end
    self:schedule_refresh()
    self:connect_with_token()
end

function Client:connect_with_token()
    if self.client_id then
        -- A restored or closed client: resume it, or make a new one if it has ended.
        self.resuming = true
        return self:open_transport()
    end
    self:create_client()
end

function Client:create_client()
    self.resuming = false
    self:post(self.stage_path .. "/clients", "{}", self:access_token(), function(err, created)
        if self.state ~= "connecting" then
            if not err and type(created) == "table" and type(created.client_id) == "string" and self.state == "ended" then
                -- The game left while the client was being made: end it at once.
                self:delete_client(created.client_id)
            end
            return
        end
        if not err and (type(created) ~= "table" or type(created.client_id) ~= "string") then
            err = util.error("malformed_response", "the platform's answer has no client id")
        end
        if err then
            self.state = "idle"
            return self:connect_failed(err)
        end
        self.client_id = created.client_id
        self.deployment_id = created.deployment_id
        -- Several nodes: the one serving the client, when it is not the one asked.
        self.node = type(created.node_url) == "string" and created.node_url or nil
        self.poll_after = 0
        self:save_session()
        self:open_transport()
    end)
end

function Client:connect_failed(err)
    local callback = self.connect_callback
    self.connect_callback = nil
    self:fail(err, callback)
end

function Client:open_transport()
    if self.transport_kind == "poll" then
        self.poll_after = self.poll_after or 0
        self:poll()
    else
        self:open_socket()
    end
end

function Client:open_socket()
    local generation = (self.generation or 0) + 1
    self.generation = generation
    local url = util.socket_url(self:client_base(), "/api/v1/clients/" .. util.escape(self.client_id) .. "/ws")
    local ok, socket = util.protect(self.engine.websocket, url, {
        -- The token as a subprotocol: HTML5 builds cannot set headers.
        protocols = { "rally.player.v1", "rally.token." .. self:access_token() },
        timeout = 10,
    }, {
        open = function()
            if self.generation == generation then
                self.socket_open = true
            end
        end,
        message = function(data, kind)
            if self.generation == generation then
                self:receive_frame(data, kind)
            end
        end,
        close = function(code, reason)
            if self.generation == generation then
                self:socket_closed(code, reason)
            end
        end,
        error = function(message, response)
            if self.generation == generation then
                self:socket_refused(message, response)
            end
        end,
    })
    if not ok then
        return self:socket_refused(socket, nil)
    end
    self.transport = socket
end

-- Where the client's socket, polls and commands go: the node serving it, else the platform's
-- URL from the config (which sends them on to that node).
function Client:client_base()
    return self.node or self.base
end

-- Another node serves the client (its stage moved, or the client was sent on): go there now.
function Client:go_to_node(url)
    self.node = url
    self.dropped_at = self.dropped_at or self.engine.now()
    self.state = "reconnecting"
    self:reconnect_now()
end

-- One frame from the platform: a JSON event (text) or a binary message.
function Client:receive_frame(data, kind)
    if kind == "binary" then
        return self:emit({ type = "message", binary = data })
    end
    local event = http.decode(self.engine, data)
    if kind == nil and (type(event) ~= "table" or not EVENT_TYPES[event.type]) then
        -- The engine cannot tell text from binary (Defold's extension): what is not a
        -- platform event is a binary message.
        return self:emit({ type = "message", binary = data })
    end
    if type(event) ~= "table" or type(event.type) ~= "string" then
        return self:emit({ type = "error", code = "malformed_frame", sdk = true,
            message = "the platform sent a frame that is not a JSON event: " .. tostring(data):sub(1, 80) })
    end
    self:handle_event(event)
end

function Client:handle_event(event)
    local kind = event.type
    if not EVENT_TYPES[kind] then
        return self:emit({ type = "error", code = "unknown_event", sdk = true,
            message = "the platform sent an event this SDK does not know: " .. kind })
    end
    if kind == "greeted" then
        self.limits = type(event.limits) == "table" and event.limits or self.limits
        if type(event.runtime) == "table" then
            self.assignment = event.runtime
        end
        self.state = "open"
        self.resuming = false
        self.renewed_for_retry = false
        self.reconnect_attempt = 0
        self.dropped_at = nil
        local callback = self.connect_callback
        self.connect_callback = nil
        self:emit(event)
        succeed(callback, event)
        self:flush_outbox()
        return
    elseif kind == "runtime_assigned" then
        self.assignment = event
        local request = self.matchmaking
        self.matchmaking = nil
        if request and event.qualifier == "match" then
            self:emit(event)
            return succeed(request.callback, event)
        elseif request and request.callback then
            -- Moved elsewhere (a lobby after a failure or a restart): the request is over.
            util.protect(request.callback, util.error("matchmaking_failed", "moved to a " .. tostring(event.qualifier) .. " instead of a match"))
        end
    elseif kind == "matchmaking_failed" then
        local request = self.matchmaking
        self.matchmaking = nil
        self:emit(event)
        if request and request.callback then
            util.protect(request.callback, util.error("matchmaking_failed", "no match: " .. tostring(event.reason)))
        end
        return
    elseif kind == "message" and event.binary then
        local bytes = base64.decode(event.binary)
        if not bytes then
            return self:emit({ type = "error", code = "malformed_frame", sdk = true,
                message = "a binary message from the platform is not base64" })
        end
        return self:emit({ type = "message", binary = bytes })
    elseif kind == "client_deleted" then
        return self:ended(event.reason, event.message)
    end
    self:emit(event)
end

-- The client is gone for good (deleted by the platform, or never to come back).
function Client:ended(reason, message)
    if self.state == "ended" then
        return
    end
    local callback = self.connect_callback
    self.connect_callback = nil
    self.state = "ended"
    self.client_id = nil
    self.poll_after = nil
    self.assignment = nil
    self.generation = (self.generation or 0) + 1
    if self.transport and self.transport.close then
        util.protect(self.transport.close, self.transport)
    end
    self.transport = nil
    self:save_session()
    local request = self.matchmaking
    self.matchmaking = nil
    self:emit({ type = "client_deleted", reason = reason, message = message })
    if request and request.callback then
        util.protect(request.callback, util.error("client_deleted", "the client ended: " .. tostring(reason)))
    end
    if callback then
        util.protect(callback, util.error("client_deleted", "the client ended: " .. tostring(reason)))
    end
end

function Client:grace_seconds()
    return tonumber(self.limits and self.limits.reconnect_grace_secs) or DEFAULT_GRACE_SECONDS
end

function Client:socket_closed(code, reason)
    self.transport = nil
    self.socket_open = false
    if self.state == "closed" or self.state == "ended" then
        return
    end
    if ENDED_CODES[code] then
        local why = reason ~= "" and reason or (code == 4008 and "slow_reader" or "deleted")
        return self:ended(why)
    end
    if code == MOVED_CODE and type(reason) == "string" and reason:match("^https?://") then
        self:emit({ type = "disconnected", code = code, reason = reason, reconnecting = true })
        return self:go_to_node(reason)
    end
    if code == 4001 then
        -- A newer connection of this client took over: this one has nothing more to do.
        self.state = "closed"
        return self:emit({ type = "disconnected", code = code, reason = reason, reconnecting = false })
    end
    local reconnecting = self.reconnect_enabled and (RECONNECT_CODES[code] or code == nil or code >= 4000)
    self:emit({ type = "disconnected", code = code, reason = reason, reconnecting = reconnecting and true or false })
    if reconnecting then
        self:schedule_reconnect()
    else
        self.state = "closed"
    end
end

-- The socket did not open: the platform refused the upgrade (`response`), or did not answer.
function Client:socket_refused(message, response)
    if response and response.status then
        return self:refused(http.refusal(self.engine, response.status, response.body))
    end
    self:refused(util.error("unreachable", "the socket did not open: " .. tostring(message)))
end

-- The connection (socket or poll) failed with `err`: a refusal when it has a `status`, else
-- no answer from the platform.
function Client:refused(err)
    self.transport = nil
    if self.state == "closed" or self.state == "ended" then
        return
    end
    local status = err.status
    if status == 421 and err.code == "wrong_node" and type(err.details) == "table"
        and type(err.details.node_url) == "string" then
        return self:go_to_node(err.details.node_url)
    end
    if not status then
        -- The node did not answer (it may have died): start over from the configured URL,
        -- which knows where the client is served now.
        self.node = nil
    end
    if self.resuming and (status == 404 or status == 410) then
        -- The saved client is gone (its grace period passed): start a new one.
        self.client_id = nil
        self.poll_after = nil
        self.state = "connecting"
        return self:create_client()
    elseif status == 410 then
        return self:ended(err.code == "client_deleted" and "deleted" or err.code, err.message)
    elseif status == 401 and not self.renewed_for_retry then
        -- An expired token, most likely (Defold's extension does not pass the answer's body
        -- on): renew it and try once more.
        self.renewed_for_retry = true
        self.session.expires_at = 0
        return self:schedule_reconnect()
    elseif status and status >= 400 and status < 500 then
        -- No such client (404), or not a player's token (403): retrying will not help.
        self.state = "idle"
        self.client_id = nil
        return self:connect_failed(err)
    end
    if self.state == "connecting" and not self.dropped_at then
        -- The very first connection: report it, then keep trying as after a drop.
        self:emit({ type = "error", code = "unreachable", sdk = true, message = err.message })
    end
    self:schedule_reconnect()
end

-- Tries again with back-off until the reconnect grace period since the drop has passed.
function Client:schedule_reconnect()
    if not self.reconnect_enabled then
        self.state = "closed"
        return self:connect_failed(util.error("connection_lost", "the connection dropped and reconnecting is off"))
    end
    local now = self.engine.now()
    self.dropped_at = self.dropped_at or now
    self.state = "reconnecting"
    if now - self.dropped_at > self:grace_seconds() then
        return self:ended("disconnected", "could not reconnect within " .. self:grace_seconds() .. " s")
    end
    self.reconnect_attempt = (self.reconnect_attempt or 0) + 1
    local delay = util.backoff(self.reconnect_attempt)
    self:emit({ type = "reconnecting", attempt = self.reconnect_attempt, delay = delay })
    self.reconnect_timer = self.engine.delay(delay, function()
        self.reconnect_timer = nil
        if self.state ~= "reconnecting" then
            return
        end
        self:reconnect_now()
    end)
end

function Client:reconnect_now()
    local session = self.session
    if session.expires_at and session.expires_at - self.engine.now() > self.refresh_margin then
        return self:open_transport()
    end
    self:refresh(function(err)
        if self.state ~= "reconnecting" then
            return
        end
        if err and not is_transient(err) then
            return self:ended("session_expired", err.message)
        end
        if err then
            return self:schedule_reconnect()
        end
        self:open_transport()
    end)
end

-- ---------------------------------------------------------------------------------------
-- Long-poll (player-protocol §5)

function Client:poll()
    local generation = (self.generation or 0) + 1
    self.generation = generation
    local path = "/api/v1/clients/" .. util.escape(self.client_id) .. "/events?after=" .. self.poll_after
        .. "&wait_ms=" .. POLL_WAIT_MS
    http.call(self.engine, "GET", self:client_base() .. path, nil, self:access_token(), function(err, answer)
        if self.generation ~= generation or self.state == "closed" or self.state == "ended" then
            return
        end
        if err then
            return self:refused(err)
        end
        local resuming = self.resuming
        self.resuming = false
        if type(answer) ~= "table" or type(answer.events) ~= "table" then
            self:emit({ type = "error", code = "malformed_frame", sdk = true, message = "a poll answer without events" })
            return self:schedule_reconnect()
        end
        for _, event in ipairs(answer.events) do
            if type(event) ~= "table" or type(event.seq) ~= "number" then
                self:emit({ type = "error", code = "malformed_frame", sdk = true, message = "a polled event without seq" })
            elseif event.seq > self.poll_after then
                self.poll_after = event.seq
                event.seq = nil
                if type(event.type) ~= "string" then
                    self:emit({ type = "error", code = "malformed_frame", sdk = true, message = "a polled event without type" })
                else
                    self:handle_event(event)
                end
            end
            if self.state == "ended" or self.generation ~= generation then
                return
            end
        end
        if answer.open == false then
            return self:ended("deleted")
        end
        if self.state == "reconnecting" then
            -- Polling works again: the events went on where they were.
            self.state = "open"
            self.dropped_at = nil
            self.reconnect_attempt = 0
            self:flush_outbox()
        elseif self.state == "connecting" and resuming then
            -- The platform greets only a client's first poll; a resumed one goes on with its
            -- events. The SDK greets it instead, so that connect's callback runs as usual.
            self:handle_event({ type = "greeted", client_id = self.client_id, resumed = true,
                runtime = self.assignment, limits = self.limits, sdk = true })
        end
        self:poll()
    end, POLL_WAIT_MS / 1000 + 10)
end

-- Long-poll commands go out one POST at a time, in order, batched while one is under way;
-- a POST that fails for a passing reason is sent again.
function Client:post_command(command)
    self.poll_outbox = self.poll_outbox or {}
    self.poll_outbox[#self.poll_outbox + 1] = command
    self:post_commands()
end

function Client:post_commands()
    local waiting = self.poll_outbox
    if self.posting or not waiting or #waiting == 0 or not self.client_id then
        return
    end
    local batch = {}
    while #batch < POLL_BATCH and #waiting > 0 do
        batch[#batch + 1] = table.remove(waiting, 1)
    end
    self.posting = true
    local path = "/api/v1/clients/" .. util.escape(self.client_id) .. "/commands"
    http.call(self.engine, "POST", self:client_base() .. path, { commands = batch }, self:access_token(), function(err)
        if err and err.code == "wrong_node" and type(err.details) == "table"
            and type(err.details.node_url) == "string" then
            -- The client moved: the batch goes to its node, in order, before anything after it.
            self.node = err.details.node_url
            err = util.error("moved", "sent on to " .. self.node, 503)
        end
        self.posting = false
        if err and is_transient(err) and self.state ~= "ended" and self.state ~= "closed" then
            for index = #batch, 1, -1 do
                table.insert(waiting, 1, batch[index])
            end
            self.engine.delay(0.5, function()
                self:post_commands()
            end)
            return
        elseif err then
            self:fail(err)
        end
        self:post_commands()
    end)
end

-- ---------------------------------------------------------------------------------------
-- Sending (player-protocol §3, commands)

function Client:can_send(callback)
    if self.state == "idle" then
        return self:fail(util.error("not_connected", "connect before sending"), callback)
    elseif self.state == "closed" or self.state == "ended" then
        return self:fail(util.error("closed", "the client is closed; connect again to play on"), callback)
    end
    return true
end

-- Commands sent while the connection is down wait (at most 256) and go out after the next
-- `greeted`, in order.
function Client:send_command(command, kind)
    if self.state ~= "open" then
        if #self.outbox >= OUTBOX_LIMIT then
            return self:fail(util.error("outbox_full", "too many messages wait for the connection; this one was dropped"))
        end
        self.outbox[#self.outbox + 1] = { command = command, kind = kind }
        return true
    end
    if self.transport_kind == "poll" then
        if kind == "binary" then
            command = { type = "message", binary = base64.encode(command) }
        end
        self:post_command(command)
        return true
    end
    local data = kind == "binary" and command or self.engine.json_encode(command)
    local ok, sent = util.protect(self.transport.send, self.transport, data, kind)
    if not ok or sent == false then
        -- The socket is going down: keep the command for the next connection.
        self.outbox[#self.outbox + 1] = { command = command, kind = kind }
    end
    return true
end

function Client:flush_outbox()
    local waiting = self.outbox
    self.outbox = {}
    for _, item in ipairs(waiting) do
        self:send_command(item.command, item.kind)
    end
end

-- Sends a text message to the runtime the client is in.
function Client:send_text(text)
    if not self:can_send() then
        return nil
    end
    if type(text) ~= "string" then
        return self:fail(util.error("invalid_argument", "send_text takes a string"))
    end
    return self:send_command({ type = "message", text = text }, "text")
end

-- Sends `value` (a table) as JSON text.
function Client:send_json(value)
    local ok, text = pcall(self.engine.json_encode, value)
    if not ok then
        return self:fail(util.error("invalid_argument", "send_json: " .. tostring(text)))
    end
    return self:send_text(text)
end

-- Sends bytes (a Lua string) as a binary message.
function Client:send_binary(bytes)
    if not self:can_send() then
        return nil
    end
    if type(bytes) ~= "string" then
        return self:fail(util.error("invalid_argument", "send_binary takes a string of bytes"))
    end
    return self:send_command(bytes, "binary")
end

-- Asks for a match of `mode`. Matchmaking is the lobby logic's to request (runtime protocol:
-- `request_matchmaking`), so this sends the lobby the game's own request: `message`, a string
-- or a table sent as JSON (default `{"type": "matchmake", "mode": mode}`). `callback(err,
-- assignment)` runs when the client is moved to a match (`runtime_assigned` with qualifier
-- `match`) or with `matchmaking_failed` (`err.message` has the platform's reason).
function Client:request_matchmaking(mode, message, callback)
    if not self:can_send(callback) then
        return nil
    end
    local waiting = self.matchmaking
    if waiting and waiting.callback then
        util.protect(waiting.callback, util.error("superseded", "a newer matchmaking request replaced this one"))
    end
    message = message or { type = "matchmake", mode = mode }
    self.matchmaking = { mode = mode, callback = callback }
    if type(message) == "table" then
        return self:send_json(message)
    end
    return self:send_text(message)
end

function Client:delete_client(client_id)
    http.call(self.engine, "DELETE", self:client_base() .. "/api/v1/clients/" .. util.escape(client_id), nil,
        self:access_token(), function(err)
            if err and err.status ~= 410 and err.status ~= 404 then
                self:fail(err)
            end
        end)
end

-- Ends the client now (reason `left`): the runtime hears it at once instead of after the
-- grace period. The handler gets `client_deleted`.
function Client:leave()
    if not self:can_send() then
        return nil
    end
    if self.state ~= "open" then
        -- No connection to send `leave` on: end the client over HTTP (one still being made is
        -- ended when it arrives).
        local client_id = self.client_id
        self:ended("left")
        if client_id then
            self:delete_client(client_id)
        end
        return true
    end
    if self.transport_kind == "poll" then
        self:post_command({ type = "leave" })
        return true
    end
    return self:send_command({ type = "leave" }, "text")
end

-- Closes the connection without ending the client: within the grace period `connect` resumes
-- it (the runtime keeps the player's place). Also stops the token refresh timer.
function Client:close()
    if self.refresh_timer then
        self.engine.cancel(self.refresh_timer)
        self.refresh_timer = nil
    end
    if self.reconnect_timer then
        self.engine.cancel(self.reconnect_timer)
        self.reconnect_timer = nil
    end
    if self.state == "idle" or self.state == "ended" or self.state == "closed" then
        self.state = self.state == "ended" and "ended" or "closed"
        return
    end
    self.state = "closed"
    self.generation = (self.generation or 0) + 1
    if self.transport and self.transport.close then
        util.protect(self.transport.close, self.transport, 1000, "closed")
    end
    self.transport = nil
    self:save_session()
    self:emit({ type = "disconnected", code = 1000, reason = "closed by the game", reconnecting = false })
end

function Client:is_connected()
    return self.state == "open"
end

-- ---------------------------------------------------------------------------------------
-- Coroutines

-- Runs `fn(...)` as a coroutine in which `client:await(...)` and `client:await_event(...)`
-- wait without blocking the game. An error in `fn` is printed, not raised.
function player.run(fn, ...)
    local co = coroutine.create(fn)
    local ok, failure = coroutine.resume(co, ...)
    if not ok then
        print("rally: a coroutine failed: " .. tostring(failure))
    end
    return co
end

local function suspend(start)
    local co = coroutine.running()
    if not co then
        return util.error("not_in_coroutine", "await needs a coroutine: wrap the code in rally.run")
    end
    local finished, results, count = false, nil, 0
    local function resume(...)
        if finished then
            return
        end
        finished = true
        results, count = { ... }, select("#", ...)
        if coroutine.status(co) == "suspended" then
            local ok, failure = coroutine.resume(co)
            if not ok then
                print("rally: a coroutine failed: " .. tostring(failure))
            end
        end
    end
    start(resume)
    if not finished then
        coroutine.yield()
    end
    return unpack(results, 1, count)
end

-- Inside `rally.run`: calls `client:<method>(..., callback)` and waits for the callback.
-- Returns what the callback got: `err, result`.
--     local err = client:await("sign_up"); local err, greeted = client:await("connect")
function Client:await(method, ...)
    local fn = self[method]
    if type(fn) ~= "function" then
        return util.error("invalid_argument", "no such method: " .. tostring(method))
    end
    local args = { ... }
    local count = select("#", ...)
    return suspend(function(resume)
        args[count + 1] = resume
        fn(self, unpack(args, 1, count + 1))
    end)
end

-- Inside `rally.run`: waits for the next event of `event_type` ("*" for any) and returns it,
-- or nil after `timeout` seconds (default: no limit).
function Client:await_event(event_type, timeout)
    return suspend(function(resume)
        local waiter = { type = event_type, resume = resume }
        self.waiters[#self.waiters + 1] = waiter
        if timeout then
            self.engine.delay(timeout, function()
                for index, known in ipairs(self.waiters) do
                    if known == waiter then
                        table.remove(self.waiters, index)
                        return resume(nil)
                    end
                end
            end)
        end
    end)
end

return player
