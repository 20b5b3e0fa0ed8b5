-- entries.lua: what the reading scripts start with (after their flags line,
-- both prepended by the store).
--
-- Appends the entries of a member's value (see lib.lua) to `fields`
-- (member\0connection) and `records` ("joined_at:token:meta"); a damaged
-- value's last connection without a record gets an empty one.
local function entries(member, value, fields, records)
  local from = 1
  while true do
    local cut = string.find(value, '\0', from, true)
    if not cut then
      fields[#fields + 1] = member .. '\0' .. string.sub(value, from)
      records[#records + 1] = ''
      return
    end
    local next_cut = string.find(value, '\0', cut + 1, true)
    fields[#fields + 1] = member .. '\0' .. string.sub(value, from, cut - 1)
    records[#records + 1] = string.sub(value, cut + 1, (next_cut or #value + 1) - 1)
    if not next_cut then
      return
    end
    from = next_cut + 1
  end
end

-- Flat triples of entries: field, record, last_seen_at (read from `s`).
local function triples(s, fields, records)
  local out = {}
  for from = 1, #fields, 1000 do
    local piece = { unpack(fields, from, math.min(from + 999, #fields)) }
    local scores = redis.call('ZMSCORE', s, unpack(piece))
    for j, f in ipairs(piece) do
      out[#out + 1] = f
      out[#out + 1] = records[from + j - 1]
      out[#out + 1] = scores[j] or '0'
    end
  end
  return out
end
