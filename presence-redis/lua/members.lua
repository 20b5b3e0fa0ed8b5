-- members.lua: every entry of a topic, read in one atomic step.
-- KEYS[1]: the topic's e hash; KEYS[2]: its s zset (see lib.lua)
-- Returns flat triples: member\0connection, "joined_at:token:meta", last_seen_at.
local all = redis.call('HGETALL', KEYS[1])
local fields, found = {}, {}
for j = 1, #all, 2 do
  entries(all[j], all[j + 1], fields, found)
end
return triples(KEYS[2], fields, found)
