-- The player SDK against a real platform (real HTTP and WebSocket I/O with lua-http): players
-- made with the SDK and the example's game model play tic-tac-toe on the stage the test
-- harness deployed (platform/tests/it/defold.rs starts the platform and runs this file).
-- RALLY_TEST_URL, RALLY_TEST_TENANT, RALLY_TEST_PROJECT and RALLY_TEST_STAGE name it.

local engine = require("luahttp_engine")
local rally = require("rally.player")
local game_model = require("tictactoe.game")

local URL = assert(os.getenv("RALLY_TEST_URL"), "RALLY_TEST_URL names the platform")
local STAGE = {
    url = URL,
    tenant = os.getenv("RALLY_TEST_TENANT") or "studio",
    project = os.getenv("RALLY_TEST_PROJECT") or "game",
    stage = os.getenv("RALLY_TEST_STAGE") or "default",
}

local saves = 0

-- `what` names what is awaited, or is a function that describes it once the wait is over.
local function wait(predicate, what, timeout)
    local done = engine.run_until(predicate, timeout or 20)
    assert(done, "timed out waiting for " .. (type(what) == "function" and what() or what))
end

-- A player: its client, its game model, and every event it heard.
local function new_player(extra)
    saves = saves + 1
    local config = { engine = engine, save_key = "it-" .. saves .. "-" .. os.time() }
    for key, value in pairs(STAGE) do
        config[key] = value
    end
    for key, value in pairs(extra or {}) do
        config[key] = value
    end
    local client = assert(rally.new(config))
    local who = { client = client, events = {} }
    client:on_event(function(event)
        who.events[#who.events + 1] = event
    end)
    who.game = game_model.new(client)
    return who
end

local function seen(who, predicate)
    for _, event in ipairs(who.events) do
        if predicate(event) then
            return event
        end
    end
    return nil
end

-- Signs `who` up and connects it; returns once it has been welcomed in a lobby.
local function in_lobby(who)
    local signed
    who.client:sign_up(function(err)
        assert(err == nil, tostring(err))
        signed = true
    end)
    wait(function()
        return signed
    end, "sign-up")
    who.client:connect()
    wait(function()
        return who.game.phase == "lobby"
    end, "the lobby's welcome")
end

local function both_playing(a, b)
    a.game:play()
    b.game:play()
    wait(function()
        return a.game.phase == "playing" and b.game.phase == "playing"
    end, "both players in a started match")
    local x = a.game.you == "x" and a or b
    local o = x == a and b or a
    assert.are.equal("o", o.game.you)
    return x, o
end

-- Plays `cell` as `who` and waits until both players see it on the board.
local function move(who, other, cell)
    assert.is_true(who.game:my_turn(), "it is not " .. tostring(who.game.you) .. "'s turn")
    who.game:move(cell)
    wait(function()
        return who.game.board:sub(cell + 1, cell + 1) == who.game.you
            and other.game.board:sub(cell + 1, cell + 1) == who.game.you
    end, "move " .. cell)
end

-- x takes the top row while o plays 3 and 4: x wins. Both return to a lobby with the record.
local function play_to_a_win(x, o, before)
    local moves = { { x, 0 }, { o, 3 }, { x, 1 }, { o, 4 } }
    for index, step in ipairs(moves) do
        if before then
            before(index, step[1])
        end
        move(step[1], step[1] == x and o or x, step[2])
    end
    x.game:move(2)
    wait(function()
        return x.game.phase == "over" and o.game.phase == "over"
    end, "the end of the game")
    assert.are.equal("win", x.game.result.result)
    assert.are.equal("x", o.game.result.winner)
    assert.are.equal("xxxoo----", o.game.board)
    assert.are.equal("you won", x.game:status())
    assert.are.equal("you lost", o.game:status())
    wait(function()
        return x.game.phase == "lobby" and o.game.phase == "lobby" and x.game.record.wins >= 1
            and o.game.record.losses >= 1
    end, "both players back in a lobby with the result recorded")
end

describe("tic-tac-toe with the Defold player SDK on " .. URL, function()
    it("two players sign up, meet in a lobby, matchmake and play to the end", function()
        local a, b = new_player(), new_player()
        in_lobby(a)
        in_lobby(b)
        -- The lobby reads JSON text only: a binary message gets the game's "malformed" answer.
        assert.is_true(a.client:send_binary("\0\1\2"))
        wait(function()
            return a.game.notice == "error: malformed"
        end, "the lobby's answer to a binary message")
        local x, o = both_playing(a, b)
        play_to_a_win(x, o)
        assert.are.same({ wins = 1, losses = 0, draws = 0 }, x.game.record)
        assert.are.same({ wins = 0, losses = 1, draws = 0 }, o.game.record)
        assert.truthy(seen(o, function(event)
            return event.type == "error" and event.code == "match_ended"
        end))
        -- The profile the match saved is the player's, through the API too.
        local profile
        x.client:get_profile(function(err, answer)
            profile = answer and answer.profile
        end)
        wait(function()
            return profile ~= nil
        end, "the profile")
        assert.are.equal(1, profile.wins)
        a.client:leave()
        b.client:leave()
        wait(function()
            return a.client.state == "ended" and b.client.state == "ended"
        end, "both clients to end")
    end)

    it("a player whose socket drops mid-match resumes its game", function()
        local a, b = new_player(), new_player()
        in_lobby(a)
        in_lobby(b)
        local x, o = both_playing(a, b)
        play_to_a_win(x, o, function(index, mover)
            if index == 3 then
                -- x's connection vanishes (no close frame) with its move still to make.
                local socket = x.client.transport
                socket:abort()
                wait(function()
                    return seen(x, function(event)
                        return event.type == "greeted" and event.resumed == true
                    end) ~= nil
                end, "x to reconnect and resume")
                local resumed = seen(x, function(event)
                    return event.type == "greeted" and event.resumed == true
                end)
                assert.are.equal("match", resumed.runtime.qualifier)
                assert.are.equal("x", resumed.runtime.group)
                assert.truthy(seen(x, function(event)
                    return event.type == "disconnected" and event.reconnecting
                end))
                assert.are.equal("playing", x.game.phase)
            end
        end)
        a.client:leave()
        b.client:leave()
    end)

    it("a player on the long-poll fallback plays one on the socket", function()
        local a, b = new_player({ transport = "poll" }), new_player()
        in_lobby(a)
        in_lobby(b)
        local x, o = both_playing(a, b)
        play_to_a_win(x, o)
        a.client:leave()
        b.client:leave()
        -- Once, under the whole suite's load, the end took more than 20 s to arrive (cause not
        -- found yet): the wait covers a whole poll (25 s), and says where the client was.
        wait(function()
            return a.client.state == "ended"
        end, function()
            return "the polling client to end (state " .. tostring(a.client.state) .. ", posting "
                .. tostring(a.client.posting) .. ", waiting commands " .. #(a.client.poll_outbox or {})
                .. ", after " .. tostring(a.client.poll_after) .. ")"
        end, 40)
    end)
end)

