"""Output records in Redis: create a batch atomically, read, and write scores exactly once.

The record hash is the source of truth. Status moves queued -> scored|failed once; the Lua
scripts below make that transition and its counters one atomic step, so a batch scored twice
(a worker died after writing, its job ran again) changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from redis import Redis

from .errors import Conflict, ValidationFailed
from .keys import NOTIFY_TTL_S, Keys, text
from .settings import Settings

QUEUED, SCORED, FAILED = "queued", "scored", "failed"

# KEYS[1] = pending zset, KEYS[2] = counters, KEYS[3] = deployed-model set. ARGV = ttl, now, prefix,
# JSON list of records, most distinct models, most pending outputs (-1: no bound). Checks every id, then
# the bounds, before writing, so a refused batch stores nothing (not even its model names); returns per
# record "new" or its current status, or {'conflict', id} / {'overloaded', pending} /
# {'too_many_models', model, count}.
_CREATE = """
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
local pending = redis.call('ZCARD', KEYS[1])
if max_pending >= 0 and adding > 0 and pending + adding > max_pending then
  return {'overloaded', tostring(pending)}
end
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
    redis.call('ZADD', KEYS[1], now, rec.id)
    for _, c in ipairs(rec.counters) do redis.call('HINCRBY', KEYS[2], c, 1) end
  end
end
return result
"""

# Shared by the scripts below: put one labeled+scored output into its monitoring window,
# replacing its previous entry (a changed label), then trim by age and by count.
_WINDOW_PUT = """
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

# KEYS[1] = pending zset, KEYS[2] = counters hash, KEYS[3] = monitored set, KEYS[4] = dead-letter zset.
# ARGV = prefix, JSON list of results, notify TTL, now, dead-letter horizon. Writes only records still
# queued; for each scored detector records the score (drift) and joins a label already given (window),
# or, without one, queues the output for review when the detector flagged it or it is audit-sampled.
# A failure is listed as a dead letter in the same step, so no failed output goes unlisted; entries
# older than the records themselves (the record TTL) are dropped, which keeps the set bounded.
_FINISH = _WINDOW_PUT + """
local prefix = ARGV[1]
local results = cjson.decode(ARGV[2])
local written, failed = 0, 0
for _, r in ipairs(results) do
  local key = prefix .. ':output:' .. r.id
  local cur = redis.call('HMGET', key, 'status', 'model', 'notify', 'created_at')
  if cur[1] == 'queued' then
    redis.call('HSET', key, unpack(r.fields))
    redis.call('ZREM', KEYS[1], r.id)
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


# KEYS[1] = pending zset. ARGV = prefix, job id, now, JSON list of output ids. Moves the outputs that
# exist and are still queued to a new job (one more attempt); returns those ids. Checked here, not by
# the caller's earlier read: a record that expired meanwhile would be recreated partially and without
# a TTL by a plain HSET, and one scored meanwhile would be queued again for nothing.
_REASSIGN = """
local moved = {}
for _, id in ipairs(cjson.decode(ARGV[4])) do
  local key = ARGV[1] .. ':output:' .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'job', ARGV[2])
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(moved, id)
  end
end
return moved
"""


# KEYS[1] = pending zset, KEYS[2] = dead-letter zset. ARGV = prefix, job id, now, JSON list of output ids,
# most pending outputs (-1: no bound). Moves failed outputs back to queued, under a new job with a fresh
# count of attempts, and off the dead-letter list; returns per id "requeued", its status when it is not
# failed, or "missing"; or {'overloaded', pending}, having changed nothing. Failed outputs hold no
# score, so scoring them now is their first and only score.
_RETRY = """
local prefix, job, now, max_pending = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local ids = cjson.decode(ARGV[4])
local out, adding = {}, 0
for i, id in ipairs(ids) do
  local status = redis.call('HGET', prefix .. ':output:' .. id, 'status')
  if not status then out[i] = 'missing'
  elseif status == 'failed' then out[i] = 'requeued'; adding = adding + 1
  else out[i] = status end
