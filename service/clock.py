"""The one clock every Redline process compares timestamps by: Redis's."""

from __future__ import annotations

from typing import cast

from redis import Redis


def redis_time(redis: Redis) -> float:
    """Redis's own clock, in Unix seconds.

    Every timestamp that one process writes and another compares (worker liveness, how long an output
    has waited, window edges, queue wait) is read from here, not from the host: API and workers may
    run on machines whose clocks differ, and a worker whose clock ran 15 s behind looked dead to every
    API (so /readyz failed), while one ahead or behind requeued outputs too early or far too late.
    """
    seconds, micros = cast("tuple[int, int]", redis.time())
    return seconds + micros / 1e6
