-- index.lua: records entries in their members' indexes (a join's second step).
-- KEYS: member indexes (zsets named w:member: connection\0topic scored by the
-- entry's token)
-- ARGV: triples: key number, connection\0topic, token
for a = 1, #ARGV, 3 do
  redis.call('ZADD', KEYS[tonumber(ARGV[a])], ARGV[a + 2], ARGV[a + 1])
end
return #ARGV / 3
