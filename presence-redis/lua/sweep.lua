-- sweep.lua: removes a topic's entries last seen before a time, at most
-- about `limit` per call so a mass expiry never holds the server long; a
-- member's expired connections always go in the same call.
-- KEYS: the topic's four keys (see lib.lua).
-- ARGV: publish command, topic, older_than (ms, exclusive), limit
-- Returns {more (0/1), then the removal answer (see publish_removals in
-- lib.lua)}: more is 1 when expired entries may remain. Taking the
-- departures out of their members' indexes is the caller's second step
-- (their tokens are in their records).
local command, topic, older, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local e, s, _, i = group(1)
local found = redis.call('ZRANGE', s, '-inf', '(' .. older, 'BYSCORE', 'LIMIT', 0, limit + 1, 'WITHSCORES')
local due, scores = {}, {}
for j = 1, #found, 2 do
  due[#due + 1] = found[j]
  scores[#scores + 1] = found[j + 1]
end
local more = 0
if #due > limit then
  more = 1
  due[#due] = nil
  scores[#scores] = nil
  -- The piece is full: add the other expired connections of its members
  -- (only members with more than one connection can have any).
  local chosen, members, listed = {}, {}, {}
  for _, f in ipairs(due) do
    chosen[f] = true
    local member = split(f)
    if not listed[member] then
      listed[member] = true
      members[#members + 1] = member
    end
  end
  local older_number = tonumber(older)
  for from = 1, #members, 1000 do
    local piece = piece_of(members, from)
    local values = redis.call('HMGET', e, unpack(piece))
    local siblings = {}
    for j, member in ipairs(piece) do
      local value = values[j]
      local cut = value and string.find(value, '\0', 1, true)
      if cut and string.find(value, '\0', cut + 1, true) then
        local list = records(value)
        for k = 1, #list, 2 do
          local f = member .. '\0' .. list[k]
          if not chosen[f] then
            siblings[#siblings + 1] = f
          end
        end
      end
    end
    for at = 1, #siblings, 1000 do
      local some = piece_of(siblings, at)
      local sibling_scores = redis.call('ZMSCORE', s, unpack(some))
      for j, f in ipairs(some) do
        if sibling_scores[j] and tonumber(sibling_scores[j]) < older_number then
          chosen[f] = true
          due[#due + 1] = f
          scores[#scores + 1] = sibling_scores[j]
        end
      end
    end
  end
end
remove(1, due, 'E', scores)
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
return publish_removals(command, { more })
