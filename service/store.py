"""Output records in Redis: create a batch atomically, read, and write scores exactly once.

The record hash is the source of truth. Status moves queued -> scored|failed once; the Lua
scripts below make that transition and its counters one atomic step, so a batch scored twice
(a worker died after writing, its job ran again) changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from .errors import Conflict
from .keys import NOTIFY_TTL_S, Keys

QUEUED, SCORED, FAILED = "queued", "scored", "failed"

# KEYS[1] = pending zset. ARGV = ttl, now, prefix, JSON list of records.
# Checks every id first, so a conflict stores nothing; returns per record "new" or its current status.
_CREATE = """
local ttl, now, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
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
for i, rec in ipairs(records) do
  if result[i] == 'new' then
    local key = prefix .. ':output:' .. rec.id
    redis.call('HSET', key, unpack(rec.fields))
    redis.call('EXPIRE', key, ttl)
    redis.call('ZADD', KEYS[1], now, rec.id)
  end
end
return result
"""

# KEYS[1] = pending zset, KEYS[2] = counters hash. ARGV = prefix, JSON list of results.
# Writes only records still queued; returns how many were written.
_FINISH = """
local prefix = ARGV[1]
local results = cjson.decode(ARGV[2])
local written = 0
for _, r in ipairs(results) do
  local key = prefix .. ':output:' .. r.id
  local cur = redis.call('HMGET', key, 'status', 'model', 'notify')
  if cur[1] == 'queued' then
    redis.call('HSET', key, unpack(r.fields))
    redis.call('ZREM', KEYS[1], r.id)
    for _, c in ipairs(r.counters) do
      redis.call('HINCRBY', KEYS[2], c .. '|' .. cur[2], 1)
    end
    if cur[3] then
      local nkey = prefix .. ':notify:' .. cur[3]
      redis.call('RPUSH', nkey, r.id)
      redis.call('EXPIRE', nkey, tonumber(ARGV[3]))
    end
    written = written + 1
  end
end
return written
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


class OutputStore:
    """Reads and writes output records under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._create = redis.register_script(_CREATE)
        self._finish = redis.register_script(_FINISH)

    def create(self, outputs: Sequence[NewOutput], job_id: str, notify: str | None = None) -> list[str]:
        """Store outputs atomically; returns "new" or the existing status for each.

        Raises Conflict (nothing stored) when an id exists with different content.
        """
        now = time.time()
        records = []
        for out in outputs:
            fields: dict[str, Any] = {
                "id": out.id, "model": out.model, "prompt": out.prompt, "response": out.response,
                "detectors": json.dumps(out.detectors), "metadata": json.dumps(out.metadata),
                "status": QUEUED, "created_at": repr(now), "digest": out.digest(), "job": job_id,
            }
            if notify:
                fields["notify"] = notify
            records.append({"id": out.id, "digest": fields["digest"],
                            "fields": [x for kv in fields.items() for x in kv]})
        result = self._create(keys=[self.keys.pending],
                              args=[self.ttl_s, repr(now), self.keys.prefix, json.dumps(records)])
        states = [r.decode() for r in result]
        if states and states[0] == "conflict":
            raise Conflict(f"output id {states[1]!r} already exists with different content")
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

    def finish_scored(self, results: Iterable[tuple[dict[str, Any], dict[str, DetectorScore], dict[str, Any]]]) -> int:
        """Write scores for (record, scores, batch-info) triples; records no longer queued are skipped."""
        now = repr(time.time())
        payload = []
        for record, scores, batch in results:
            counters = [f"scored|{d}" for d in scores] + [f"flagged|{d}" for d, s in scores.items() if s.flagged]
            fields = {"status": SCORED, "scored_at": now, "batch": json.dumps(batch),
                      "scores": json.dumps({d: s.__dict__ for d, s in scores.items()})}
            payload.append({"id": record["id"], "fields": [x for kv in fields.items() for x in kv],
                            "counters": counters})
        return self._run_finish(payload)

    def finish_failed(self, ids: Iterable[str], reason: str) -> int:
        """Mark outputs failed with a reason (only those still queued)."""
        now = repr(time.time())
        payload = [{"id": i, "fields": ["status", FAILED, "error", reason, "scored_at", now], "counters": ["failed"]}
                   for i in ids]
        return self._run_finish(payload)

    def _run_finish(self, payload: list[dict[str, Any]]) -> int:
        if not payload:
            return 0
        return int(self._finish(keys=[self.keys.pending, self.keys.counters],
                                args=[self.keys.prefix, json.dumps(payload), NOTIFY_TTL_S]))

    def counters(self) -> dict[str, int]:
        """Exactly-once counters keyed `event|detector|model` (e.g. `scored|injury|gpt-x`) or `failed|model`."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.counters).items()}


_JSON_FIELDS = ("detectors", "metadata", "scores", "batch")
_FLOAT_FIELDS = ("created_at", "scored_at")


def _decode(raw: dict[bytes, bytes | None]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if v is None:
            continue
        text = v.decode()
        if key in _JSON_FIELDS:
            record[key] = json.loads(text)
        elif key in _FLOAT_FIELDS:
            record[key] = float(text)
        else:
            record[key] = text
    return record
