-- sweep.lua: removes a topic's entries last seen before a time, at most
-- about `limit` per call so a mass expiry never holds the server long; a
-- member's expired connections always go in the same call.
-- KEYS: the topic's six keys (see lib.lua).
-- ARGV: publish command, topic, older_than (ms, exclusive), limit, and the
--   key prefix when the script also updates the member indexes (one
--   server), else the empty string
-- Returns {more (0/1), rows...}: more is 1 when expired entries may remain;
-- the rows are the departures (see remove in lib.lua).
local command, topic, older, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local index_prefix = ARGV[5] ~= '' and ARGV[5] or nil
local _, s, c, m, _, i = group(1)
local due = redis.call('ZRANGE', s, '-inf', '(' .. older, 'BYSCORE', 'LIMIT', 0, limit + 1)
local more = 0
if #due > limit then
  more = 1
  table.remove(due)
  -- The piece is full: add the other expired connections of its members
  -- (only members with connections outside the piece can have any).
  local chosen, chosen_of, members = {}, {}, {}
  for _, f in ipairs(due) do
    chosen[f] = true
    local member = split(f)
    if not chosen_of[member] then
      chosen_of[member] = 0
      members[#members + 1] = member
    end
    chosen_of[member] = chosen_of[member] + 1
  end
  local counts = {}
  for from = 1, #members, 1000 do
    local piece = {}
    for j = from, math.min(from + 999, #members) do
      piece[#piece + 1] = members[j]
    end
    local found = redis.call('HMGET', m, unpack(piece))
    for j, member in ipairs(piece) do
      counts[member] = tonumber(found[j] or 0)
    end
  end
  local older_number = tonumber(older)
  for _, member in ipairs(members) do
    if counts[member] > chosen_of[member] then
      local siblings = redis.call('ZRANGE', c, '[' .. member .. '\0', '(' .. member .. '\1', 'BYLEX')
      local scores = redis.call('ZMSCORE', s, unpack(siblings))
      for j, f in ipairs(siblings) do
        if not chosen[f] and scores[j] and tonumber(scores[j]) < older_number then
          chosen[f] = true
          due[#due + 1] = f
        end
      end
    end
  end
end
local rows = remove(1, due, 'E', topic, index_prefix)
-- The index keeps the oldest entry left. It stays a lower bound of the
-- topic's entries as long as the clock does not go backwards; if it does,
-- entries stamped before the topic's index score are swept once
-- older_than passes that score (late by at most the clock's step back).
local oldest = redis.call('ZRANGE', s, 0, 0, 'WITHSCORES')
if oldest[2] then
  redis.call('ZADD', i, oldest[2], topic)
else
  redis.call('ZREM', i, topic)
end
publish(command)
table.insert(rows, 1, more)
return rows
