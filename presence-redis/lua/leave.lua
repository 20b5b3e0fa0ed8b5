-- leave.lua: removes the given connections (a leave batch, or one step of
-- a disconnect), atomically.
-- KEYS: four per topic (see lib.lua).
-- ARGV[1]: publish command; ARGV[2]: reason ("L" left, "D" disconnected);
-- ARGV[3]: n topics; ARGV[4 .. 3+n]: their names;
--   then pairs: topic number t, member\0connection
-- Returns the removal answer (see publish_removals in lib.lua).
local command, kind, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local by_topic = {}
for a = 4 + n, #ARGV, 2 do
  local t = tonumber(ARGV[a])
  by_topic[t] = by_topic[t] or {}
  table.insert(by_topic[t], ARGV[a + 1])
end
for t = 1, n do
  if by_topic[t] then
    remove(t, by_topic[t], kind)
    drop_if_empty(t, ARGV[3 + t])
  end
end
return publish_removals(command, {})
