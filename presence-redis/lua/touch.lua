-- touch.lua: refreshes last_seen_at of present entries (heartbeats); no events.
-- KEYS: six per topic (see lib.lua).
-- ARGV[1]: now (ms); ARGV[2]: n topics; ARGV[3 .. 2+n]: their names;
--   then pairs: topic number t, member\0connection
-- Returns per pair 1 (was present, refreshed) or 0 (absent, untouched).
local now, n = ARGV[1], tonumber(ARGV[2])
local now_number = tonumber(now)
local out = {}
for a = 3 + n, #ARGV, 2 do
  local t, f = tonumber(ARGV[a]), ARGV[a + 1]
  local _, s = group(t)
  local before_seen = redis.call('ZSCORE', s, f)
  if before_seen then
    redis.call('ZADD', s, now, f)
    if now_number < tonumber(before_seen) then
      lower_bound(t, ARGV[2 + t], now)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
