"""ScoringWorker in-process (burst mode) against a real Redis: batching, JSON jobs, recovery."""

import dataclasses
import json
import logging
import os
import signal
import threading
import time
import zlib
from typing import Any

import pytest
from redis import Redis

from models.synthetic import DEFAULT_HEADS, keyword_score
from service.core import Redline
from service.embedded_redis import EmbeddedRedis
from service.settings import Settings
from service.store import NewOutput
from workers import jobs
from workers.reaper import requeue_abandoned
from workers.worker import ScoringWorker, build_worker

from .procs import run_burst

TEXTS = ["bleeding and a broken arm", "a calm day in the park", "that claim is a lie", "hello world"]


def _submit(core: Redline, n_requests: int, per_request: int) -> list[str]:
    ids = []
    for r in range(n_requests):
        outs = [NewOutput(id=f"o{r}-{i}", model="m", response=TEXTS[(r + i) % len(TEXTS)])
                for i in range(per_request)]
        for o in outs:
            o.detectors = ["deception", "injury"]
        core.submit(outs)
        ids += [o.id for o in outs]
    return ids


def _fall_back_to_each_jobs_run(worker: ScoringWorker) -> list[int]:
    """Break the worker's batch path with an error that is not Redis's, so that each job then scores
    its outputs in its own run (the same scorer). Returns the number of outputs of every scoring
    call: the batch's first, then each job run's."""
    score = worker.scorer.score
    calls: list[int] = []

    def scoring(output_ids: list[str], job_ids: set[str] | None = None) -> Any:
        calls.append(len(output_ids))
        if len(calls) == 1:
            raise RuntimeError("batch path broken")
        return score(output_ids, job_ids)

    worker.scorer.score = scoring  # type: ignore[method-assign]
    return calls


def test_queued_jobs_are_scored_in_one_batch_one_session_call_per_length(redis: Redis, settings: Settings) -> None:
    core = Redline(settings, redis)
    ids = _submit(core, n_requests=5, per_request=2)
    run_burst(redis, settings)
    records = [core.store.get(i) for i in ids]
    assert all(r and r["status"] == "scored" for r in records)
    batches = {r["batch"]["id"] for r in records if r}
    assert len(batches) == 1
    # TEXTS are of 2 and of 5-6 tokens: on a CPU a call holds texts within 1.25x of each other's length.
    assert records[0]["batch"]["size"] == 10  # type: ignore[index]
    assert sorted(records[0]["batch"]["session_calls"]) == [2, 8]  # type: ignore[index]
    for r in records:
        assert r is not None
        for det in ("injury", "deception"):
            expected = keyword_score(r["response"], DEFAULT_HEADS[det])
            assert r["scores"][det]["score"] == pytest.approx(expected, abs=1e-5)
            assert r["scores"][det]["flagged"] == (expected >= 0.5)
            assert r["scores"][det]["version"] == "synthetic-1"
    assert core.store.counters()["scored|injury|m"] == 10
    assert redis.zcard(core.keys.pending) == 0


def test_batches_are_capped_at_max_batch(redis: Redis, settings: Settings) -> None:
    settings = Settings(**{**settings.__dict__, "max_batch": 4})
    core = Redline(settings, redis)
    ids = _submit(core, n_requests=5, per_request=2)
    run_burst(redis, settings)
    sizes: dict[str, int] = {}
    for r in core.store.get_many(ids):
        assert r is not None and r["status"] == "scored"
        sizes[r["batch"]["id"]] = r["batch"]["size"]
    assert sorted(sizes.values()) == [2, 4, 4]


def test_jobs_in_redis_are_json_not_pickle(redis: Redis, settings: Settings) -> None:
    core = Redline(settings, redis)
    ids = _submit(core, n_requests=1, per_request=3)
    job_id = core.store.get(ids[0])["job"]  # type: ignore[index]
    data = redis.hget(f"rq:job:{job_id}", "data")
    assert data is not None
    payload = json.loads(zlib.decompress(data))
    assert payload[0] == "workers.jobs.score_outputs" and payload[2] == [ids]


