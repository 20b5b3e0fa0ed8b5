-- unindex.lua: removes (or re-points) members' index elements, each only
-- while it still carries the token it was read with, so an element a newer
-- join wrote is never lost.
-- KEYS: member indexes (u zsets, see index.lua)
-- ARGV: quadruples: key number, connection\0topic, expected token, new token
--   ("0": remove the element)
-- Returns how many elements changed.
local changed = 0
for a = 1, #ARGV, 4 do
  local key, element = KEYS[tonumber(ARGV[a])], ARGV[a + 1]
  local score = redis.call('ZSCORE', key, element)
  if score and tonumber(score) == tonumber(ARGV[a + 2]) then
    if ARGV[a + 3] == '0' then
      redis.call('ZREM', key, element)
    else
      redis.call('ZADD', key, ARGV[a + 3], element)
    end
    changed = changed + 1
  end
end
return changed
