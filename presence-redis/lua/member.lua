#!lua flags=no-writes
-- member.lua: the entries of one member of a topic, read in one atomic step.
-- KEYS[1]: the topic's e hash; KEYS[2]: its s zset; KEYS[3]: its c zset (see lib.lua)
-- ARGV[1]: the member
-- Returns flat triples as members.lua does.
local fields = redis.call('ZRANGE', KEYS[3], '[' .. ARGV[1] .. '\0', '(' .. ARGV[1] .. '\1', 'BYLEX')
local out = {}
if #fields == 0 then
  return out
end
local values = redis.call('HMGET', KEYS[1], unpack(fields))
local scores = redis.call('ZMSCORE', KEYS[2], unpack(fields))
for j, f in ipairs(fields) do
  if values[j] then
    out[#out + 1] = f
    out[#out + 1] = values[j]
    out[#out + 1] = scores[j] or '0'
  end
end
return out
