-- member.lua: the entries of one member of a topic, read in one atomic step.
-- KEYS[1]: the topic's e hash; KEYS[2]: its s zset (see lib.lua)
-- ARGV[1]: the member
-- Returns flat triples as members.lua does.
local value = redis.call('HGET', KEYS[1], ARGV[1])
local fields, found = {}, {}
if value then
  entries(ARGV[1], value, fields, found)
end
return triples(KEYS[2], fields, found)
