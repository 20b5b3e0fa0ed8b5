#!lua flags=no-writes,allow-cross-slot-keys
-- due.lua: the topics of some buckets that may hold entries last seen
-- before a time (their index score is a lower bound of their oldest entry).
-- KEYS[1]: the first bucket index (the i zset, see lib.lua); it routes the call
-- ARGV[1]: older_than (ms, exclusive); ARGV[2]: the most topics per bucket;
--   ARGV[3..]: the bucket indexes to read, the first one included. On a
--   cluster these are of buckets one node serves, read across slots; if the
--   node no longer serves one (a slot moved), the call fails and the
--   caller reads bucket by bucket.
-- Returns flat pairs: the bucket's position in ARGV[3..], a topic.
local out = {}
for k = 3, #ARGV do
  local topics = redis.call('ZRANGE', ARGV[k], '-inf', '(' .. ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
  for _, topic in ipairs(topics) do
    out[#out + 1] = k - 2
    out[#out + 1] = topic
  end
end
return out
