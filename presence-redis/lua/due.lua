#!lua flags=no-writes
-- due.lua: the topics of some buckets that may hold entries last seen
-- before a time (their index score is a lower bound of their oldest entry).
-- KEYS: bucket indexes (i zsets, see lib.lua)
-- ARGV[1]: older_than (ms, exclusive); ARGV[2]: the most topics per bucket
-- Returns flat pairs: the bucket's position in KEYS, a topic.
local out = {}
for k, key in ipairs(KEYS) do
  local topics = redis.call('ZRANGE', key, '-inf', '(' .. ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
  for _, topic in ipairs(topics) do
    out[#out + 1] = k
    out[#out + 1] = topic
  end
end
return out
