-- lib.lua: helpers every writing script starts with (prepended by the store).
--
-- A topic's keys come in groups of six, at KEYS[6*(t-1)+1 .. 6*t] for the
-- t-th topic of a call, all under the topic's bucket hash tag:
--   e  hash   member\0connection -> "joined_at:token:meta"
--   s  zset   member\0connection scored by last_seen_at (ms)
--   c  zset   member\0connection, all scored 0: byte order (ZRANGE BYLEX)
--   m  hash   member -> its number of connections in the topic
--   v         the topic's pub/sub channel
--   i  zset   the bucket's topics scored by a lower bound of their oldest
--             last_seen_at (the index sweep_all reads)
-- Timestamps and tokens travel as decimal strings and are stored as given.

local function group(t)
  local k = 6 * (t - 1)
  return KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
end

-- "joined_at:token:meta"; a value damaged behind the store's back reads as
-- joined 0, token 0, its whole text as meta (which the client reads as {}).
local function parse(value)
  local joined, token, meta = string.match(value, '^(%-?%d+):(%d+):(.*)$')
  if not joined then
    return '0', '0', value
  end
  return joined, token, meta
end

local function split(field)
  local cut = string.find(field, '\0', 1, true)
  if not cut then
    return field, ''
  end
  return string.sub(field, 1, cut - 1), string.sub(field, cut + 1)
end

-- Byte order, whatever LC_COLLATE the server runs with (Lua's < uses strcoll).
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- Events, one message per topic per call: records "<kind><flag>" followed
-- by member, connection, joined_at, last_seen_at and meta, each "<len>:<bytes>".
local events = {}

local function emit(t, kind, flag, member, connection, joined, seen, meta)
  local list = events[t]
  if not list then
    list = {}
    events[t] = list
  end
  list[#list + 1] = kind .. flag .. #member .. ':' .. member .. #connection .. ':' .. connection
    .. #joined .. ':' .. joined .. #seen .. ':' .. seen .. #meta .. ':' .. meta
end

local function publish(command)
  for t, list in pairs(events) do
    local _, _, _, _, v = group(t)
    redis.call(command, v, table.concat(list))
  end
end

-- The index of a topic whose entry was stamped `seen`: its score stays a
-- lower bound of the topic's oldest last_seen_at.
local function lower_bound(t, topic, seen)
  local _, _, _, _, _, i = group(t)
  redis.call('ZADD', i, 'LT', seen, topic)
end

-- After removals: an empty topic leaves the index.
local function drop_if_empty(t, topic)
  local _, s, _, _, _, i = group(t)
  if redis.call('ZCARD', s) == 0 then
    redis.call('ZREM', i, topic)
  end
end

-- The bucket of an id (see keys.rs: the same hash).
local function bucket(id)
  local h = 0
  for i = 1, #id do
    h = (h * 31 + string.byte(id, i)) % 1000003
  end
  return h % 1024
end

-- Removes `fields` (each at most once, absent ones skipped) from topic t and
-- returns the departures in byte order of member, then connection, as flat
-- rows {t, member, connection, joined_at, last_seen_at, meta, token, last},
-- `last` being 1 on a member's last departure when it has nothing left.
-- Emits one `kind` record per departure, in the same order. With
-- `index_prefix` (one server only: the member indexes are keys of the same
-- server), also takes the departures out of their members' indexes, in the
-- same atomic step.
local function remove(t, fields, kind, topic, index_prefix)
  local e, s, c, m = group(t)
  local rows, seen_field = {}, {}
  local unique = {}
  for _, f in ipairs(fields) do
    if not seen_field[f] then
      seen_field[f] = true
      unique[#unique + 1] = f
    end
  end
  if #unique == 0 then
    return rows
  end
  local present = {}
  for from = 1, #unique, 1000 do
    local piece = {}
    for j = from, math.min(from + 999, #unique) do
      piece[#piece + 1] = unique[j]
    end
    local values = redis.call('HMGET', e, unpack(piece))
    local scores = redis.call('ZMSCORE', s, unpack(piece))
    local gone = {}
    for j, f in ipairs(piece) do
      if values[j] then
        present[#present + 1] = { f, values[j], scores[j] or '0' }
        gone[#gone + 1] = f
      end
    end
    if #gone > 0 then
      redis.call('HDEL', e, unpack(gone))
      redis.call('ZREM', s, unpack(gone))
      redis.call('ZREM', c, unpack(gone))
    end
  end
  table.sort(present, function(a, b) return before(a[1], b[1]) end)
  -- Each member's count once, and whether it is gone.
  local removed_of, order = {}, {}
  for _, p in ipairs(present) do
    local member = split(p[1])
    if not removed_of[member] then
      removed_of[member] = 0
      order[#order + 1] = member
    end
    removed_of[member] = removed_of[member] + 1
  end
  -- Three commands for all the members, however many: read their counts,
  -- drop those left with nothing, write the others.
  local left_of, gone, kept = {}, {}, {}
  for from = 1, #order, 1000 do
    local piece = {}
    for j = from, math.min(from + 999, #order) do
      piece[#piece + 1] = order[j]
    end
    local counts = redis.call('HMGET', m, unpack(piece))
    for j, member in ipairs(piece) do
      local n = tonumber(counts[j] or 0) - removed_of[member]
      left_of[member] = n
      if n <= 0 then
        gone[#gone + 1] = member
      else
        kept[#kept + 1] = member
        kept[#kept + 1] = n
      end
    end
  end
  for from = 1, #gone, 1000 do
    redis.call('HDEL', m, unpack(gone, from, math.min(from + 999, #gone)))
  end
  for from = 1, #kept, 2000 do
    redis.call('HSET', m, unpack(kept, from, math.min(from + 1999, #kept)))
  end
  for j, p in ipairs(present) do
    local member, connection = split(p[1])
    local next_member = present[j + 1] and split(present[j + 1][1])
    local last = (next_member ~= member and left_of[member] <= 0) and 1 or 0
    local joined, token, meta = parse(p[2])
    if index_prefix then
      redis.call('ZREM', index_prefix .. '{' .. bucket(member) .. '}u:' .. member, connection .. '\0' .. topic)
    end
    emit(t, kind, last, member, connection, joined, p[3], meta)
    local row = { t, member, connection, joined, p[3], meta, token, last }
    for _, x in ipairs(row) do
      rows[#rows + 1] = x
    end
  end
  return rows
end
