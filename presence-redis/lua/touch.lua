-- touch.lua: refreshes last_seen_at of present entries (heartbeats); no events.
-- KEYS: six per topic (see lib.lua).
-- ARGV[1]: now (ms); ARGV[2]: n topics; ARGV[3 .. 2+n]: their names;
--   then pairs: topic number t, member\0connection
-- Returns per pair 1 (was present, refreshed) or 0 (absent, untouched).
-- Two commands per topic, whatever its number of keys: which are present
-- (ZMSCORE), then all of those refreshed at once (ZADD XX). The bucket
-- index is left as it is: the topic's oldest entry only got younger
-- (unless the clock went backwards: see sweep.lua).
local now, n = ARGV[1], tonumber(ARGV[2])
local by_topic, order = {}, {}
local out = {}
for a = 3 + n, #ARGV, 2 do
  local t = tonumber(ARGV[a])
  local list = by_topic[t]
  if not list then
    list = {}
    by_topic[t] = list
    order[#order + 1] = t
  end
  list[#list + 1] = { ARGV[a + 1], #out + 1 }
  out[#out + 1] = 0
end
for _, t in ipairs(order) do
  local _, s = group(t)
  local list = by_topic[t]
  for from = 1, #list, 1000 do
    local fields = {}
    for j = from, math.min(from + 999, #list) do
      fields[#fields + 1] = list[j][1]
    end
    local scores = redis.call('ZMSCORE', s, unpack(fields))
    local args = {}
    for j, f in ipairs(fields) do
      if scores[j] then
        args[#args + 1] = now
        args[#args + 1] = f
        out[list[from + j - 1][2]] = 1
      end
    end
    if #args > 0 then
      redis.call('ZADD', s, 'XX', unpack(args))
    end
  end
end
return out
