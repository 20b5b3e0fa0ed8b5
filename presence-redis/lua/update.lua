-- update.lua: replaces the meta of an existing entry and refreshes its
-- last_seen_at; creates nothing.
-- KEYS: the topic's four keys (see lib.lua).
-- ARGV: publish command, topic, member, connection, meta (JSON), now (ms)
-- Returns the entry's joined_at, or false when it is absent.
local command, topic, member, connection, meta, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local e, s = group(1)
local f = member .. '\0' .. connection
local old = redis.call('HGET', e, member)
local list = old and records(old)
local k = list and position(list, connection)
if not k then
  return false
end
local joined, token = parse(list[k + 1] or '')
list[k + 1] = joined .. ':' .. token .. ':' .. meta
redis.call('HSET', e, member, table.concat(list, '\0'))
local before_seen = redis.call('ZSCORE', s, f)
redis.call('ZADD', s, now, f)
if not before_seen or tonumber(now) < tonumber(before_seen) then
  lower_bound(1, topic, now)
end
emit(1, 'U', 0, member, connection, joined, now, meta)
publish(command)
return joined