end
local pending = redis.call('ZCARD', KEYS[1])
if max_pending >= 0 and adding > 0 and pending + adding > max_pending then
  return {'overloaded', tostring(pending)}
end
for i, id in ipairs(ids) do
  if out[i] == 'requeued' then
    local key = prefix .. ':output:' .. id
    redis.call('HSET', key, 'status', 'queued', 'job', job)
    redis.call('HDEL', key, 'error', 'scored_at', 'attempts', 'notify')
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""


# KEYS[1] = the output's record, KEYS[2] = pending zset, KEYS[3] = dead-letter zset. ARGV = output id,
# JSON {detector: {win, idx, sc, rv, ls}} key bases for the output's detectors. Erases the output: its
# record (texts, metadata, scores, labels) and every entry naming its id (pending, dead letters,
# review queues and their leases, and, for the detector version that scored it, its window entry and score history).
# Counters keep counting what happened. Returns 1, or 0 when there is no such record.
_DELETE = """
local id = ARGV[1]
local cur = redis.call('HMGET', KEYS[1], 'id', 'scores', 'created_at')
if not cur[1] then return 0 end
local scores = cur[2] and cjson.decode(cur[2]) or {}
for name, d in pairs(cjson.decode(ARGV[2])) do
  redis.call('ZREM', d.rv, id)
  redis.call('ZREM', d.ls, id)
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
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
return 1
"""


# KEYS[1] = a review queue, KEYS[2] = its leases. ARGV = now, lease seconds, limit. Leases the `limit`
# oldest queued ids that no unexpired lease holds, in one step, so two reviewers asking at once never
# get the same output; returns them and the queue's length. It walks the queue from its old end past
# leased ids, so a call costs the leases ahead of the first free ids, at most the queue's length.
_LEASE_REVIEW = """
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local out, start, page = {}, 0, 256
while #out < limit do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + page - 1)
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', KEYS[2], id) then
      out[#out + 1] = id
      if #out == limit then break end
    end
  end
  if #ids < page then break end
  start = start + page
end
for _, id in ipairs(out) do redis.call('ZADD', KEYS[2], now + lease, id) end
if #out > 0 and redis.call('TTL', KEYS[2]) < lease then redis.call('EXPIRE', KEYS[2], math.ceil(lease)) end
return {out, redis.call('ZCARD', KEYS[1])}
"""


# KEYS[1] = a detector version's claim. ARGV = fingerprint, TTL seconds. Takes or renews the claim;
# returns the other fingerprint holding it (and changes nothing), or nil. One script, so two workers
# starting together with different files cannot both find the version free.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


