-- turnout's routing inside HAProxy (Lua 5.3, loaded once with lua-load: one shared state).
--
-- Converters, not actions: HAProxy builds a transaction object with a dozen Lua tables for
-- every action call, which cost more than all the routing below; a converter gets a string.
--
--   req.hdrs,lua.turnout_route(<service>)    the pool backend of a request, from its headers
--   str(-),lua.turnout_preview(<service>)    the backend the preview listener serves
--   <µs>,lua.turnout_observe(<backend>)      counts an answer's time into the backend's
--                                            histogram (returns the µs)
--   runtime API: turnout latency             prints the histograms
--
-- turnout/routers/haproxy/maps.py writes the configuration lines that use them.
--
-- The routing is the builtin router's contract (turnout/routers/table.py): match rules first,
-- in order, the first match wins; else the user key (a header, else a cookie) hashed with
-- MurmurHash3 (x86, 32 bits, seed 0) into 10,000 buckets, which the pools split in
-- consecutive ranges; without a user key a random bucket. The plan of each service comes from
-- the map named by the environment variable TURNOUT_MAP, in the format maps.py documents; it
-- is compiled again whenever the service's version entry changes, so a committed map swap
-- routes the very next request.

local BUCKETS = 10000
-- upper bounds of the latency buckets in microseconds (turnout.routers.base.LATENCY_BOUNDS);
-- one more bucket counts what is above the last
local BOUNDS_US = {
    1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 40000, 50000, 75000, 100000,
    150000, 200000, 300000, 400000, 500000, 750000, 1000000, 1500000, 2000000, 3000000,
    5000000, 10000000,
}
local SLOTS = #BOUNDS_US + 1

local map_path = os.getenv("TURNOUT_MAP")
if map_path == nil or map_path == "" then
    error("turnout.lua: set TURNOUT_MAP to the map file (setenv in the global section)")
end
local routes = Map.new(map_path, Map._str)

local char, find, sub, match, unpack = string.char, string.find, string.sub, string.match, string.unpack
local random = math.random
math.randomseed(os.time() + math.floor(os.clock() * 1000000))

-- MurmurHash3 x86 32-bit of the bytes of s, seed 0 (what Python's mmh3.hash(s, signed=False)
-- gives). Integers are 64 bits wide: a product keeps its low 32 bits right whatever lies
-- above them, so the high bits are cut off only before a right shift or rotation reads them.
-- Unrolled to four blocks per string.unpack: each Lua instruction and each call into C counts.
local function murmur3(s)
    local h, len = 0, #s
    local pos = 1
    local k1, k2, k3, k4
    while pos + 15 <= len do
        k1, k2, k3, k4, pos = unpack("<I4I4I4I4", s, pos)
        k1 = (k1 * 0xcc9e2d51) & 0xffffffff
        h = (h ~ ((k1 << 15 | k1 >> 17) * 0x1b873593)) & 0xffffffff
        h = (h << 13 | h >> 19) * 5 + 0xe6546b64
        k2 = (k2 * 0xcc9e2d51) & 0xffffffff
        h = (h ~ ((k2 << 15 | k2 >> 17) * 0x1b873593)) & 0xffffffff
        h = (h << 13 | h >> 19) * 5 + 0xe6546b64
        k3 = (k3 * 0xcc9e2d51) & 0xffffffff
        h = (h ~ ((k3 << 15 | k3 >> 17) * 0x1b873593)) & 0xffffffff
        h = (h << 13 | h >> 19) * 5 + 0xe6546b64
        k4 = (k4 * 0xcc9e2d51) & 0xffffffff
        h = (h ~ ((k4 << 15 | k4 >> 17) * 0x1b873593)) & 0xffffffff
        h = (h << 13 | h >> 19) * 5 + 0xe6546b64
    end
    while pos + 3 <= len do
        k1, pos = unpack("<I4", s, pos)
        k1 = (k1 * 0xcc9e2d51) & 0xffffffff
        h = (h ~ ((k1 << 15 | k1 >> 17) * 0x1b873593)) & 0xffffffff
        h = (h << 13 | h >> 19) * 5 + 0xe6546b64
    end
    h = h & 0xffffffff
    local left = len - pos + 1
    if left > 0 then
        k1 = unpack(left == 3 and "<I3" or left == 2 and "<I2" or "<I1", s, pos)
        k1 = (k1 * 0xcc9e2d51) & 0xffffffff
        h = h ~ (((k1 << 15 | k1 >> 17) * 0x1b873593) & 0xffffffff)
    end
    h = h ~ len
    h = ((h ~ h >> 16) * 0x85ebca6b) & 0xffffffff
    h = ((h ~ h >> 13) * 0xc2b2ae35) & 0xffffffff
    return h ~ h >> 16
