-- lib.lua: helpers every writing script starts with (prepended by the store).
--
-- A topic's keys come in groups of four, at KEYS[4*(t-1)+1 .. 4*t] for the
-- t-th topic of a call, all under the topic's bucket hash tag:
--   e  hash   (named h:topic) member -> its connections in the topic: NUL-separated pairs
--             of connection and "joined_at:token:meta" (a record); HLEN is
--             the number of members
--   s  zset   (named l:topic) member\0connection scored by last_seen_at (ms); ZCARD is the
--             number of connections
--   v         the topic's pub/sub channel
--   i  zset   (named n, per bucket) the bucket's topics scored by a lower bound of their oldest
--             last_seen_at (the index sweep_all reads)
-- Ids, meta and records hold no NUL. Timestamps and tokens travel as
-- decimal strings and are stored as given.

-- The topics' keys: KEYS, unless the script takes them from ARGV (see
-- join.lua, whose calls on a cluster span a node's slots).
local K = KEYS

local function group(t)
  local k = 4 * (t - 1)
  return K[k + 1], K[k + 2], K[k + 3], K[k + 4]
end

-- "joined_at:token:meta"; a record damaged behind the store's back reads
-- as joined 0, token 0, its whole text as meta (which the client reads as
-- {}).
local function parse(record)
  local joined, token, meta = string.match(record, '^(%-?%d+):(%d+):(.*)$')
  if not joined then
    return '0', '0', record
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

-- The position of `connection` in a records list (odd), or nil.
local function position(list, connection)
  for k = 1, #list, 2 do
    if list[k] == connection then
      return k
    end
  end
  return nil
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
    local _, _, v = group(t)
    messages[t] = table.concat(list)
    redis.call(command, v, messages[t])
  end
  return messages
end

-- The index of a topic whose entry was stamped `seen`: its score stays a
-- lower bound of the topic's oldest last_seen_at.
local function lower_bound(t, topic, seen)
  local _, _, _, i = group(t)
  redis.call('ZADD', i, 'LT', seen, topic)
end

-- After removals: an empty topic leaves the index.
local function drop_if_empty(t, topic)
  local _, s, _, i = group(t)
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

-- Removes `fields` (member\0connection) from topic t (once per topic per
-- call) and records its departures as the topic's one event message, a
-- removal message (see wire.rs): "R", the kind byte, "A" (every member
-- gone) or "S" (some), the number of departures, then NUL-separated: per
-- departure its field, record and last_seen_at, and with "S" the members
-- left with nothing. The departures come in no particular order (the
-- reader puts them in the contract's order and sets last_for_member).
-- Absent fields and repeats are skipped. `scores` (optional) are the
-- fields' last_seen_at, aligned with them (else read).
local function remove(t, fields, kind, scores)
  local e, s = group(t)
  -- Each field split once: its connection and score by position; the
  -- members in order of first appearance, each with the position of its
  -- first field (and of its others, when it has more than one).
  local members, first, others = {}, {}, {}
  local field_at, connection_at, score_at = {}, {}, {}
  local repeated = not scores and {}
  local n = 0
  for j, f in ipairs(fields) do
    if not (repeated and repeated[f]) then
      if repeated then
        repeated[f] = true
      end
      local member, connection = split(f)
      n = n + 1
      field_at[n], connection_at[n] = f, connection
      if scores then
        score_at[n] = scores[j]
      end
      if not first[member] then
        first[member] = n
        members[#members + 1] = member
      else
        local more = others[member]
        if not more then
          more = {}
          others[member] = more
        end
        more[#more + 1] = n
      end
    end
  end
  if n == 0 then
    return
  end
  if not scores then
    for from = 1, n, 1000 do
      local piece = piece_of(field_at, from)
      local found = redis.call('ZMSCORE', s, unpack(piece))
      for k = 1, #piece do
        score_at[from + k - 1] = found[k]
      end
    end
  end
  local flat, departures = {}, 0
  local gone, kept = {}, {}
  local members_left = redis.call('HLEN', e)
  for from = 1, #members, 1000 do
    local piece = piece_of(members, from)
    local values = redis.call('HMGET', e, unpack(piece))
    for k, member in ipairs(piece) do
      local value = values[k]
      if value then
        local p = first[member]
        local cut = string.find(value, '\0', 1, true)
        if cut and not others[member] and not string.find(value, '\0', cut + 1, true)
          and string.sub(value, 1, cut - 1) == connection_at[p] then
          -- The member's only connection goes (no parsing): the member and
          -- its value make "member\0connection\0record".
          local at = #flat
          flat[at + 1], flat[at + 2], flat[at + 3] = member, value, score_at[p] or '0'
          departures = departures + 1
          gone[#gone + 1] = member
        else
          local wanted = { [connection_at[p]] = p }
          for _, q in ipairs(others[member] or {}) do
            wanted[connection_at[q]] = q
          end
          local list = records(value)
          local left = {}
          for r = 1, #list, 2 do
            local q = wanted[list[r]]
            if q then
              wanted[list[r]] = nil
              local at = #flat
              flat[at + 1], flat[at + 2], flat[at + 3] = field_at[q], list[r + 1] or '', score_at[q] or '0'
              departures = departures + 1
            else
              left[#left + 1] = list[r]
              left[#left + 1] = list[r + 1] or ''
            end
          end
          if #left == 0 then
            gone[#gone + 1] = member
          elseif #left < #list then
            kept[#kept + 1] = member
            kept[#kept + 1] = table.concat(left, '\0')
          end
        end
      end
    end
  end
  local scope = 'S'
  if #gone == members_left then
    -- Every member goes: the topic's keys are unlinked (freed off the
    -- server's main thread).
    scope = 'A'
    redis.call('UNLINK', e, s)
  else
    for from = 1, n, 1000 do
      redis.call('ZREM', s, unpack(piece_of(field_at, from)))
    end
    for from = 1, #gone, 1000 do
      redis.call('HDEL', e, unpack(piece_of(gone, from)))
    end
    for from = 1, #kept, 2000 do
      redis.call('HSET', e, unpack(kept, from, math.min(from + 1999, #kept)))
    end
    for _, member in ipairs(gone) do
      flat[#flat + 1] = member
    end
  end
  if departures > 0 then
    events[t] = { 'R' .. kind .. scope .. departures .. '\0' .. table.concat(flat, '\0') }
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
