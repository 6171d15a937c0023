"""The Lua scripts `OutputStore` runs. Each is one atomic step in Redis: a transition of an output's
status with its counters, windows and queues, so that no crash or concurrent caller sees, or leaves,
half of one. Each script's comment gives its KEYS and ARGV; `store.py` passes them. The label and
window scripts are in `label_scripts`; review leases and version claims keep theirs beside their code.
"""

from __future__ import annotations

from .label_scripts import WINDOW_PUT


def bound(most: int | None) -> int:
    """A bound as the scripts' ARGV takes it: -1 for none."""
    return -1 if most is None else most

# Shared by every script that adds to or takes from the pending set: keeps the per-tenant count of
# pending outputs (REDLINE_MAX_PENDING_PER_TENANT) in step with the set itself, by the set's own answer
# (ZADD 1: a new member; ZREM 1: one removed), so an update or a repeat never counts twice.
PENDING = """
local function tenant_of(id)
  return string.match(id, '^([^~]+)~') or 'default'
end
local function pending_add(pk, tk, score, id)
  if redis.call('ZADD', pk, score, id) == 1 then redis.call('HINCRBY', tk, tenant_of(id), 1) end
end
local function pending_remove(pk, tk, id)
  -- A tenant drained to 0 keeps its field, so its gauge reads 0 rather than vanishing; below 0 only for
  -- outputs queued before these counts existed (an upgrade), which count as none.
  if redis.call('ZREM', pk, id) == 1 and redis.call('HINCRBY', tk, tenant_of(id), -1) < 0 then
    redis.call('HSET', tk, tenant_of(id), 0)
  end
end
-- {'overloaded', pending} if adding `adding` outputs would take the whole backlog past `most` (-1: no bound).
local function backlog_bound(pk, adding, most)
  local pending = redis.call('ZCARD', pk)
  if most >= 0 and adding > 0 and pending + adding > most then return {'overloaded', tostring(pending)} end
  return nil
end
-- {'tenant_overloaded', tenant, its pending} if adding `ids` would take a tenant past `most` (-1: no bound).
local function tenant_bound(tk, ids, most)
  if most < 0 then return nil end
  local adding = {}
  for _, id in ipairs(ids) do
    local t = tenant_of(id)
    adding[t] = (adding[t] or 0) + 1
  end
  for t, n in pairs(adding) do
    local have = tonumber(redis.call('HGET', tk, t) or '0')
    if have + n > most then return {'tenant_overloaded', t, tostring(have)} end
  end
  return nil
end
"""


# KEYS[1] = pending zset, KEYS[2] = counters, KEYS[3] = deployed-model set, KEYS[4] = pending by tenant.
# ARGV = ttl, now, prefix, JSON list of records, most distinct models, most pending outputs, most pending
# outputs of one tenant (-1: no bound). Checks every id, then the bounds, before writing, so a refused
# batch stores nothing (not even its model names); returns per record "new" or its current status, or
# {'conflict', id} / {'overloaded', pending} / {'tenant_overloaded', tenant, pending} /
# {'too_many_models', model, count}.
CREATE = PENDING + """
local ttl, now, prefix, max_models, max_pending = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[5]),
  tonumber(ARGV[6])
local records = cjson.decode(ARGV[4])
local result = {}
for i, rec in ipairs(records) do
  local key = prefix .. ':output:' .. rec.id
  local found = redis.call('HMGET', key, 'digest', 'status')
  if found[1] then
    if found[1] ~= rec.digest then return {'conflict', rec.id} end
    result[i] = found[2]
  else
    result[i] = 'new'
  end
end
-- The backlog bound counts only outputs this call would add (a resubmission adds none), and holds
-- across API processes because nothing runs between this check and the writes.
local adding = 0
for i = 1, #records do if result[i] == 'new' then adding = adding + 1 end end
local full = backlog_bound(KEYS[1], adding, max_pending)
if full then return full end
local new_ids = {}
for i, rec in ipairs(records) do if result[i] == 'new' then table.insert(new_ids, rec.id) end end
local over = tenant_bound(KEYS[4], new_ids, tonumber(ARGV[7]))
if over then return over end
-- Model names become metric labels: admit a new one only with an output that is stored, and check the
-- bound here, in the same atomic step as the SADD, so concurrent API processes cannot overshoot it.
local unseen, fresh = {}, {}
for i, rec in ipairs(records) do
  if result[i] == 'new' and not unseen[rec.model] and redis.call('SISMEMBER', KEYS[3], rec.model) == 0 then
    unseen[rec.model] = true
    table.insert(fresh, rec.model)
  end
end
if #fresh > 0 then
  local known = redis.call('SCARD', KEYS[3])
  if max_models >= 0 and known + #fresh > max_models then
    table.sort(fresh)
    return {'too_many_models', fresh[1], tostring(known)}
  end
  redis.call('SADD', KEYS[3], unpack(fresh))
end
for i, rec in ipairs(records) do
  if result[i] == 'new' then
    local key = prefix .. ':output:' .. rec.id
    redis.call('HSET', key, unpack(rec.fields))
    redis.call('EXPIRE', key, ttl)
    pending_add(KEYS[1], KEYS[4], now, rec.id)
    for _, c in ipairs(rec.counters) do redis.call('HINCRBY', KEYS[2], c, 1) end
  end
end
return result
"""