def test_a_worker_restarted_after_an_unclean_death_starts_at_once(redis: Redis, settings: Settings) -> None:
    # A container's restarted worker has the same hostname and PID (1) as the one that was killed
    # (OOM, SIGKILL) before RQ recorded its death; two workers built in one process are the same case.
    killed = build_worker(redis, settings)
    killed.register_birth()
    restarted = build_worker(redis, settings)
    try:
        restarted.register_birth()  # before: ValueError "There exists an active worker named ..."
        assert restarted.name != killed.name
    finally:
        for worker in (restarted, killed):
            worker.heart.stop()
            worker.register_death()


def test_a_worker_that_loses_redis_mid_batch_waits_and_scores_the_batch_once(
        own_redis: tuple[EmbeddedRedis, Redline], caplog: pytest.LogCaptureFixture) -> None:
    server, core = own_redis
    redis = core.redis
    ids = _submit(core, n_requests=3, per_request=2)
    worker = build_worker(redis, core.settings)
    done = threading.Event()
    try:
        write = worker.scorer.store.finish_scored
        writes: list[int | str] = []  # what each write call did: outputs written, or "lost"

        def restart_redis_later() -> None:
            time.sleep(1.5)
            server.start()
            done.wait(60)  # Redis dies with the thread that started it (die_with_parent)

        def redis_goes_away_before_the_first_write(*args: Any, **kwargs: Any) -> int:
            if not writes:  # inference is done; Redis stops now and is back 1.5 s later
                server.stop()
                threading.Thread(target=restart_redis_later, daemon=True).start()
            try:
                written = write(*args, **kwargs)
            except Exception:
                writes.append("lost")
                raise
            writes.append(written)
            return written

        worker.scorer.store.finish_scored = redis_goes_away_before_the_first_write  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="workers"):
            worker.work(burst=True)  # before the fix this raised: per-job scoring cannot reach Redis either

        records = core.store.get_many(ids)
        assert [r["status"] if r else None for r in records] == ["scored"] * len(ids)
        assert len({r["batch"]["id"] for r in records if r}) == 1  # the same batch, scored on its second try
        # The batch's write met no Redis, its second try wrote all six; the jobs' own runs then found
        # nothing left to score.
        assert writes[:2] == ["lost", len(ids)] and set(writes[2:]) <= {0}
        assert core.store.counters()["scored|injury|m"] == len(ids)  # once each
        assert redis.zcard(core.keys.pending) == 0
        assert "lost Redis while scoring a batch of 6 outputs" in caplog.text
        assert "Redis answers" in caplog.text and "Scoring a batch of 6 outputs again" in caplog.text
        assert "per-job" not in caplog.text
    finally:
        server.stop()  # before its starting thread ends, which would SIGKILL it (die_with_parent)
        done.set()


def test_a_job_whose_own_run_loses_redis_waits_and_completes(
        own_redis: tuple[EmbeddedRedis, Redline], caplog: pytest.LogCaptureFixture) -> None:
    # The narrow window a batch cannot cover: Redis goes away during a job's own run and is back
    # before RQ records the outcome. Before, RQ recorded the ConnectionError as the job's failure
    # (a dead letter, and its outputs left to the reaper); now the run waits for Redis and goes on.
    server, core = own_redis
    redis = core.redis
    ids = _submit(core, n_requests=1, per_request=2)
    worker = build_worker(redis, core.settings)
    calls = _fall_back_to_each_jobs_run(worker)
    write = worker.scorer.store.finish_scored
    writes: list[str] = []

    def redis_blips_in_the_jobs_run(*args: Any, **kwargs: Any) -> int:
        if writes:
            return write(*args, **kwargs)
        writes.append("blip")
        server.stop()
        try:
            return write(*args, **kwargs)
        finally:
            server.start()  # back before the exception reaches RQ

    worker.scorer.store.finish_scored = redis_blips_in_the_jobs_run  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="workers"):
        worker.work(burst=True)

    records = core.store.get_many(ids)
    assert [r["status"] if r else None for r in records] == ["scored"] * len(ids)
    assert calls == [len(ids)] * 3  # the batch, the job's own run, and that run again once Redis is back
    assert core.store.counters()["scored|injury|m"] == len(ids)
    [job_id] = {r["job"] for r in records if r}
    queue = core.queues.by_priority["default"]
    assert queue.failed_job_registry.get_job_ids() == []
    assert job_id in queue.finished_job_registry.get_job_ids()
    assert redis.zcard(core.keys.pending) == 0
    assert f"lost Redis while running job {job_id}" in caplog.text


