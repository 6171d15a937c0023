"""Review queues: per (deployed model, detector), the scored outputs awaiting a reviewer's label, those
the detector flagged and those in the audit sample, and the leases that hand reviewers working in
parallel different outputs. The score-writing and label scripts (`store_scripts`) add to and take
from a queue in the same step as the score or label; this reads them and manages the leases."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from redis import Redis

from .keys import Keys, text

# KEYS[1] = a review queue, KEYS[2] = its leases, KEYS[3] = their holders. ARGV = now, lease seconds,
# limit, the reviewer's key id ("": none). Leases the `limit` oldest queued ids that no unexpired lease
# holds, in one step, so two reviewers asking at once never get the same output; returns them and the
# queue's length. It walks the queue from its old end past leased ids, so a call costs the leases ahead
# of the first free ids, at most the queue's length.
LEASE_REVIEW = """
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 1, #lapsed, 500 do
  local chunk = {unpack(lapsed, i, math.min(i + 499, #lapsed))}
  redis.call('ZREM', KEYS[2], unpack(chunk))
  redis.call('HDEL', KEYS[3], unpack(chunk))
end
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
for _, id in ipairs(out) do
  redis.call('ZADD', KEYS[2], now + lease, id)
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], id, ARGV[4]) else redis.call('HDEL', KEYS[3], id) end
end
if #out > 0 then
  for _, key in ipairs({KEYS[2], KEYS[3]}) do  -- TTL -1 (none yet) too; -2 (no key): EXPIRE does nothing
    if redis.call('TTL', key) < lease then redis.call('EXPIRE', key, math.ceil(lease)) end
  end
end
return {out, redis.call('ZCARD', KEYS[1])}
"""


class Lease(NamedTuple):
    until: float  # unix seconds
    by: str | None  # the reviewer's key id; None without API keys


class ReviewQueues:
    """The review queues and leases under one key prefix; `clock` is the store's (Redis's) clock."""

    def __init__(self, redis: Redis, keys: Keys, clock: Callable[[], float]) -> None:
        self.redis, self.keys, self.clock = redis, keys, clock
        self._lease = redis.register_script(LEASE_REVIEW)

    def awaiting(self, model: str, detector: str, limit: int) -> tuple[list[str], int]:
        """The `limit` oldest outputs awaiting a label for `detector` (flagged by it, or audit-sampled),
        and how many await one in all."""
        key = self.keys.review(model, detector)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(key, 0, limit - 1)
            pipe.zcard(key)
            ids, waiting = pipe.execute()
        return [text(i) for i in ids], int(waiting)

    def lease(self, model: str, detector: str, limit: int, lease_s: float,
              by: str | None = None) -> tuple[list[str], int, float]:
        """Lease to one reviewer (key id `by`), for `lease_s`, the `limit` oldest outputs awaiting a label
        for `detector` that no other lease holds (see LEASE_REVIEW); with the queue's length
        and when the leases end."""
        now = self.clock()
        keys = [self.keys.review(model, detector), self.keys.review_leases(model, detector),
                self.keys.review_lease_holders(model, detector)]
        ids, waiting = self._lease(keys=keys, args=[repr(now), repr(lease_s), limit, by or ""])
        return [text(i) for i in ids], int(waiting), now + lease_s

    def release(self, model: str, detector: str, output_ids: Sequence[str]) -> list[bool]:
        """End the review leases on these outputs, so the next lease hands them out again; per id,
        whether a lease held it (a lapsed one counts as none)."""
        now = self.clock()
        leases = self.keys.review_leases(model, detector)
        with self.redis.pipeline(transaction=True) as pipe:  # read and end in one step
            for output_id in output_ids:
                pipe.zscore(leases, output_id)
            pipe.zrem(leases, *output_ids)
            pipe.hdel(self.keys.review_lease_holders(model, detector), *output_ids)
            found = pipe.execute()[:-2]
        return [t is not None and t > now for t in found]

    def leases(self, model: str, detector: str, output_ids: Sequence[str]) -> list[Lease | None]:
        """The review lease holding each output now, or None where none does."""
        if not output_ids:
            return []
        now = self.clock()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zmscore(self.keys.review_leases(model, detector), list(output_ids))
            pipe.hmget(self.keys.review_lease_holders(model, detector), list(output_ids))
            until, holders = pipe.execute()
        return [Lease(t, None if h is None else text(h)) if t is not None and t > now else None
                for t, h in zip(until, holders, strict=True)]

    def forget(self, model: str, detector: str, output_ids: Sequence[str]) -> None:
        """Drop ids from a review queue and its leases (their records expired)."""
        if output_ids:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.review(model, detector), *output_ids)
                pipe.zrem(self.keys.review_leases(model, detector), *output_ids)
                pipe.hdel(self.keys.review_lease_holders(model, detector), *output_ids)
                pipe.execute()
