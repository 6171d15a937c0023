"""Review queues: per (deployed model, detector), the scored outputs awaiting a reviewer's label, those
the detector flagged and those in the audit sample, and the leases that hand reviewers working in
parallel different outputs. The score-writing and label scripts (`store_scripts`) add to and take
from a queue in the same step as the score or label; this reads them and manages the leases."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis import Redis

from . import store_scripts as scripts
from .keys import Keys, text


class ReviewQueues:
    """The review queues and leases under one key prefix; `clock` is the store's (Redis's) clock."""

    def __init__(self, redis: Redis, keys: Keys, clock: Callable[[], float]) -> None:
        self.redis, self.keys, self.clock = redis, keys, clock
        self._lease = redis.register_script(scripts.LEASE_REVIEW)

    def awaiting(self, model: str, detector: str, limit: int) -> tuple[list[str], int]:
        """The `limit` oldest outputs awaiting a label for `detector` (flagged by it, or audit-sampled),
        and how many await one in all."""
        key = self.keys.review(model, detector)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(key, 0, limit - 1)
            pipe.zcard(key)
            ids, waiting = pipe.execute()
        return [text(i) for i in ids], int(waiting)

    def lease(self, model: str, detector: str, limit: int, lease_s: float) -> tuple[list[str], int, float]:
        """Lease to one reviewer, for `lease_s`, the `limit` oldest outputs awaiting a label for `detector`
        that no other lease holds (see store_scripts.LEASE_REVIEW); with the queue's length and when the leases end."""
        now = self.clock()
        keys = [self.keys.review(model, detector), self.keys.review_leases(model, detector)]
        ids, waiting = self._lease(keys=keys, args=[repr(now), repr(lease_s), limit])
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
            found = pipe.execute()[:-1]
        return [t is not None and t > now for t in found]

    def leased_until(self, model: str, detector: str, output_ids: Sequence[str]) -> list[float | None]:
        """When each output's review lease ends (unix seconds), or None where none holds it now."""
        if not output_ids:
            return []
        now = self.clock()
        until = self.redis.zmscore(self.keys.review_leases(model, detector), list(output_ids))
        return [t if t is not None and t > now else None for t in until]

    def forget(self, model: str, detector: str, output_ids: Sequence[str]) -> None:
        """Drop ids from a review queue and its leases (their records expired)."""
        if output_ids:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.review(model, detector), *output_ids)
                pipe.zrem(self.keys.review_leases(model, detector), *output_ids)
                pipe.execute()
