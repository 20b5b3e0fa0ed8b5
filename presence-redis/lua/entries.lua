-- entries.lua: what the reading scripts start with (after their flags line
-- and value.lua, all prepended by the store).
--
-- Appends the entries of a member's value to `fields` (member\0connection)
-- and `out` ("joined_at:token:meta"); a damaged value's last
-- connection without a record gets an empty one.
local function entries(member, value, fields, out)
  local list = records(value)
  for k = 1, #list, 2 do
    fields[#fields + 1] = member .. '\0' .. list[k]
    out[#out + 1] = list[k + 1] or ''
  end
end

-- Flat triples of entries: field, record, last_seen_at (read from `s`).
local function triples(s, fields, found)
  local out = {}
  for from = 1, #fields, 1000 do
    local piece = { unpack(fields, from, math.min(from + 999, #fields)) }
    local scores = redis.call('ZMSCORE', s, unpack(piece))
    for j, f in ipairs(piece) do
      out[#out + 1] = f
      out[#out + 1] = found[from + j - 1]
      out[#out + 1] = scores[j] or '0'
    end
  end
  return out
end
