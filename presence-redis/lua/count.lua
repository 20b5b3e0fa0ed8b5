#!lua flags=no-writes
-- count.lua: a topic's number of members and of connections, in O(1).
-- KEYS[1]: the topic's e hash; KEYS[2]: its s zset (see lib.lua)
-- Returns {members, connections}.
return { redis.call('HLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]) }
