-- leave_member.lua: removes every connection of one member of one topic.
-- KEYS: the topic's six keys (see lib.lua).
-- ARGV: publish command, topic, member
-- Returns the removal answer (see publish_removals in lib.lua).
local command, topic, member = ARGV[1], ARGV[2], ARGV[3]
local _, _, c = group(1)
local fields = redis.call('ZRANGE', c, '[' .. member .. '\0', '(' .. member .. '\1', 'BYLEX')
remove(1, fields, 'L')
drop_if_empty(1, topic)
return publish_removals(command, {})