@pytest.mark.parametrize("waiting_in", ["batch", "job's own run"])
def test_a_sigterm_while_waiting_for_redis_mid_batch_stops_cleanly_and_the_batch_is_recovered(
        own_redis: tuple[EmbeddedRedis, Redline], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        waiting_in: str) -> None:
    server, core = own_redis
    redis = core.redis
    # Leases lapse fast once the worker is gone. Were the stop ignored, a job's own wait would end
    # only at the job timeout: short here, so that the test fails rather than hangs.
    settings = dataclasses.replace(core.settings, worker_ttl_s=1, job_timeout_s=15)
    core = Redline(settings, redis)
    ids = _submit(core, n_requests=2, per_request=2)
    worker = build_worker(redis, settings)
    if waiting_in == "job's own run":
        attempts = _fall_back_to_each_jobs_run(worker)
        ride_out = jobs.riding_out_redis_loss
        ended_by: list[str] = []

        def how_the_jobs_wait_ended(*args: Any, **kwargs: Any) -> Any:
            try:
                return ride_out(*args, **kwargs)
            except BaseException as exc:
                ended_by.append(type(exc).__name__)
                raise

        monkeypatch.setattr(jobs, "riding_out_redis_loss", how_the_jobs_wait_ended)
    write = worker.scorer.store.finish_scored
    writes: list[str] = []

    def redis_goes_away_then_sigterm(*args: Any, **kwargs: Any) -> int:
        writes.append("tried")
        server.stop()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # RQ's handler gets it
        return write(*args, **kwargs)

    worker.scorer.store.finish_scored = redis_goes_away_then_sigterm  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="workers.worker"):
        worker.work(burst=True)  # returns: before, the stop escaped RQ's loop as a ConnectionError
    assert writes == ["tried"] and worker._stop_requested
    assert "stopping while Redis is away" in caplog.text and "stopped without telling Redis" in caplog.text
    assert "unhandled exception" not in caplog.text
    if waiting_in == "job's own run":
        assert attempts == [len(ids), 2] and ended_by == ["StopRequested"]  # not JobTimeoutException

    server.start()
    assert [r["status"] for r in core.store.get_many(ids) if r] == ["queued"] * len(ids)  # nothing half-written
    time.sleep(settings.worker_ttl_s + 0.5)  # the stopped worker's leases lapse
    assert requeue_abandoned(redis, core.store, core.queues, 0, settings.max_batch) == len(ids)
    build_worker(redis, settings).work(burst=True)
    assert [r["status"] for r in core.store.get_many(ids) if r] == ["scored"] * len(ids)
    assert core.store.counters()["scored|injury|m"] == len(ids)  # once each


def test_a_stop_swallowed_where_it_was_raised_still_stops_the_worker(redis: Redis, settings: Settings) -> None:
    # RQ stops an idle worker by raising StopRequested from its SIGTERM handler, wherever the main
    # thread is. Code there that catches Exception swallows it (logging's emit reports and goes on),
    # and a worker waiting for a lost Redis then ran on until a second signal (seen once in CI).
    from redis.exceptions import ConnectionError as RedisConnectionError
    from rq.exceptions import StopRequested

    worker = build_worker(redis, settings)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            worker.request_stop(signal.SIGTERM, None)
        except StopRequested:
            pass  # swallowed, as logging.Handler.emit would
        outcome: list[str] = []

        def lost_redis() -> None:
            raise RedisConnectionError("Redis is away")

        def ride_out() -> None:
            try:
                worker._riding_out_redis_loss(lost_redis, "recording RQ's heartbeat")
            except StopRequested:
                outcome.append("stopped")

        rider = threading.Thread(target=ride_out, daemon=True)
        rider.start()
        rider.join(timeout=10)
        assert outcome == ["stopped"]  # gave up waiting at once, RQ's clean way out
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        worker.heart.stop()


