-- Token refresh against a real platform whose access tokens live 10 s (the harness,
-- platform/tests/it/defold.rs, starts it so): the SDK renews them before they expire, and a
-- connection made after the first token has expired still gets in.

local engine = require("luahttp_engine")
local rally = require("rally.player")

local TTL_SECONDS = 10

describe("a player on short-lived tokens", function()
    it("refreshes before expiry and reconnects on the renewed token", function()
        local client = assert(rally.new({
            engine = engine,
            url = assert(os.getenv("RALLY_TEST_URL")),
            tenant = "studio",
            project = "game",
            stage = "default",
            refresh_margin = 7, -- a refresh every 3 s
            save_key = "tokens-" .. os.time(),
        }))
        local sessions, errors, greetings = 0, {}, {}
        client:on_event(function(event)
            if event.type == "session" then
                sessions = sessions + 1
            elseif event.type == "error" then
                errors[#errors + 1] = event.code
            elseif event.type == "greeted" then
                greetings[#greetings + 1] = event
            end
        end)
        client:sign_up(function(err)
            assert(err == nil, tostring(err))
            client:connect()
        end)
        assert.is_true(engine.run_until(function()
            return #greetings == 1
        end, 10))
        local first_token = client:access_token()
        -- Past the first token's life.
        engine.run_until(function()
            return false
        end, TTL_SECONDS + 1)
        assert.is_true(sessions >= 4, "sign-in plus at least three refreshes, got " .. sessions)
        assert.are_not.equal(first_token, client:access_token())
        client.transport:abort()
        assert.is_true(engine.run_until(function()
            return #greetings == 2
        end, 10), "reconnected")
        assert.is_true(greetings[2].resumed)
        local profile
        client:get_profile(function(err, answer)
            profile = err or answer
        end)
        assert.is_true(engine.run_until(function()
            return profile ~= nil
        end, 10))
        assert.are.same({}, errors)
        assert.truthy(profile.profile)
        client:leave()
    end)
end)
