-- unindex.lua: removes (or re-points) members' index elements, each only
-- while it still carries the token it was read with, so an element a newer
-- join wrote is never lost.
-- KEYS: member indexes (w: zsets, see index.lua)
-- ARGV[1]: "1" when every change removes its element (pairs below), else
--   "0" (triples)
-- then per key: its number, n (at most 1,000), and n changes: the element
--   (connection\0topic), the expected token, and with "0" the new token
--   ("0": remove the element).
-- A key's changes cost two or three commands together: its tokens are
-- read at once (the whole index when the changes name most of it), and
-- an index left with nothing is deleted rather than emptied element by
-- element.
-- Returns how many elements changed.
local width = ARGV[1] == '1' and 2 or 3
local changed = 0
local a = 2
while a <= #ARGV do
  local key, n = KEYS[tonumber(ARGV[a])], tonumber(ARGV[a + 1])
  a = a + 2
  local size = redis.call('ZCARD', key)
  local scores = {}
  if 2 * n >= size then
    local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local score_of = {}
    for j = 1, #all, 2 do
      score_of[all[j]] = all[j + 1]
    end
    for j = 1, n do
      scores[j] = score_of[ARGV[a + (j - 1) * width]]
    end
  elseif size > 0 then
    local elements = {}
    for j = 1, n do
      elements[j] = ARGV[a + (j - 1) * width]
    end
    scores = redis.call('ZMSCORE', key, unpack(elements))
  end
  local gone, going = {}, {}
  for j = 1, n do
    local at = a + (j - 1) * width
    local score, expected = scores[j], ARGV[at + 1]
    -- Tokens are integers below 2^53: the score prints as the same digits.
    if score and (score == expected or tonumber(score) == tonumber(expected)) then
      if width == 2 or ARGV[at + 2] == '0' then
        if not going[ARGV[at]] then
          going[ARGV[at]] = true
          gone[#gone + 1] = ARGV[at]
        end
      else
        redis.call('ZADD', key, ARGV[at + 2], ARGV[at])
      end
      changed = changed + 1
    end
  end
  if #gone > 0 and #gone == size then
    redis.call('DEL', key)
  elseif #gone > 0 then
    redis.call('ZREM', key, unpack(gone))
  end
  a = a + n * width
end
return changed
