-- join.lua: joins (or re-joins) entries, in the order given, atomically.
-- ARGV[1]: the publish command (PUBLISH, or SPUBLISH on a cluster)
-- ARGV[2]: n, the number of topics; ARGV[3 .. 2+n]: their names
-- ARGV[3+n]: where the topics' keys are (four per topic, see lib.lua):
--   "K" in KEYS; "A" in ARGV, right after this one. On a cluster a call
--   carries the joins of every bucket one node serves: only the first
--   topic's first key is declared (it routes the call; declared keys must
--   share a slot) and the script reads every topic's key before it writes
--   anything, so a call sent to a node that no longer serves one of them
--   (a stale slot map) fails whole, having changed nothing
-- then eight per join: topic number t, member, connection, meta (JSON),
--   now (ms), token (for a new entry), max_members (-1: no limit), and u:
--   0, or the number of the member's index among the keys after the
--   topics' (KEYS[4n + u]); the script then writes it too (one server:
--   no second step)
-- Returns per join {outcome, joined_at, first_for_member (0/1), token}, the
-- outcome being "joined", "rejoined" or "full"; the token is the entry's.
local command, n = ARGV[1], tonumber(ARGV[2])
local out = {}
local a = 4 + n
if ARGV[3 + n] == 'A' then
  K = {}
  for j = 1, 4 * n do
    K[j] = ARGV[a + j - 1]
  end
  a = a + 4 * n
  for t = 1, n do
    redis.call('EXISTS', K[4 * (t - 1) + 1])
  end
end
while a <= #ARGV do
  local t, member, connection, meta, now, token, max, u =
    tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6]),
    tonumber(ARGV[a + 7])
  a = a + 8
  local topic = ARGV[2 + t]
  local e, s = group(t)
  local f = member .. '\0' .. connection
  local record = now .. ':' .. token .. ':' .. meta
  -- The member's value, or false for a new member (whose value the
  -- unlimited join has already written).
  local old
  if max >= 0 then
    old = redis.call('HGET', e, member)
  elseif redis.call('HSETNX', e, member, connection .. '\0' .. record) == 1 then
    old = false
  else
    old = redis.call('HGET', e, member)
  end
  local list = old and records(old)
  local k = list and position(list, connection)
  if k then
    -- A re-join: joined_at and token kept, meta replaced.
    local joined, kept, old_meta = parse(list[k + 1] or '')
    if old_meta ~= meta then
      list[k + 1] = joined .. ':' .. kept .. ':' .. meta
      redis.call('HSET', e, member, table.concat(list, '\0'))
      emit(t, 'U', 0, member, connection, joined, now, meta)
    end
    local before_seen = redis.call('ZSCORE', s, f)
    redis.call('ZADD', s, now, f)
    if not before_seen or tonumber(now) < tonumber(before_seen) then
      lower_bound(t, topic, now)
    end
    if u > 0 then
      redis.call('ZADD', KEYS[4 * n + u], kept, connection .. '\0' .. topic)
    end
    out[#out + 1] = { 'rejoined', joined, 0, kept }
  elseif max >= 0 and not old and redis.call('HLEN', e) >= max then
    out[#out + 1] = { 'full', '0', 0, '0' }
  else
    local first = 1
    if old then
      -- Another connection of a present member.
      first = 0
      redis.call('HSET', e, member, old .. '\0' .. connection .. '\0' .. record)
    elseif max >= 0 then
      redis.call('HSET', e, member, connection .. '\0' .. record)
    end
    redis.call('ZADD', s, now, f)
    -- The topic's first entry puts it in the bucket index. (Later entries
    -- are no older, unless the clock went backwards: see sweep.lua.)
    if redis.call('ZCARD', s) == 1 then
      lower_bound(t, topic, now)
    end
    if u > 0 then
      redis.call('ZADD', KEYS[4 * n + u], token, connection .. '\0' .. topic)
    end
    emit(t, 'J', first, member, connection, now, now, meta)
    out[#out + 1] = { 'joined', now, first, token }
  end
end
publish(command)
return out
