"""Redis Lua for labels and monitoring windows: a label joined to its score, the window entry it makes."""

# Shared by LABEL and store_scripts.FINISH: put one labeled+scored output into its monitoring window,
# replacing its previous entry (a changed label), then trim by age and by count.
WINDOW_PUT = """
local function window_put(w, version, id, score, label, weight, labeled_at, created_at)
  -- The window of the detector version that scored the output (Keys.window: base .. version).
  local win, idx = w.win .. tostring(version or ''), w.idx .. tostring(version or '')
  local old = redis.call('HGET', idx, id)
  if old then redis.call('ZREM', win, old) end
  -- id, then 5 little-endian doubles: numpy reads a whole window with one frombuffer (monitoring.py).
  local member = id .. '|' .. struct.pack('<ddddd', tonumber(score), tonumber(label), tonumber(weight),
                                           tonumber(labeled_at), tonumber(created_at))
  redis.call('ZADD', win, created_at, member)
  redis.call('HSET', idx, id, member)
  local drop = redis.call('ZRANGEBYSCORE', win, '-inf', '(' .. w.horizon)
  local excess = redis.call('ZCARD', win) - w.cap
  if excess > 0 then
    for _, m in ipairs(redis.call('ZRANGE', win, 0, excess - 1)) do table.insert(drop, m) end
  end
  for _, m in ipairs(drop) do
    redis.call('ZREM', win, m)
    redis.call('HDEL', idx, string.match(m, '^[^|]+'))
  end
end

local function design_weight(flagged, audit, rate)
  -- Reviewers see every flagged output and an audit sample (rate) of the rest.
  if flagged then return 1 end
  if audit == '1' and tonumber(rate) and tonumber(rate) > 0 then return 1 / tonumber(rate) end
  return 0
end
"""


# KEYS[1] = counters. ARGV = now, JSON list of {key, id, det, label, win...}, key id of the labeler ("": none).
# Returns per item "new", "changed", "unchanged" or "missing". A changed label replaces the
# window entry and its attribution (an unchanged one keeps whose it was); counters count each (output,
# detector) labeled once; a label takes the output off the detector's review queue and ends its review lease.
LABEL = WINDOW_PUT + """
local now = ARGV[1]
local items = cjson.decode(ARGV[2])
local out = {}
for i, it in ipairs(items) do
  local cur = redis.call('HMGET', it.key, 'model', 'label:' .. it.det, 'labeled_at:' .. it.det, 'scores',
                         'created_at', 'audit', 'audit_rate')
  if not cur[1] then
    out[i] = 'missing'
  elseif cur[2] == it.label then
    out[i] = 'unchanged'
  else
    out[i] = cur[2] and 'changed' or 'new'
    local labeled_at = cur[3] or now
    redis.call('HSET', it.key, 'label:' .. it.det, it.label, 'labeled_at:' .. it.det, labeled_at)
    if ARGV[3] ~= '' then
      redis.call('HSET', it.key, 'labeled_by:' .. it.det, ARGV[3])
    else
      redis.call('HDEL', it.key, 'labeled_by:' .. it.det)
    end
    redis.call('ZREM', it.rv, it.id)
    redis.call('ZREM', it.ls, it.id)  -- its review lease ends with its place on the queue
    redis.call('HDEL', it.lh, it.id)
    if not cur[2] then redis.call('HINCRBY', KEYS[1], 'labeled|' .. it.det .. '|' .. cur[1], 1) end
    if cur[4] then
      local s = cjson.decode(cur[4])[it.det]
      if s then
        -- The number itself: tostring() keeps 14 digits, so a label arriving after its score stored a
        -- rounded score (two scores 1e-15 apart became a tie).
        window_put(it, s.version, it.id, s.score, it.label,
                   design_weight(s.flagged, cur[6], cur[7]), labeled_at, cur[5])
      end
    end
  end
end
return out
"""
