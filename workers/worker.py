"""`ScoringWorker`: an RQ SimpleWorker that loads models once and scores queued jobs in batches.

RQ runs one job at a time and forks per job by default; neither suits a model server. This
worker never forks (models stay loaded, CUDA stays usable) and, having taken one job, drains
further queued jobs up to `max_batch` outputs or `max_batch_wait_ms`, scores all their outputs
in one pass, then completes each job through RQ's normal bookkeeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from service.queueing import BULK_EVERY, BULK_LANES, ScoreQueues
from service.settings import Settings

from . import handoff, runtime
from .heart import Heart
from .redis_loss import REDIS_LOST, riding_out_redis_loss
from .scorer import BatchReport, Scorer

log = logging.getLogger(__name__)
T = TypeVar("T")


class ScoringWorker(SimpleWorker):
    """See the module docstring. Construct with `build_worker`."""

    scorer: Scorer
    heart: Heart
    settings: Settings
    lanes: ScoreQueues  # the queues it was built to drain (`self.queues`), by lane
    last_report: BatchReport | None = None
    batches_started = 0
    bulk_next = 0  # the bulk lane the next bulk batch tries first

    def reorder_queues(self, reference_queue: Queue) -> None:
        """Where the next batch starts (RQ calls this after each dequeue of its loop: once a batch).
        One batch in BULK_EVERY starts from the bulk lanes, right after sync requests, so a tenant past
        its fair share is slowed, never starved; the others start in lane order (see `_gather` for
        how a batch fills). The bulk lanes are taken in turn: the next bulk batch starts from the lane
        after the one this batch began in, so tenants flooding at once share the bulk batches."""
        self.batches_started += 1
        bulk_keys = self._bulk_keys()
        if reference_queue.key in bulk_keys:
            self.bulk_next = (bulk_keys.index(reference_queue.key) + 1) % len(bulk_keys)
        others, bulk = self._lanes_but_bulk(self.bulk_next)
        at = 1 if self.batches_started % BULK_EVERY == BULK_EVERY - 1 else len(others)
        self._ordered_queues = others[:at] + bulk + others[at:]

    def _bulk_keys(self) -> list[str]:
        """The bulk lanes' keys, in lane order. By key: RQ hands back a new Queue object with each
        dequeued job."""
        return [self.lanes.by_priority[lane].key for lane in BULK_LANES]

    def _lanes_but_bulk(self, start: int) -> tuple[list[Queue], list[Queue]]:
        """The lanes in order without the bulk lanes, and the bulk lanes from the `start`th on, round."""
        bulk = [self.lanes.by_priority[lane] for lane in BULK_LANES]
        keys = {q.key for q in bulk}
        return [q for q in self.queues if q.key not in keys], bulk[start:] + bulk[:start]

    def execute_job(self, job: Job, queue: Queue) -> None:
        # A SIGTERM from here on finishes the batch, then stops.
        self.set_state(WorkerStatus.BUSY)
        batch, ids = self._gather(job, queue)  # leases are taken as each job is popped
        job_ids = [j.id for j, _ in batch]
        try:
            try:
                report = self._riding_out_redis_loss(lambda: self.scorer.score(ids, set(job_ids)),
                                                     f"scoring a batch of {len(ids)} outputs")
                self.last_report = report
                log.info("batch %s: %d outputs from %d jobs, session calls %s", report.batch_id,
                         len(ids), len(batch), report.calls)
                if report.handed_off and not self._stop_requested:
                    time.sleep(handoff.PAUSE_S)  # let the workers that can score them take them
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
        # Bulk-lane jobs ride only in batches that began in a bulk lane (and those take their own lane's
        # first): in another, a tenant's backfill job would make the other tenants' outputs wait for its
        # scores too.
        bulk_keys = self._bulk_keys()
        began_in = bulk_keys.index(queue.key) if queue.key in bulk_keys else None
        others, bulk = self._lanes_but_bulk(began_in or 0)
        lanes = others if began_in is None else others + bulk
        while len(ids) < self.settings.max_batch:
            try:
                found = self.queue_class.dequeue_any(lanes, None, connection=self.connection,
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
    scorer = runtime.build_scorer(redis, settings, name, queues)
    runtime.install(scorer)
    worker = ScoringWorker(queues.ordered, connection=redis, serializer=JSONSerializer, name=scorer.worker)
    worker.scorer = scorer
    worker.settings = settings
    worker.lanes = queues
    worker.heart = Heart(redis, settings, scorer.worker, queues, scorer)
    worker.heart.beat()
    worker.heart.start()
    return worker