# KEYS[1] = pending zset, KEYS[2] = counters hash, KEYS[3] = monitored set, KEYS[4] = dead-letter zset,
# KEYS[5] = pending by tenant.
# ARGV = prefix, JSON list of results, notify TTL, now, dead-letter horizon. Writes only records still
# queued; for each scored detector records the score (drift) and joins a label already given (window),
# or, without one, queues the output for review when the detector flagged it or it is audit-sampled.
# A failure is listed as a dead letter in the same step, so no failed output goes unlisted; entries
# older than the records themselves (the record TTL) are dropped, which keeps the set bounded.
FINISH = WINDOW_PUT + PENDING + """
local prefix = ARGV[1]
local results = cjson.decode(ARGV[2])
local written, failed = 0, 0
for _, r in ipairs(results) do
  local key = prefix .. ':output:' .. r.id
  local cur = redis.call('HMGET', key, 'status', 'model', 'notify', 'created_at')
  if cur[1] == 'queued' then
    redis.call('HSET', key, unpack(r.fields))
    pending_remove(KEYS[1], KEYS[5], r.id)
    if r.dead then
      redis.call('ZADD', KEYS[4], ARGV[4], r.id)
      failed = failed + 1
    end
    for _, c in ipairs(r.counters) do
      redis.call('HINCRBY', KEYS[2], c .. '|' .. cur[2], 1)
    end
    for _, d in ipairs(r.dets) do
      redis.call('ZADD', d.sc, cur[4], r.id .. '|' .. struct.pack('<d', tonumber(d.score)))
      redis.call('ZREMRANGEBYSCORE', d.sc, '-inf', '(' .. d.horizon)
      redis.call('ZREMRANGEBYRANK', d.sc, 0, -(d.cap + 1))
      redis.call('SADD', KEYS[3], cur[2] .. '|' .. d.name)
      local lab = redis.call('HMGET', key, 'label:' .. d.name, 'labeled_at:' .. d.name)
      if lab[1] then
        window_put(d, d.version, r.id, d.score, lab[1], design_weight(d.flagged, r.audit, r.rate), lab[2], cur[4])
      elseif d.flagged or r.audit == '1' then
        -- What reviewers must label for the weighted metrics: flagged, or in the audit sample. Kept as
        -- long as records, and at most `cap` (the oldest go first: nobody works through more).
        redis.call('ZADD', d.rv, cur[4], r.id)
        redis.call('ZREMRANGEBYSCORE', d.rv, '-inf', '(' .. d.rv_horizon)
        redis.call('ZREMRANGEBYRANK', d.rv, 0, -(d.cap + 1))
      end
    end
    if cur[3] then
      local nkey = prefix .. ':notify:' .. cur[3]
      redis.call('RPUSH', nkey, r.id)
      redis.call('EXPIRE', nkey, tonumber(ARGV[3]))
    end
    written = written + 1
  end
end
if failed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[5]) end
return written
"""


