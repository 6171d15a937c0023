"""`ScoringWorker`: an RQ SimpleWorker that loads models once and scores queued jobs in batches.

RQ runs one job at a time and forks per job by default; neither suits a model server. This
worker never forks (models stay loaded, CUDA stays usable) and, having taken one job, drains
further queued jobs up to `max_batch` outputs or `max_batch_wait_ms`, scores all their outputs
in one pass, then completes each job through RQ's normal bookkeeping.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from service.keys import LIVENESS_REFRESH_S, Keys
from service.queueing import ScoreQueues
from service.settings import Settings

from . import runtime
from .reaper import requeue_abandoned
from .scorer import BatchReport, Scorer

log = logging.getLogger(__name__)

REAPER_INTERVAL_S = 5.0
# Version claims last the records' lifetime (days): renewing hourly keeps a long-lived worker's.
CLAIM_RENEW_S = 3600.0
# Redis answers but refuses writes, for now: full (maxmemory reached under noeviction), or a
# replica (a failover demoted it). Like a lost Redis, it passes; the worker waits with its models
# loaded, where crashing would have it restarted in a loop, reloading them each time.
REDIS_REFUSING = (OutOfMemoryError, ReadOnlyError)
REDIS_LOST = (RedisConnectionError, RedisTimeoutError, *REDIS_REFUSING)
T = TypeVar("T")
REDIS_POLL_S = 0.5  # how often a worker waiting for Redis checks whether it answers


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
            pipe.zrangebyscore(self.keys.workers, "-inf", now - 86400)
            dead = pipe.execute()[2]
        if dead:  # forget workers dead for a day, so the set and the hash stay bounded
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.workers, *dead)
                pipe.hdel(self.keys.worker_detectors, *dead)
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


class ScoringWorker(SimpleWorker):
    """See the module docstring. Construct with `build_worker`."""

    scorer: Scorer
    heart: Heart
    settings: Settings
    last_report: BatchReport | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        # A SIGTERM from here on finishes the batch, then stops.
        self.set_state(WorkerStatus.BUSY)
        batch, ids = self._gather(job, queue)  # leases are taken as each job is popped
        job_ids = [j.id for j, _ in batch]
        try:
            try:
                report = self._riding_out_redis_loss(lambda: self.scorer.score(ids),
                                                     f"scoring a batch of {len(ids)} outputs")
                self.last_report = report
                log.info("batch %s: %d outputs from %d jobs, session calls %s", report.batch_id,
                         len(ids), len(batch), report.calls)
            except (StopRequested, *REDIS_LOST):
                raise  # stopped while Redis was away: the leases lapse and the reaper requeues the batch
            except Exception:
                # Each job then scores its own outputs and fails or retries through RQ as usual.
                log.exception("batched scoring failed; falling back to per-job scoring")
            for each, origin in batch:
                # Run again after an outage, the job finds its outputs scored and completes.
                self._riding_out_redis_loss(partial(self._complete, each, origin), f"completing job {each.id}")
        finally:
            self.heart.release(job_ids)
            self.set_state(WorkerStatus.IDLE)

    # RQ's own bookkeeping between jobs: its loop survives a lost Redis only inside its blocking pop,
    # and any other Redis error there (a refused write above all: Redis full, or read-only after a
    # failover) ended the worker. These ride it out like the rest. Given a pipeline, they only queue
    # commands, and whoever executes the pipeline handles its errors.
    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            return super().set_state(state, pipeline)
        return self._riding_out_redis_loss(lambda: super(ScoringWorker, self).set_state(state),
                                           f"marking the worker {state}")

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        return self._riding_out_redis_loss(lambda: super(ScoringWorker, self).heartbeat(timeout),
                                           "recording RQ's heartbeat")

    def run_maintenance_tasks(self) -> None:
        return self._riding_out_redis_loss(lambda: super(ScoringWorker, self).run_maintenance_tasks(),
                                           "cleaning RQ's registries")

    def _complete(self, job: Job, queue: Queue) -> None:
        self.perform_job(job, queue, self.prepare_execution(job))

    def _riding_out_redis_loss(self, step: Callable[[], T], what: str) -> T:
        # Without Redis nothing can be done for the batch: per-job scoring cannot write either, and
        # exiting would reload every model and leave the batch to the reaper's grace period. The
        # heart renews the batch's leases once Redis is back. A stop request (SIGTERM) while
        # waiting gives up; the reaper then recovers the batch.
        try:
            return riding_out_redis_loss(self.connection, step, what, stop=lambda: self._stop_requested,
                                         probe=self.heart.keys.write_probe)
        except REDIS_LOST:
            if self._stop_requested:
                raise StopRequested from None  # RQ's own way out of its loop: a clean stop, exit 0
            raise

    def request_stop(self, signum: int, frame: Any) -> None:
        # RQ stops an idle worker by raising StopRequested from this signal handler, wherever the main
        # thread is. Inside a `try/except Exception` (logging's emit, which reports an error and goes
        # on: the worker logs as it waits for a lost Redis) that stop was lost and the worker ran on
        # until a second signal. The flag stops every loop that reads it as well: RQ's own, and
        # waiting for Redis.
        self._stop_requested = True
        super().request_stop(signum, frame)

    def set_shutdown_requested_date(self) -> None:
        # Called from RQ's SIGTERM handler, while busy. With Redis away the date cannot be recorded,
        # and waiting for the batch to finish would mean waiting for Redis (for a job's own run, up
        # to the job timeout): stop now, by RQ's own way out of its loop. The batch's leases lapse
        # and the reaper requeues it once Redis is back.
        try:
            super().set_shutdown_requested_date()
        except REDIS_LOST:
            log.warning("stopping while Redis is away; the batch is left to the reaper")
            raise StopRequested from None

    def _gather(self, job: Job, queue: Queue) -> tuple[list[tuple[Job, Queue]], list[str]]:
        """Take more queued jobs until the batch is full or the wait is over (dynamic batching).
        Returns the jobs and all their output ids. Losing Redis ends the gathering: the batch
        taken so far is scored once Redis is back."""
        batch = [(job, queue)]
        self.heart.hold([job.id])
        ids = _output_ids(job)
        deadline = time.monotonic() + self.settings.max_batch_wait_ms / 1000
        while len(ids) < self.settings.max_batch:
            try:
                found = self.queue_class.dequeue_any(self._ordered_queues, None, connection=self.connection,
                                                     job_class=self.job_class, serializer=self.serializer)
            except REDIS_LOST:
                break  # a job popped as Redis went away is never seen here: the reaper requeues it
            if found is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
                continue
            self.heart.hold([found[0].id])
            batch.append(found)
            ids += _output_ids(found[0])
        return batch, ids

    def teardown(self) -> None:
        self.heart.stop()
        try:
            super().teardown()  # RQ records the worker's death in Redis
        except REDIS_LOST:
            # Stopped while Redis is away: the stop itself succeeded (exit 0, not a crash), and RQ's
            # record of this worker expires by itself (its TTL), as does the liveness it judges by.
            log.warning("stopped without telling Redis, which is away")


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


def _output_ids(job: Job) -> list[str]:
    try:
        args: Any = job.args
        ids = args[0]
        return [str(i) for i in ids] if isinstance(ids, list) else []
    except Exception:  # a malformed job fails in perform_job, where RQ records why
        return []


def build_worker(redis: Redis, settings: Settings, name: str | None = None) -> ScoringWorker:
    """Load detectors, install them for this process's jobs, and return a ready worker."""
    queues = ScoreQueues(redis, settings)
    scorer = runtime.build_scorer(redis, settings, name)
    runtime.install(scorer)
    worker = ScoringWorker(queues.ordered, connection=redis, serializer=JSONSerializer, name=scorer.worker)
    worker.scorer = scorer
    worker.settings = settings
    worker.heart = Heart(redis, settings, scorer.worker, queues, scorer)
    worker.heart.beat()
    worker.heart.start()
    return worker