# KEYS[1] = counters. ARGV = now, JSON list of {key, id, det, label, win...}.
# Returns per item "new", "changed", "unchanged" or "missing". A changed label replaces the
# window entry; counters count each (output, detector) labeled once; a label takes the output off
# the detector's review queue.
_LABEL = _WINDOW_PUT + """
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
    redis.call('ZREM', it.rv, it.id)
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


@dataclass
class NewOutput:
    """A validated output ready to store."""

    id: str
    model: str
    response: str
    prompt: str = ""
    detectors: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # ground truth given at submit; not part of identity

    def digest(self) -> str:
        """Content fingerprint: a resubmitted id is the same output only if this matches."""
        body = json.dumps([self.model, self.prompt, self.response, sorted(self.detectors), self.metadata],
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class DetectorScore:
    score: float
    flagged: bool
    threshold: float
    version: str


class BacklogFull(Exception):
    """create() stored nothing: the outputs would take the backlog past `max_pending`."""

    def __init__(self, pending: int) -> None:
        super().__init__(pending)
        self.pending = pending


def redis_time(redis: Redis) -> float:
    """Redis's own clock, in Unix seconds.

    Every timestamp that one process writes and another compares (worker liveness, how long an output
    has waited, window edges, queue wait) is read from here, not from the host: API and workers may
    run on machines whose clocks differ, and a worker whose clock ran 15 s behind looked dead to every
    API (so /readyz failed), while one ahead or behind requeued outputs too early or far too late.
    """
    seconds, micros = cast("tuple[int, int]", redis.time())
    return seconds + micros / 1e6


class OutputStore:
    """Reads and writes output records under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int, retention_s: int = 15 * 86400,
                 window_cap: int = 100_000, clock: Callable[[], float] | None = None,
                 max_models: int | None = None, max_pending: int | None = None) -> None:
        # Redis's clock (see redis_time); injectable so tests can place outputs and labels in time.
        self.clock: Callable[[], float] = clock or partial(redis_time, redis)
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.retention_s = retention_s
        self.window_cap = window_cap
        self.max_models = max_models  # distinct deployed-model names create() admits; None: no bound
        self.max_pending = max_pending  # outputs waiting to be scored past which create() stores nothing
        self._random = random.Random()
        self._create = redis.register_script(_CREATE)
        self._finish = redis.register_script(_FINISH)
        self._label = redis.register_script(_LABEL)
        self._reassign = redis.register_script(_REASSIGN)
        self._retry = redis.register_script(_RETRY)
        self._delete = redis.register_script(_DELETE)
        self._claim = redis.register_script(_CLAIM)
        self._lease_review = redis.register_script(_LEASE_REVIEW)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> OutputStore:
        return cls(redis, Keys(settings.queue_prefix), settings.record_ttl_s, settings.window_retention_s,
                   settings.window_max_entries, max_models=settings.max_models, max_pending=settings.max_pending)

    def create(self, outputs: Sequence[NewOutput], job_id: str, notify: str | None = None) -> list[str]:
        """Store outputs atomically; returns "new" or the existing status for each.

        Raises Conflict (nothing stored) when an id exists with different content.
        """
        now = self.clock()
        records = []
        for out in outputs:
            fields: dict[str, Any] = {
                "id": out.id, "model": out.model, "prompt": out.prompt, "response": out.response,
                "detectors": json.dumps(out.detectors), "metadata": json.dumps(out.metadata),
                "status": QUEUED, "created_at": repr(now), "digest": out.digest(), "job": job_id,
            }
            if notify:
                fields["notify"] = notify
            for detector, label in out.labels.items():
                fields[f"label:{detector}"] = str(label)
                fields[f"labeled_at:{detector}"] = repr(now)
            records.append({"id": out.id, "digest": fields["digest"], "model": out.model,
                            "fields": [x for kv in fields.items() for x in kv],
                            "counters": [f"labeled|{d}|{out.model}" for d in out.labels]})
        result = self._create(keys=[self.keys.pending, self.keys.counters, self.keys.models],
                              args=[self.ttl_s, repr(now), self.keys.prefix, json.dumps(records),
                                    -1 if self.max_models is None else self.max_models,
                                    -1 if self.max_pending is None else self.max_pending])
        states = [r.decode() for r in result]
        if states and states[0] == "conflict":
            raise Conflict(f"output id {states[1]!r} already exists with different content")
        if states and states[0] == "overloaded":
            raise BacklogFull(int(states[1]))
        if states and states[0] == "too_many_models":
            raise ValidationFailed(f"model {states[1]!r} would exceed REDLINE_MAX_MODELS={self.max_models} "
                                   f"distinct deployed models ({states[2]} known)", code="too_many_models")
        return states

    def get(self, output_id: str) -> dict[str, Any] | None:
        """The stored record with JSON fields decoded, or None."""
        raw = self.redis.hgetall(self.keys.output(output_id))
        return _decode(raw) if raw else None

    def get_many(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        """Records in the order of `ids` (None where missing); `fields` limits what is read."""
        with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                if fields:
                    pipe.hmget(self.keys.output(i), list(fields))
                else:
                    pipe.hgetall(self.keys.output(i))
            rows = pipe.execute()
        if fields:
            rows = [dict(zip([f.encode() for f in fields], r, strict=True)) if r[0] is not None else {}
                    for r in rows]
        return [_decode(r) if r else None for r in rows]

    def finish_scored(self, results: Iterable[tuple[dict[str, Any], dict[str, DetectorScore], dict[str, Any]]],
                      audit_rate: float = 0.0) -> int:
        """Write scores for (record, scores, batch-info) triples; records no longer queued are skipped.

        An output no detector flagged is picked for the audit sample with probability `audit_rate`,
        so reviewers also label some of what got through (see `evaluation`, inverse-probability weights).
        """
        now = self.clock()
        payload = []
        for record, scores, batch in results:
            counters = [f"scored|{d}" for d in scores] + [f"flagged|{d}" for d, s in scores.items() if s.flagged]
            audit = not any(s.flagged for s in scores.values()) and self._random.random() < audit_rate
            fields = {"status": SCORED, "scored_at": repr(now), "batch": json.dumps(batch),
                      "scores": json.dumps({d: s.__dict__ for d, s in scores.items()}),
                      "audit": "1" if audit else "0", "audit_rate": repr(audit_rate)}
            dets = [{"name": d, "score": repr(s.score), "flagged": s.flagged, "version": s.version,
                     "sc": self.keys.scores(record["model"], d, s.version), "rv_horizon": repr(now - self.ttl_s),
                     **self._window_keys(record["model"], d, now)} for d, s in scores.items()]
            payload.append({"id": record["id"], "fields": [x for kv in fields.items() for x in kv],
                            "counters": counters, "dets": dets, "audit": "1" if audit else "0",
                            "rate": repr(audit_rate)})
        return self._run_finish(payload)

    def apply_labels(self, items: Sequence[tuple[str, str, str, int]]) -> list[str]:
        """Set (output id, model, detector, 0|1) labels atomically; returns "new", "changed", "unchanged"
        or "missing" for each. A label joins the stored score at once, or when the score arrives."""
        now = self.clock()
        payload = [{"key": self.keys.output(i), "id": i, "det": d, "label": str(label),
                    **self._window_keys(model, d, now)} for i, model, d, label in items]
        result = self._label(keys=[self.keys.counters], args=[repr(now), json.dumps(payload)])
        return [r.decode() for r in result]

    def _window_keys(self, model: str, detector: str, now: float) -> dict[str, Any]:
        # Bases: the scripts append the version of the detector that scored the output.
        return {"win": self.keys.window_base(model, detector), "idx": self.keys.window_index_base(model, detector),
                "rv": self.keys.review(model, detector), "horizon": repr(now - self.retention_s),
                "cap": self.window_cap}

    def finish_failed(self, reasons: Mapping[str, str]) -> int:
        """Mark outputs failed, each with its reason (only those still queued), and list them as dead
        letters, in one script call."""
        now = repr(self.clock())
        payload = [{"id": i, "fields": ["status", FAILED, "error", reason, "scored_at", now], "counters": ["failed"],
                    "dets": [], "dead": True} for i, reason in reasons.items()]
        return self._run_finish(payload)

    def reassign(self, output_ids: Sequence[str], job_id: str) -> list[str]:
        """Move outputs still queued to `job_id` (an abandoned job's outputs, about to be queued again);
        returns those moved, in order. Others (scored, failed or expired since they were read) are left."""
        if not output_ids:
            return []
        moved = self._reassign(keys=[self.keys.pending],
                               args=[self.keys.prefix, job_id, repr(self.clock()), json.dumps(list(output_ids))])
        return [text(i) for i in moved]

    def retry_failed(self, output_ids: Sequence[str], job_id: str) -> list[str]:
        """Queue failed outputs again under `job_id` (the caller enqueues it); returns "requeued", the
        current status ("queued", "scored") or "missing" for each id. Raises BacklogFull, changing
        nothing, when they would take the backlog past `max_pending`."""
        result = self._retry(keys=[self.keys.pending, self.keys.dead],
                             args=[self.keys.prefix, job_id, repr(self.clock()), json.dumps(list(output_ids)),
                                   -1 if self.max_pending is None else self.max_pending])
        states = [text(r) for r in result]
        if states and states[0] == "overloaded":
            raise BacklogFull(int(states[1]))
        return states

    def delete(self, output_id: str) -> bool:
        """Erase an output and every entry naming it (see _DELETE); False if there is none. A job still
        holding its id later finds nothing to score and writes nothing."""
        [record] = self.get_many([output_id], ["model", "detectors"])
        if record is None:
            return False
        model = record.get("model", "")
        # The detectors an output is scored with are fixed when it is created: reading them first is safe.
        bases = {d: {"win": self.keys.window_base(model, d), "idx": self.keys.window_index_base(model, d),
                     "sc": self.keys.scores_base(model, d), "rv": self.keys.review(model, d),
                     "ls": self.keys.review_leases(model, d)}
                 for d in record.get("detectors", [])}
        return bool(self._delete(keys=[self.keys.output(output_id), self.keys.pending, self.keys.dead],
                                 args=[output_id, json.dumps(bases)]))

    def claim_version(self, detector: str, version: str, fingerprint: str) -> str | None:
        """Record that `fingerprint` scores `detector` at `version`, for as long as scores of that version
        can be read (records and windows), and renew that; or, where another fingerprint holds the version,
        return that one and change nothing."""
        held = self._claim(keys=[self.keys.version_claim(detector, version)],
                           args=[fingerprint, max(self.ttl_s, self.retention_s)])
        return None if held is None else text(held)

    def awaiting_review(self, model: str, detector: str, limit: int) -> tuple[list[str], int]:
        """The `limit` oldest outputs awaiting a label for `detector` (flagged by it, or audit-sampled),
        and how many await one in all."""
        key = self.keys.review(model, detector)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(key, 0, limit - 1)
            pipe.zcard(key)
            ids, waiting = pipe.execute()
        return [text(i) for i in ids], int(waiting)

    def lease_review(self, model: str, detector: str, limit: int, lease_s: float) -> tuple[list[str], int, float]:
        """Lease to one reviewer, for `lease_s`, the `limit` oldest outputs awaiting a label for `detector`
        that no other lease holds (see _LEASE_REVIEW); with the queue's length and when the leases end."""
        now = self.clock()
        keys = [self.keys.review(model, detector), self.keys.review_leases(model, detector)]
        ids, waiting = self._lease_review(keys=keys, args=[repr(now), repr(lease_s), limit])
        return [text(i) for i in ids], int(waiting), now + lease_s

    def review_leased_until(self, model: str, detector: str, output_ids: Sequence[str]) -> list[float | None]:
        """When each output's review lease ends (unix seconds), or None where none holds it now."""
        if not output_ids:
            return []
        now = self.clock()
        until = self.redis.zmscore(self.keys.review_leases(model, detector), list(output_ids))
        return [t if t is not None and t > now else None for t in until]

    def forget_review(self, model: str, detector: str, output_ids: Sequence[str]) -> None:
        """Drop ids from a review queue and its leases (their records expired)."""
        if output_ids:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.review(model, detector), *output_ids)
                pipe.zrem(self.keys.review_leases(model, detector), *output_ids)
                pipe.execute()

    def _run_finish(self, payload: list[dict[str, Any]]) -> int:
        if not payload:
            return 0
        now = self.clock()
        return int(self._finish(keys=[self.keys.pending, self.keys.counters, self.keys.monitored, self.keys.dead],
                                args=[self.keys.prefix, json.dumps(payload), NOTIFY_TTL_S, repr(now),
                                      repr(now - self.ttl_s)]))

    def counters(self) -> dict[str, int]:
        """Exactly-once counters keyed `event|detector|model` (e.g. `scored|injury|gpt-x`) or `failed|model`."""
        return {text(k): int(v) for k, v in self.redis.hgetall(self.keys.counters).items()}


_JSON_FIELDS = ("detectors", "metadata", "scores", "batch")
_FLOAT_FIELDS = ("created_at", "scored_at")


def _decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if v is None:
            continue
        text = v.decode()
        if key.startswith("label:"):
            record.setdefault("labels", {})[key[6:]] = int(text)
        elif key.startswith("labeled_at:"):
            record.setdefault("labeled_at", {})[key[11:]] = float(text)
        elif key in _JSON_FIELDS:
            record[key] = json.loads(text)
        elif key in _FLOAT_FIELDS:
            record[key] = float(text)
        else:
            record[key] = text
    return record
