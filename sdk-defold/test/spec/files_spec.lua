-- The SDK's files as a Defold project sees them: plain Lua 5.1 syntax (LuaJIT accepts more,
-- such as goto, that Defold's Lua 5.1 targets do not), Defold APIs only in the Defold adapter,
-- and base64 that agrees with the standard.

local base64 = require("rally.core.base64")

local function lua_files(directory)
    local files = {}
    local listing = io.popen('find "' .. directory .. '" -name "*.lua" -o -name "*.script" -o -name "*.gui_script"')
    for path in listing:lines() do
        files[#files + 1] = path
    end
    listing:close()
    table.sort(files)
    return files
end

local SDK = lua_files("rally")
local EXAMPLE = lua_files("../examples/defold-tictactoe")

describe("the SDK's files", function()
    it("are found", function()
        assert.is_true(#SDK >= 6)
        assert.is_true(#EXAMPLE >= 6)
    end)

    it("parse as plain Lua 5.1 (luac5.1 -p)", function()
        local all = {}
        local lists = { SDK, EXAMPLE, lua_files("standalone"), lua_files("examples"), lua_files("bench"), lua_files("test") }
        for _, list in ipairs(lists) do
            for _, path in ipairs(list) do
                all[#all + 1] = '"' .. path .. '"'
            end
        end
        local check = io.popen("luac5.1 -p " .. table.concat(all, " ") .. " 2>&1; echo status=$?")
        local output = check:read("*a")
        check:close()
        assert.are.equal("status=0\n", output)
    end)

    it("touch Defold APIs only in rally/engine/defold.lua, and the example only in its scripts", function()
        local defold_api = { "http%.request", "websocket%.", "timer%.", "json%.", "sys%.", "msg%.", "gui%.", "go%." }
        local offenders = {}
        local function scan(path)
            local file = assert(io.open(path))
            local number = 0
            for line in file:lines() do
                number = number + 1
                local code = line:gsub("%-%-.*$", "")
                for _, pattern in ipairs(defold_api) do
                    -- `runtime.json.encode` and `self.json` are fields, not the engine's module.
                    if code:find("%f[%w_.]" .. pattern) then
                        offenders[#offenders + 1] = path .. ":" .. number .. ": " .. line
                    end
                end
            end
            file:close()
        end
        for _, path in ipairs(SDK) do
            if path ~= "rally/engine/defold.lua" then
                scan(path)
            end
        end
        for _, path in ipairs(EXAMPLE) do
            if path:match("%.lua$") and not path:find("/standalone/", 1, true) then
                scan(path)
            end
        end
        assert.are.same({}, offenders)
    end)
end)

describe("the library archive", function()
    it("holds game.project, the README and rally/ under one top directory, the same each time", function()
        local out = os.tmpname()
        os.remove(out)
        local function build_and_list()
            local pipe = io.popen("./package " .. out .. " >/dev/null && python3 -c \"import sys, zipfile, hashlib; "
                .. "p = sys.argv[1] + '/rally-defold-sdk.zip'; print(hashlib.sha256(open(p, 'rb').read()).hexdigest()); "
                .. "[print(n) for n in zipfile.ZipFile(p).namelist()]\" " .. out)
            local lines = {}
            for line in pipe:lines() do
                lines[#lines + 1] = line
            end
            pipe:close()
            return lines
        end
        local first = build_and_list()
        local second = build_and_list()
        os.execute("rm -rf " .. out)
        assert.are.same(first, second)
        local names = {}
        for index = 2, #first do
            names[first[index]] = true
        end
        for _, name in ipairs({ "game.project", "README.md", "rally/player.lua", "rally/server.lua",
            "rally/engine/defold.lua", "rally/core/http.lua" }) do
            assert.is_true(names["rally-defold-sdk/" .. name], name)
        end
        assert.is_nil(names["rally-defold-sdk/standalone/luahttp_engine.lua"])
        local project = assert(io.open("game.project")):read("*a")
        assert.truthy(project:find("include_dirs = rally", 1, true))
    end)
end)

describe("the README", function()
    -- The first ```lua block after `heading`.
    local function example(heading)
        local file = assert(io.open("README.md"))
        local text = file:read("*a")
        file:close()
        local from = assert(text:find(heading, 1, true), heading)
        local code = text:match("```lua\n(.-)```", from)
        return assert(code, "no Lua block after " .. heading)
    end

    it("connects a player in at most 10 lines, with code that runs", function()
        local code = example("## A player, connected")
        local _, lines = code:gsub("\n", "")
        assert.is_true(lines <= 10, lines .. " lines")
        -- Run it, with the scripted engine standing in for Defold's.
        local scripted = require("scripted_engine")
        local engine = scripted.new()
        engine.settings = { ["rally.url"] = "http://127.0.0.1:7350", ["rally.tenant"] = "studio",
            ["rally.project"] = "tictactoe", ["rally.stage"] = "default" }
        package.loaded["rally.engine.defold"] = engine
        local chunk = assert(loadstring(code))
        local environment = setmetatable({}, { __index = _G })
        setfenv(chunk, environment)
        chunk()
        local self = {}
        environment.init(self)
        engine.request("/api/v1/users"):answer(201, { user_id = "u", secret = "s" })
        engine.request("/api/v1/users/sign-in"):answer(200, scripted.tokens("readme"))
        engine.request("/stages/default/clients"):answer(201, { client_id = "c", socket_path = "/api/v1/clients/c/ws" })
        assert.are.equal("ws://127.0.0.1:7350/api/v1/clients/c/ws", engine.socket().url)
        package.loaded["rally.engine.defold"] = nil
    end)

    it("shows a server in a few lines that parse", function()
        local code = example("## A server, running")
        assert.truthy(loadstring(code))
    end)
end)

describe("base64", function()
    it("round-trips every byte and agrees with RFC 4648's vectors", function()
        local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
        for plain, encoded in pairs(vectors) do
            assert.are.equal(encoded, base64.encode(plain))
            assert.are.equal(plain, base64.decode(encoded))
        end
        local bytes = {}
        for byte = 0, 255 do
            bytes[#bytes + 1] = string.char(byte)
        end
        local all = table.concat(bytes)
        assert.are.equal(all, base64.decode(base64.encode(all)))
    end)

    it("refuses what is not base64", function()
        for _, bad in ipairs({ "abc", "ab!d", "=abc", "a=bc", 42 }) do
            local bytes, why = base64.decode(bad)
            assert.is_nil(bytes)
            assert.truthy(why)
        end
    end)
end)
