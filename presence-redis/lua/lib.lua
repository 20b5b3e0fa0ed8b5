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

-- Events, one message per topic per call: records "<kind><flag>" followed
-- by member, connection, joined_at, last_seen_at and meta, each "<len>:<bytes>"
-- (joins and updates), or one removal message (see remove below).
local events = {}

-- Decimal lengths, each formatted once per call (Lua's number formatting
-- is the dearest part of a record).
local decimal = setmetatable({}, {
  __index = function(cache, n)
    local text = tostring(n)
    cache[n] = text
    return text
  end,
})

local function emit(t, kind, flag, member, connection, joined, seen, meta)
  local list = events[t]
  if not list then
    list = {}
    events[t] = list
  end
  list[#list + 1] = kind .. flag .. decimal[#member] .. ':' .. member .. decimal[#connection] .. ':'
    .. connection .. decimal[#joined] .. ':' .. joined .. decimal[#seen] .. ':' .. seen
    .. decimal[#meta] .. ':' .. meta
end

-- Publishes each topic's message; returns them by topic number.
local function publish(command)
  local messages = {}
  for t, list in pairs(events) do
    local _, _, _, _, v = group(t)
    messages[t] = table.concat(list)
    redis.call(command, v, messages[t])
  end
  return messages
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

-- The 1,000 elements of `list` from `from` on (`unpack` takes only so many
-- arguments): the list itself when it is that short.
local function piece_of(list, from)
  if from == 1 and #list <= 1000 then
    return list
  end
  return { unpack(list, from, math.min(from + 999, #list)) }
end

-- Removes `fields` from topic t (once per topic per call) and records
-- its departures as the topic's one event message, a removal message (see
-- wire.rs): "R", the kind byte, "A" (every member gone) or "S" (some), the
-- number of departures, then NUL-separated: per departure its field
-- (member\0connection), stored value and last_seen_at, and with "S" the
-- members left with nothing in the topic. Ids and stored values hold no
-- NUL, so the script builds the message with one table.concat: no per
-- departure parsing, formatting or sorting (the reader puts departures in
-- the contract's order and sets last_for_member).
-- `options` (all optional):
--   present  the fields are all present, without repeats (else repeats and
--            absent fields are skipped)
--   scores   the fields' last_seen_at, aligned with them (else read)
local function remove(t, fields, kind, options)
  options = options or {}
  local e, s, c, m = group(t)
  local unique = fields
  if not options.present then
    local seen_field = {}
    unique = {}
    for _, f in ipairs(fields) do
      if not seen_field[f] then
        seen_field[f] = true
        unique[#unique + 1] = f
      end
    end
  end
  if #unique == 0 then
    return
  end
  -- Every entry of the topic goes: its four keys are unlinked (freed off
  -- the server's main thread), every member is gone.
  local whole = options.present and #unique == redis.call('ZCARD', s)
  local flat, n = {}, 0
  local removed_of, order = {}, {}
  for from = 1, #unique, 1000 do
    local piece = piece_of(unique, from)
    local values = redis.call('HMGET', e, unpack(piece))
    local scores
    if options.scores then
      scores = { unpack(options.scores, from, math.min(from + 999, #unique)) }
    else
      scores = redis.call('ZMSCORE', s, unpack(piece))
    end
    local gone = {}
    for j, f in ipairs(piece) do
      local value = values[j]
      if value then
        local cut = string.find(f, '\0', 1, true)
        if cut then
          local k = #flat
          flat[k + 1], flat[k + 2], flat[k + 3] = f, value, scores[j] or '0'
          n = n + 1
        end
        if not whole then
          gone[#gone + 1] = f
          local member = cut and string.sub(f, 1, cut - 1) or f
          local removed = removed_of[member]
          if not removed then
            order[#order + 1] = member
            removed = 0
          end
          removed_of[member] = removed + 1
        end
      end
    end
    if #gone > 0 then
      redis.call('HDEL', e, unpack(gone))
      redis.call('ZREM', s, unpack(gone))
      redis.call('ZREM', c, unpack(gone))
    end
  end
  local scope = 'A'
  if whole then
    redis.call('UNLINK', e, s, c, m)
  else
    scope = 'S'
    -- Three commands for all the members, however many: read their
    -- counts, drop those left with nothing, write the others.
    local gone, kept = {}, {}
    for from = 1, #order, 1000 do
      local piece = piece_of(order, from)
      local counts = redis.call('HMGET', m, unpack(piece))
      for j, member in ipairs(piece) do
        local left = tonumber(counts[j] or 0) - removed_of[member]
        if left <= 0 then
          gone[#gone + 1] = member
          flat[#flat + 1] = member
        else
          kept[#kept + 1] = member
          kept[#kept + 1] = left
        end
      end
    end
    for from = 1, #gone, 1000 do
      redis.call('HDEL', m, unpack(gone, from, math.min(from + 999, #gone)))
    end
    for from = 1, #kept, 2000 do
      redis.call('HSET', m, unpack(kept, from, math.min(from + 1999, #kept)))
    end
  end
  if n > 0 then
    events[t] = { 'R' .. kind .. scope .. n .. '\0' .. table.concat(flat, '\0') }
  end
end

-- Publishes the events and appends a removal's answer to `out`: per topic
-- with departures, its number and its removal message.
local function publish_removals(command, out)
  for t, message in pairs(publish(command)) do
    out[#out + 1] = t
    out[#out + 1] = message
  end
  return out
end
