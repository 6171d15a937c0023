"""`Heart`: a scoring worker's background liveness, job leases, version-claim renewal and reaper."""

from __future__ import annotations

import json
import logging
import threading
import time

from redis import Redis

from service.keys import LIVENESS_REFRESH_S, Keys
from service.queueing import ScoreQueues
from service.settings import Settings

from .reaper import requeue_abandoned
from .redis_loss import REDIS_LOST
from .scorer import Scorer

log = logging.getLogger(__name__)

REAPER_INTERVAL_S = 5.0
# Version claims last the records' lifetime (days): renewing hourly keeps a long-lived worker's.
CLAIM_RENEW_S = 3600.0


class Heart(threading.Thread):
    """Background liveness: SimpleWorker does not heartbeat while a job runs, so a long batch
    would look dead. Refreshes this worker's liveness, the leases of the jobs it holds, and
    runs the reaper (one process at a time) every few seconds."""

    def __init__(self, redis: Redis, settings: Settings, name: str, queues: ScoreQueues, scorer: Scorer) -> None:
        super().__init__(name="redline-heart", daemon=True)
        self.redis, self.settings, self.worker_name = redis, settings, name
        self.keys = Keys(settings.queue_prefix)
        self.queues, self.scorer = queues, scorer
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_reap = 0.0
        self._last_claim = time.monotonic()  # build_scorer has just claimed
        # The detectors a process loads are fixed for its life (see beat).
        self._served = json.dumps({name: d.version for name, d in sorted(scorer.detectors.items())})
        # Apart from `_served`, whose format APIs of earlier releases read.
        self._files = json.dumps(dict(sorted(scorer.fingerprints.items())))

    def hold(self, job_ids: list[str]) -> None:
        with self._lock:
            self.held.update(job_ids)
        try:
            self._refresh_leases(job_ids)
        except REDIS_LOST:  # taken when Redis is back, by the next beat
            log.warning("could not lease %d jobs: Redis is unreachable", len(job_ids))

    def release(self, job_ids: list[str]) -> None:
        with self._lock:
            self.held.difference_update(job_ids)
        if job_ids:
            try:
                self.redis.delete(*[self.keys.lease(j) for j in job_ids])
            except REDIS_LOST:  # the leases expire by themselves (worker_ttl_s)
                log.warning("could not release the leases of %d jobs: Redis is unreachable", len(job_ids))

    def beat(self) -> None:
        """Publish liveness now (also called once before the first job), by Redis's clock, which
        readers compare it with: this host's may differ from theirs."""
        now = self.scorer.store.clock()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers, {self.worker_name: now})
            # What it serves, with every beat: a Redis that lost its data learns it again.
            pipe.hset(self.keys.worker_detectors, self.worker_name, self._served)
            pipe.hset(self.keys.worker_files, self.worker_name, self._files)
            pipe.zrangebyscore(self.keys.workers, "-inf", now - 86400)
            dead = pipe.execute()[-1]
        if dead:  # forget workers dead for a day, so the set and the hash stay bounded
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.workers, *dead)
                pipe.hdel(self.keys.worker_detectors, *dead)
                pipe.hdel(self.keys.worker_files, *dead)
                pipe.execute()
        with self._lock:
            held = list(self.held)
        self._refresh_leases(held)

    def run(self) -> None:
        while not self._stop.wait(LIVENESS_REFRESH_S):
            try:
                self.beat()
                self._maybe_reap()
                self._maybe_renew_claims()
            except REDIS_LOST as exc:  # Redis restarting: keep beating once it is back
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stop.set()
        try:
            self.redis.zrem(self.keys.workers, self.worker_name)
        except Exception:
            log.warning("could not deregister worker %s", self.worker_name)

    def _refresh_leases(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for job in job_ids:
                pipe.set(self.keys.lease(job), self.worker_name, ex=self.settings.worker_ttl_s)
            pipe.execute()

    def _maybe_renew_claims(self) -> None:
        if time.monotonic() - self._last_claim < CLAIM_RENEW_S:
            return
        self._last_claim = time.monotonic()
        for name, fingerprint in self.scorer.fingerprints.items():
            version = self.scorer.detectors[name].version
            held = self.scorer.store.versions.claim(name, version, fingerprint)
            if held is not None:  # only after the claim lapsed (a Redis that lost its data) and another took it
                log.error("detector %s %r is now claimed by other files (%s; this worker has %s): its windows "
                          "mix two models' scores", name, version, held[:16], fingerprint[:16])

    def _maybe_reap(self) -> None:
        if time.monotonic() - self._last_reap < REAPER_INTERVAL_S:
            return
        self._last_reap = time.monotonic()
        if self.redis.set(self.keys.reaper_lock, self.worker_name, nx=True, ex=int(REAPER_INTERVAL_S)):
            requeue_abandoned(self.redis, self.scorer.store, self.queues, self.settings.requeue_after_s,
                              self.settings.max_batch, max_attempts=self.settings.max_attempts)