describe("the player SDK's errors against a real platform", function()
    it("reports wrong credentials, a spent refresh token and an unknown stage", function()
        local who = new_player()
        local failure
        who.client:sign_in("01930000-0000-7000-8000-000000000000", "not-the-secret", function(err)
            failure = err
        end)
        wait(function()
            return failure ~= nil
        end, "the refusal")
        assert.are.equal(401, failure.status)
        assert.are.equal("error", who.events[#who.events].type)

        in_lobby(who)
        -- The refresh token is spent by a refresh; presenting the spent one again is refused
        -- and revokes the chain, so the SDK signs in again with the saved secret.
        local spent = who.client.session.refresh_token
        local refreshed
        who.client:refresh(function(err)
            refreshed = err or true
        end)
        wait(function()
            return refreshed ~= nil
        end, "a refresh")
        assert.is_true(refreshed)
        who.client.session.refresh_token = spent
        refreshed = nil
        who.client:refresh(function(err)
            refreshed = err or true
        end)
        wait(function()
            return refreshed ~= nil
        end, "a second refresh")
        assert.is_true(refreshed, "signed in again with the saved secret")
        assert.truthy(who.client:access_token())
        who.client:leave()

        local lost = new_player({ stage = "no-such-stage" })
        local connected
        lost.client:sign_up(function()
            lost.client:connect(function(err)
                connected = err or true
            end)
        end)
        wait(function()
            return connected ~= nil
        end, "the connect to fail")
        assert.are.equal(404, connected.status)
        assert.are.equal("not_found", connected.code)
    end)

    it("reports an unreachable platform without raising", function()
        local config = { engine = engine, tenant = "t", project = "p", stage = "s", url = "http://127.0.0.1:9" }
        local client = assert(rally.new(config))
        local failure
        client:sign_up(function(err)
            failure = err
        end)
        wait(function()
            return failure ~= nil
        end, "the failure")
        assert.are.equal("unreachable", failure.code)
    end)
end)