# KEYS[1] = pending zset, KEYS[2] = pending by tenant, KEYS[3] = counters. ARGV = prefix, job id, now,
# JSON list of output ids, what the move counts as ('attempts': its job was lost; 'handoffs': a worker
# lacking one of its detectors passed it on). Moves the outputs that exist and are still queued to a new
# job, counting one more in the record and in `requeued|abandoned|<model>` or `requeued|handoff|<model>`;
# returns those ids. Checked here, not by the caller's earlier read: a record that expired meanwhile
# would be recreated partially and without a TTL by a plain HSET, and one scored meanwhile would be queued
# again for nothing.
REASSIGN = PENDING + """
local moved = {}
local reason = ARGV[5] == 'handoffs' and 'handoff' or 'abandoned'
for _, id in ipairs(cjson.decode(ARGV[4])) do
  local key = ARGV[1] .. ':output:' .. id
  local found = redis.call('HMGET', key, 'status', 'model')
  if found[1] == 'queued' then
    redis.call('HSET', key, 'job', ARGV[2])
    redis.call('HINCRBY', key, ARGV[5], 1)
    redis.call('HINCRBY', KEYS[3], 'requeued|' .. reason .. '|' .. (found[2] or ''), 1)
    pending_add(KEYS[1], KEYS[2], ARGV[3], id)
    table.insert(moved, id)
  end
end
return moved
"""


# KEYS[1] = pending zset, KEYS[2] = dead-letter zset, KEYS[3] = pending by tenant. ARGV = prefix, job id,
# now, JSON list of output ids, most pending outputs, most of one tenant (-1: no bound). Moves failed
# outputs back to queued, under a new job with a fresh count of attempts, and off the dead-letter list;
# returns per id "requeued", its status when it is not failed, or "missing"; or {'overloaded', pending}
# / {'tenant_overloaded', tenant, pending}, having changed nothing. Failed outputs hold no
# score, so scoring them now is their first and only score.
RETRY = PENDING + """
local prefix, job, now, max_pending = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local ids = cjson.decode(ARGV[4])
local out, adding = {}, 0
for i, id in ipairs(ids) do
  local status = redis.call('HGET', prefix .. ':output:' .. id, 'status')
  if not status then out[i] = 'missing'
  elseif status == 'failed' then out[i] = 'requeued'; adding = adding + 1
  else out[i] = status end
end
local full = backlog_bound(KEYS[1], adding, max_pending)
if full then return full end
local requeue = {}
for i, id in ipairs(ids) do if out[i] == 'requeued' then table.insert(requeue, id) end end
local over = tenant_bound(KEYS[3], requeue, tonumber(ARGV[6]))
if over then return over end
for i, id in ipairs(ids) do
  if out[i] == 'requeued' then
    local key = prefix .. ':output:' .. id
    redis.call('HSET', key, 'status', 'queued', 'job', job)
    redis.call('HDEL', key, 'error', 'scored_at', 'attempts', 'handoffs', 'notify')
    pending_add(KEYS[1], KEYS[3], now, id)
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""


# KEYS[1] = the output's record, KEYS[2] = pending zset, KEYS[3] = dead-letter zset, KEYS[4] = pending by
# tenant. ARGV = output id,
# JSON {detector: {win, idx, sc, rv, ls, lh}} key bases for the output's detectors. Erases the output: its
# record (texts, metadata, scores, labels) and every entry naming its id (pending, dead letters,
# review queues and their leases, and, for the detector version that scored it, its window entry and score history).
# Counters keep counting what happened. Returns 1, or 0 when there is no such record.
DELETE = PENDING + """
local id = ARGV[1]
local cur = redis.call('HMGET', KEYS[1], 'id', 'scores', 'created_at')
if not cur[1] then return 0 end
local scores = cur[2] and cjson.decode(cur[2]) or {}
for name, d in pairs(cjson.decode(ARGV[2])) do
  redis.call('ZREM', d.rv, id)
  redis.call('ZREM', d.ls, id)
  redis.call('HDEL', d.lh, id)
  local s = scores[name]
  if s then
    local v = tostring(s.version)
    local member = redis.call('HGET', d.idx .. v, id)
    if member then
      redis.call('ZREM', d.win .. v, member)
      redis.call('HDEL', d.idx .. v, id)
    end
    -- Score-history members are `id|` + the score, at the output's created_at.
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', d.sc .. v, cur[3], cur[3])) do
      if string.sub(m, 1, #id + 1) == id .. '|' then redis.call('ZREM', d.sc .. v, m) end
    end
  end
end
redis.call('DEL', KEYS[1])
pending_remove(KEYS[2], KEYS[4], id)
redis.call('ZREM', KEYS[3], id)
return 1
"""


# KEYS[1] = pending zset, KEYS[2] = pending by tenant. ARGV = JSON list of ids. Takes outputs the reaper
# found no longer queued (their records expired) off the pending set.
DROP_PENDING = PENDING + """
for _, id in ipairs(cjson.decode(ARGV[1])) do pending_remove(KEYS[1], KEYS[2], id) end
return 0
"""
