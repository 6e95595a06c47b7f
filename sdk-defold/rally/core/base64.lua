-- rally/core/base64.lua: standard base64 (RFC 4648, with padding) in plain Lua 5.1 arithmetic,
-- for binary payloads inside JSON (the long-poll fallback and the runtime protocol).

local base64 = {}

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local VALUE = {}
for index = 1, 64 do
    VALUE[ALPHABET:byte(index)] = index - 1
end

function base64.encode(bytes)
    local out = {}
    for index = 1, #bytes, 3 do
        local a, b, c = bytes:byte(index, index + 2)
        local number = a * 65536 + (b or 0) * 256 + (c or 0)
        local d1 = math.floor(number / 262144)
        local d2 = math.floor(number / 4096) % 64
        local d3 = math.floor(number / 64) % 64
        local d4 = number % 64
        out[#out + 1] = ALPHABET:sub(d1 + 1, d1 + 1) .. ALPHABET:sub(d2 + 1, d2 + 1)
            .. (b and ALPHABET:sub(d3 + 1, d3 + 1) or "=")
            .. (c and ALPHABET:sub(d4 + 1, d4 + 1) or "=")
    end
    return table.concat(out)
end

-- The bytes of `text`, or nil and a reason when it is not base64.
function base64.decode(text)
    if type(text) ~= "string" or #text % 4 ~= 0 then
        return nil, "not base64: the length is not a multiple of 4"
    end
    local out = {}
    for index = 1, #text, 4 do
        local c1, c2, c3, c4 = text:byte(index, index + 3)
        local last = index + 3 == #text
        local v1, v2 = VALUE[c1], VALUE[c2]
        local v3 = VALUE[c3] or (last and c3 == 61 and c4 == 61 and 0) or nil
        local v4 = VALUE[c4] or (last and c4 == 61 and 0) or nil
        if not (v1 and v2 and v3 and v4) then
            return nil, "not base64: unexpected character near position " .. index
        end
        local number = v1 * 262144 + v2 * 4096 + v3 * 64 + v4
        local bytes = string.char(math.floor(number / 65536), math.floor(number / 256) % 256, number % 256)
        if last and c4 == 61 then
            bytes = bytes:sub(1, c3 == 61 and 1 or 2)
        end
        out[#out + 1] = bytes
    end
    return table.concat(out)
end

return base64