end

-- The same hash as Lua source for one key length, straight: one string.unpack for all the
-- blocks and no loop. A 32-bit x is rotated left by r as (x * 0x100000001) >> (32 - r): x
-- twice side by side, whose low 32 bits after the shift are the rotation (a product then
-- keeps them right), two instructions where shifting both ways and or-ing takes three.
-- HAProxy runs a hook on every Lua instruction, so they weigh: a 36-byte key hashed this way
-- costs about 40% less than with murmur3 above (callgrind, in HAProxy).
local HASHED = 128  -- longer keys are hashed by murmur3 above

-- source lines that set `bucket` to the bucket of key s, `len` bytes long
local function hash_lines(len)
    if len > HASHED then return {("local bucket = murmur3(s) %% %d"):format(BUCKETS)} end
    local blocks, left = len // 4, len % 4
    local names, words, format = {}, {}, {"<"}
    for i = 1, blocks // 2 do  -- two blocks per 8-byte integer: fewer items for unpack
        names[i], format[i + 1] = "k" .. i, "I8"
        words[#words + 1] = "k" .. i
        words[#words + 1] = "(k" .. i .. " >> 32)"
    end
    if blocks % 2 == 1 then
        names[#names + 1], format[#format + 1] = "k0", "I4"
        words[#words + 1] = "k0"
    end
    if left > 0 then
        names[#names + 1], format[#format + 1] = "t", "I" .. left
    end
    local code = {"local h, k = 0"}
    if #names > 0 then
        code[#code + 1] = ("local %s = unpack(%q, s)"):format(table.concat(names, ", "),
            table.concat(format))
    end
    for _, word in ipairs(words) do
        code[#code + 1] = ("k = ((%s * 0xcc9e2d51) & 0xffffffff) * 0x100000001"):format(word)
        code[#code + 1] = "h = ((h ~ (k >> 17) * 0x1b873593) & 0xffffffff) * 0x100000001"
        code[#code + 1] = "h = (h >> 19) * 5 + 0xe6546b64"
    end
    code[#code + 1] = "h = h & 0xffffffff"
    if left > 0 then
        code[#code + 1] = "k = ((t * 0xcc9e2d51) & 0xffffffff) * 0x100000001"
        code[#code + 1] = "h = h ~ (((k >> 17) * 0x1b873593) & 0xffffffff)"
    end
    code[#code + 1] = ("h = h ~ %d"):format(len)
    code[#code + 1] = "h = ((h ~ h >> 16) * 0x85ebca6b) & 0xffffffff"
    code[#code + 1] = "h = ((h ~ h >> 13) * 0xc2b2ae35) & 0xffffffff"
    code[#code + 1] = ("local bucket = (h ~ h >> 16) %% %d"):format(BUCKETS)
    return code
end

-- a plan's routing of a user key `len` bytes long: its bucket, then the pool taking it;
-- compiled once per length (keys longer than HASHED share one function)
local function keyed(plan, len)
    local long = len > HASHED
    if long and plan.long ~= nil then return plan.long end
    local code = hash_lines(len)
    table.insert(code, 1, "local unpack, murmur3 = ...")
    table.insert(code, 2, "return function(s)")
    code[#code + 1] = plan.pick
    code[#code + 1] = "return nil"
    code[#code + 1] = "end"
    local route = assert(load(table.concat(code, "\n"), "=turnout key", "t", {}))(unpack, murmur3)
    if long then plan.long = route else plan.keyed[len] = route end
    return route
end

local function unhex(pair)
    return char(tonumber(pair, 16))
end

local function decode(text)
    return (text:gsub("%%(%x%x)", unhex))
end

-- the comma-separated items of an entry, each as (its first character, the rest decoded)
local function items(value)
    local found = {}
    if value == nil then return found end
    for item in value:gmatch("[^,]+") do
        found[#found + 1] = {item:sub(1, 1), decode(item:sub(2))}
    end
    return found
end

local function read_rule(prefix)
    local rule = {values = {}, users = {}}
    local chunks = 0
    for _, item in ipairs(items(routes:lookup(prefix))) do
        local kind, text = item[1], item[2]
        if kind == "b" then rule.backend = text
        elseif kind == "h" then rule.header = text
        elseif kind == "c" then rule.cookie = text
        elseif kind == "n" then chunks = tonumber(text) or 0 end
    end
    for j = 0, chunks - 1 do
        for _, item in ipairs(items(routes:lookup(prefix .. "/" .. j))) do
            if item[1] == "v" then rule.values[item[2]] = true
            elseif item[1] == "u" then rule.users[item[2]] = true end
        end
    end
    return rule
end

-- a service's routing as its map entries describe it
local function read(service)
    local found = {ends = {}, backends = {}, rules = {}}
    for _, item in ipairs(items(routes:lookup(service .. "/user"))) do
        if item[1] == "h" then found.key_header = item[2]
        elseif item[1] == "c" then found.key_cookie = item[2] end
    end
    local pools = routes:lookup(service .. "/pools")
    if pools ~= nil then
        for ends, backend in pools:gmatch("(%d+)=([^,]+)") do
            found.ends[#found.ends + 1] = tonumber(ends)
            found.backends[#found.backends + 1] = decode(backend)
        end
    end
    local preview = routes:lookup(service .. "/preview")
    found.preview = preview and decode(preview)
    found.cookies = found.key_cookie ~= nil
    for i = 0, (tonumber(routes:lookup(service .. "/rules")) or 0) - 1 do
        local rule = read_rule(service .. "/rule/" .. i)
        found.rules[#found.rules + 1] = rule
        found.cookies = found.cookies or rule.cookie ~= nil
    end
    return found
end

-- a Cookie header's cookies by name, the first of a name winning, values without
-- surrounding spaces and double quotes (turnout.routers.proxy.balancer.parse_cookies)
local function parse_cookies(value)
    local cookies = {}
    for part in value:gmatch("[^;]+") do
        local name, text = match(part, "^([^=]*)=(.*)$")
        if name ~= nil then
            name = match(name, "^%s*(.-)%s*$")
            if cookies[name] == nil then
                cookies[name] = match(match(text, "^%s*(.-)%s*$"), '^"*(.-)"*$')
            end
        end
    end
    return cookies
end

-- The routing of one plan is Lua source generated for it and compiled once: every request
-- then runs only the checks its plan has, with header names and backends as constants.
-- HAProxy counts every Lua instruction (to pre-empt long scripts), and calls into C cost
-- the most, so a header is found with as few of them as can be: HAProxy writes req.hdrs as
-- "<lowercase name>: <value>\r\n" lines; the builtin router keeps a header's last value.
local EXTRACT = [[
stop = find(block, %s, 1, true)
if stop ~= nil then
    again = find(block, %s, stop + 1, true)
    while again ~= nil do
        stop = again
        again = find(block, %s, stop + 1, true)
    end
    stop = stop + %d
elseif sub(block, 1, %d) == %s then
    stop = %d
end
if stop == nil then %s = nil
else
    again = find(block, "\r", stop, true)
    %s = sub(block, stop, (again or 0) - 1)
end]]

local function quote(text)
    return string.format("%q", text)
end

local function extract(name, into)
    local needle, first = quote("\n" .. name .. ": "), quote(name .. ": ")
    return EXTRACT:format(needle, needle, needle, #name + 3, #name + 2, first, #name + 3, into, into)
end

-- The same for a header that most requests lack (a match rule's): one call when "<name>: " is
-- nowhere in the block, one more than above when it is there. A line "\n<name>: " can only
-- start where "<name>: " is first found, or a character before.
local EXTRACT_RARE = [[
again = find(block, %s, 1, true)
if again == nil then %s = nil
else
    if again == 1 then stop = %d else stop = nil end
    again = find(block, %s, again - 1, true)
    while again ~= nil do
        stop = again + %d
        again = find(block, %s, again + 1, true)
    end
    if stop == nil then %s = nil
    else
        again = find(block, "\r", stop, true)
        %s = sub(block, stop, (again or 0) - 1)
    end
end]]

local function extract_rare(name, into)
    local needle, first = quote("\n" .. name .. ": "), quote(name .. ": ")
    return EXTRACT_RARE:format(first, into, #name + 3, needle, #name + 3, needle, into, into)
end

local function rule_lines(rule, set, emit)
    local backend = quote(rule.backend)
    if rule.header ~= nil then
        emit(extract_rare(rule.header, "value"))
        emit(("if value ~= nil and %s[value] then return %s end"):format(set(rule.values), backend))
    end
    if rule.cookie ~= nil then
        emit(("if cookies ~= nil then value = cookies[%s]"):format(quote(rule.cookie)))
        emit(("    if value ~= nil and %s[value] then return %s end end"):format(set(rule.values), backend))
    end
    if next(rule.users) ~= nil then
        emit(("if key ~= nil and %s[key] then return %s end"):format(set(rule.users), backend))
    end
end

local function generate(found, plan)
    local code, sets = {}, {}
    local function emit(line) code[#code + 1] = line end
    local function set(members)
        sets[#sets + 1] = members
        return "sets[" .. #sets .. "]"
    end
    emit("local find, sub, random, parse_cookies, sets, keyed, compile = ...")
    emit("return function(block)")
    emit("local key, value, cookies, stop, again")
    if found.key_header ~= nil then
        emit(extract(found.key_header, "key"))
        emit('if key == "" then key = nil end')
    end
    if found.cookies then
        emit(extract("cookie", "value"))
        emit("if value ~= nil then cookies = parse_cookies(value) end")
    end
    if found.key_cookie ~= nil then
        emit(("if key == nil and cookies ~= nil then key = cookies[%s]"):format(quote(found.key_cookie)))
        emit('    if key == "" then key = nil end end')
    end
    for _, rule in ipairs(found.rules) do rule_lines(rule, set, emit) end
    local pick = {}
    for i, ends in ipairs(found.ends) do
        pick[i] = ("if bucket < %d then return %s end"):format(ends, quote(found.backends[i]))
    end
    pick = table.concat(pick, "\n")
    if found.ends[1] ~= nil then
        emit(("if key == nil then local bucket = random(0, %d)"):format(BUCKETS - 1))
        emit(pick)
        emit("end")
        emit("return (keyed[#key] or compile(#key))(key)")
    else
        emit("return nil")
    end
    emit("end")
    local chunk = assert(load(table.concat(code, "\n"), "=turnout route", "t", {}))
    plan.pick = pick
    plan.route = chunk(find, sub, random, parse_cookies, sets, plan.keyed,
        function(len) return keyed(plan, len) end)
end

-- service -> {version =, route = function(block), pick =, keyed = {}, long =, preview =}
local plans = {}

-- the plan of a service, compiled again when its version entry changed; a swap committed
-- while reading the entries is seen by the second lookup of the version, and read in turn
local function plan_of(service, version)
    local plan
    plans[service] = nil
    for _ = 1, 3 do
        if version == nil then return nil end
        local found = read(service)
        plan = {version = version, keyed = {}, preview = found.preview}
        generate(found, plan)
        local now = routes:lookup(service)
        if now == version then
            plans[service] = plan
            return plan
        end
        version = now
    end
    return plan
end

local lookup = routes.lookup  -- the method, found once rather than on every request

-- HAProxy runs each request's Lua in a new Lua thread, whose stack starts with room for 35
-- values, and a call into C wants 20 free: the converter reaches the plan's route, and the
-- route its key's hashing, by tail calls (each in the frame of the one before), so that no
-- request pays for growing that stack (a reallocation: 3,000 of HAProxy's 60,000 instructions
-- per request, by callgrind).

core.register_converters("turnout_route", function(block, service)
    local plan = plans[service]
    if plan == nil or plan.version ~= lookup(routes, service) then
        plan = plan_of(service, lookup(routes, service))
        if plan == nil then return nil end
    end
    return plan.route(block)
end)

core.register_converters("turnout_preview", function(_, service)
    local version = routes:lookup(service)
    local plan = plans[service]
    if plan == nil or plan.version ~= version then plan = plan_of(service, version) end
    return plan and plan.preview
end)

local histograms = {}  -- backend name -> counts per latency bucket

-- an answer's time to its headers in µs (a string, as converters get their input, always
-- an integer's: `| 0` makes it one without calling tonumber), counted into the histogram of
-- the backend that sent it; a time without a start (the request was not routed by
-- turnout_route) would be the whole date, and is left out
core.register_converters("turnout_observe", function(spent, backend)
    spent = spent | 0
    if spent > 3600000000 then return nil end
    local counts = histograms[backend]
    if counts == nil then
        counts = {}
        for i = 1, SLOTS do counts[i] = 0 end
        histograms[backend] = counts
    end
    local slot = 1
    while slot < SLOTS and spent > BOUNDS_US[slot] do slot = slot + 1 end
    counts[slot] = counts[slot] + 1
    return spent
end)

core.register_cli({"turnout", "latency"}, "turnout latency : answers' latency histograms per pool backend",
    function(applet)
        local names = {}
        for name in pairs(histograms) do names[#names + 1] = name end
        table.sort(names)
        local lines = {"# turnout latency bounds_us " .. table.concat(BOUNDS_US, " ")}
        for _, name in ipairs(names) do
            lines[#lines + 1] = name .. " " .. table.concat(histograms[name], " ")
        end
        applet:send(table.concat(lines, "\n") .. "\n")
    end)
