-- leave_member.lua: removes every connection of one member of one topic.
-- KEYS: the topic's six keys (see lib.lua).
-- ARGV: publish command, topic, member
-- Returns the departures as flat rows (see remove in lib.lua).
local command, topic, member = ARGV[1], ARGV[2], ARGV[3]
local _, _, c = group(1)
local fields = redis.call('ZRANGE', c, '[' .. member .. '\0', '(' .. member .. '\1', 'BYLEX')
local rows = remove(1, fields, 'L')
drop_if_empty(1, topic)
publish(command)
return rows
