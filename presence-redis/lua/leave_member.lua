-- leave_member.lua: removes every connection of one member of one topic.
-- KEYS: the topic's four keys (see lib.lua).
-- ARGV: publish command, topic, member
-- Returns the removal answer (see publish_removals in lib.lua).
local command, topic, member = ARGV[1], ARGV[2], ARGV[3]
local e = group(1)
local value = redis.call('HGET', e, member)
if value then
  local list = records(value)
  local fields = {}
  for k = 1, #list, 2 do
    fields[#fields + 1] = member .. '\0' .. list[k]
  end
  remove(1, fields, 'L')
  drop_if_empty(1, topic)
end
return publish_removals(command, {})
