#!lua flags=no-writes
-- members.lua: every entry of a topic, read in one atomic step.
-- KEYS[1]: the topic's e hash; KEYS[2]: its s zset (see lib.lua)
-- Returns flat triples: member\0connection, "joined_at:token:meta", last_seen_at.
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for from = 1, #all, 2000 do
  local fields = {}
  for j = from, math.min(from + 1999, #all), 2 do
    fields[#fields + 1] = all[j]
  end
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(fields))
  for j, f in ipairs(fields) do
    out[#out + 1] = f
    out[#out + 1] = all[from + 2 * (j - 1) + 1]
    out[#out + 1] = scores[j] or '0'
  end
end
return out
