"""Riding out a lost Redis: a worker waits for it with its models loaded, where exiting would have
`redline serve` or an orchestrator restart it in a loop, reloading them each time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Redis answers but refuses writes, for now: full (maxmemory reached under noeviction), or a
# replica (a failover demoted it). Like a lost Redis, it passes; the worker waits with its models
# loaded, where crashing would have it restarted in a loop, reloading them each time.
REDIS_REFUSING = (OutOfMemoryError, ReadOnlyError)
REDIS_LOST = (RedisConnectionError, RedisTimeoutError, *REDIS_REFUSING)
T = TypeVar("T")
REDIS_POLL_S = 0.5  # how often a worker waiting for Redis checks whether it answers


def riding_out_redis_loss(redis: Redis, step: Callable[[], T], what: str,
                          stop: Callable[[], bool] = lambda: False, probe: str | None = None) -> T:
    """Run `step`; if Redis goes away or refuses writes meanwhile, wait for it (see `wait_for_redis`)
    and run `step` again. Only for steps that are safe to run twice: scoring skips outputs whose
    scores were already written (one atomic script per batch), and RQ's bookkeeping is keyed by job id."""
    while True:
        try:
            return step()
        except REDIS_LOST as exc:
            log.warning("lost Redis while %s: %s", what, exc)
            wait_for_redis(redis, stop=stop, probe=probe)
            log.warning("%s again", what[0].upper() + what[1:])


def wait_for_redis(redis: Redis, stop: Callable[[], bool] = lambda: False, remind_every_s: float = 30.0,
                   probe: str | None = None) -> None:
    """Block until Redis answers (and, given a `probe` key, takes a write to it: a full or read-only
    Redis answers PING), saying so now and every `remind_every_s`; raise a ConnectionError if
    `stop()` turns true first. Used by a worker started before its Redis and by one that lost Redis
    mid-batch or mid-job: waiting keeps the models loaded, where exiting would have `redline serve`
    or an orchestrator restart it in a loop, reloading them each time."""
    said: float | None = None
    while not stop():
        try:
            if probe is None:
                redis.ping()
            else:
                redis.set(probe, "1", px=int(REDIS_POLL_S * 4000))
        except REDIS_LOST as exc:
            if said is None or time.monotonic() - said >= remind_every_s:
                log.warning("waiting for Redis: %s", exc)
                said = time.monotonic()
            time.sleep(REDIS_POLL_S)
            continue
        if said is not None:
            log.warning("Redis answers")
        return
    raise RedisConnectionError("stopped while waiting for Redis")
