-- value.lua: how a member's value reads (see lib.lua), for every script
-- that reads one (prepended by the store).

-- A member's value as a list {connection, record, connection, record, ...}
-- (a damaged value may end with a connection without its record).
local function records(value)
  local list, from = {}, 1
  while true do
    local cut = string.find(value, '\0', from, true)
    if not cut then
      list[#list + 1] = string.sub(value, from)
      return list
    end
    list[#list + 1] = string.sub(value, from, cut - 1)
    from = cut + 1
  end
end

