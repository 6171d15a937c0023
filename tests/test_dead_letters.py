"""Dead letters (GET /v1/dead-letters, POST /v1/dead-letters/retry) against a real Redis: failed jobs and
outputs given up on are listed with why, and a retried output is scored exactly once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from redis import Redis

from service.app import create_app
from service.core import Redline
from service.keys import Keys
from service.settings import Settings
from service.store import NewOutput
from workers.reaper import requeue_abandoned
from workers.worker import build_worker


def test_dead_letters_list_failed_jobs_and_given_up_outputs(redis: Redis, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_attempts=2)
    core = Redline(settings, redis)
    # A job that raises every time (a malformed argument) lands in RQ's failed-job registry.
    core.queues.by_priority["default"].enqueue_call("workers.jobs.score_outputs", args=(12345,))
    build_worker(redis, settings).work(burst=True)
    # An output whose jobs keep getting lost: the reaper requeues it, then gives up.
    core.store.create([NewOutput(id="doomed", model="m", response="x", detectors=["injury"])], job_id="lost-1")
    redis.hset(core.keys.output("doomed"), "attempts", 2)
    assert requeue_abandoned(redis, core.store, core.queues, 0, 32, max_attempts=2) == 0
    record = core.store.get("doomed")
    assert record is not None and record["status"] == "failed"
    assert record["error"].startswith("gave up after 2 scoring attempts; last error: its job is gone")
    # Two jobs that raised while carrying outputs. One raises after the batch it rode in scored its
    # output (as when Redis blips during the job's own run): nothing is missing, so it is no dead
    # letter. The other raises with its output unscored (scoring itself failed).
    for i in ("saved", "stuck"):
        core.store.create([NewOutput(id=i, model="m", response="fine", detectors=["injury"])], job_id=f"raises-{i}")
    core.queues.by_priority["default"].enqueue_call("workers.jobs.score_outputs", args=(["saved"],),
                                                    kwargs={"unexpected": 1}, job_id="raises-saved")
    build_worker(redis, settings).work(burst=True)
    core.queues.enqueue(["stuck"], "raises-stuck")
    broken = build_worker(redis, settings)

    def scoring_fails(output_ids: list[str], job_ids: set[str] | None = None) -> None:
        raise RuntimeError("inference session lost")

    broken.scorer.score = scoring_fails  # type: ignore[method-assign,assignment]
    broken.work(burst=True)
    assert [r["status"] for r in core.store.get_many(["saved", "stuck"]) if r] == ["scored", "queued"]
    body = create_app(settings, redis).test_client().get("/v1/dead-letters").get_json()
    assert [o["id"] for o in body["outputs"]] == ["doomed"] and body["outputs"][0]["error"] == record["error"]
    jobs = {job["id"]: job for job in body["jobs"]}
    assert len(jobs) == 2 and "raises-stuck" in jobs and "raises-saved" not in jobs
    assert jobs["raises-stuck"]["output_ids"] == ["stuck"]
    assert jobs["raises-stuck"]["error"] == "RuntimeError: inference session lost"
    [malformed] = [job for job in body["jobs"] if job["output_ids"] == []]
    assert "TypeError" in malformed["error"] and malformed["queue"] == "default"
    redis.zrem(core.keys.pending, "stuck")  # left unscored on purpose
    assert redis.zcard(core.keys.pending) == 0


def test_an_output_that_fails_on_its_own_is_a_dead_letter(redis: Redis, settings: Settings) -> None:
    # A detector the API knows and this worker lacks (a rollout half done): the output fails at once,
    # alone, and GET /v1/dead-letters lists it with its reason, as it lists outputs given up on.
    core = Redline(settings, redis)
    core.store.create([NewOutput(id="half-rolled", model="m", response="x", detectors=["injury", "ghost"]),
                       NewOutput(id="fine", model="m", response="x", detectors=["injury"])], job_id="j-half")
    core.queues.enqueue(["half-rolled", "fine"], "j-half")
    worker = build_worker(redis, settings)
    worker.work(burst=True)
    assert [r["status"] for r in core.store.get_many(["half-rolled", "fine"]) if r] == ["failed", "scored"]
    [dead] = create_app(settings, redis).test_client().get("/v1/dead-letters").get_json()["outputs"]
    assert dead["id"] == "half-rolled" and dead["model"] == "m" and dead["status"] == "failed"
    assert dead["error"] == f"detectors not loaded by worker {worker.scorer.worker}: ghost"


def test_failed_outputs_retried_once_the_cause_is_fixed_are_scored_exactly_once(
        redis: Redis, settings: Settings, user_models: Path) -> None:
    # The API serves a user's "profanity" detector before any worker has it: outputs asking for it
    # fail. Once a worker that loads it runs, a retry scores them, once, and they leave the dead letters.
    api_settings = dataclasses.replace(settings, models_dirs=(*settings.models_dirs, user_models), max_pending=4)
    client = create_app(api_settings, redis).test_client()
    outputs = [{"id": f"p{i}", "model": "m", "response": "well damn", "detectors": ["profanity"]} for i in range(3)]
    assert client.post("/v1/outputs", json={"outputs": outputs}).status_code == 202
    assert client.post("/v1/outputs", json={"outputs": [{"id": "ok", "model": "m", "response": "hi",
                                                         "detectors": ["injury"]}]}).status_code == 202
    build_worker(redis, settings).work(burst=True)  # lacks profanity
    dead = client.get("/v1/dead-letters").get_json()["outputs"]
    assert sorted(o["id"] for o in dead) == ["p0", "p1", "p2"]
    # Over the backlog bound: refused, nothing changed.
    client.post("/v1/outputs", json={"outputs": [{"id": f"w{i}", "model": "m", "response": "hi",
                                                  "detectors": ["injury"]} for i in range(3)]})
    full = client.post("/v1/dead-letters/retry", json={"ids": ["p0", "p1"]})
    assert full.status_code == 429 and full.headers["Retry-After"] and full.get_json()["error"]["code"] == "overloaded"
    assert client.get("/v1/outputs/p0").get_json()["status"] == "failed"
    build_worker(redis, settings).work(burst=True)  # scores the w outputs
    r = client.post("/v1/dead-letters/retry", json={"ids": ["p0", "p1", "p0", "ok", "nope"]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"requeued": ["p0", "p1"], "skipped": [{"id": "ok", "status": "scored"}],
                            "missing": ["nope"]}
    again = client.post("/v1/dead-letters/retry", json={"ids": ["p0"]}).get_json()
    assert again == {"requeued": [], "skipped": [{"id": "p0", "status": "queued"}], "missing": []}
    assert [o["id"] for o in client.get("/v1/dead-letters").get_json()["outputs"]] == ["p2"]
    fixed = build_worker(redis, dataclasses.replace(settings, models_dirs=api_settings.models_dirs))
    fixed.work(burst=True)
    for i in ("p0", "p1"):
        record = client.get(f"/v1/outputs/{i}").get_json()
        assert record["status"] == "scored" and "error" not in record, record
        assert record["scores"]["profanity"]["version"] == "user-7" and record["scores"]["profanity"]["flagged"]
    assert client.get("/v1/outputs/p2").get_json()["status"] == "failed"  # not asked for: left alone
    assert client.post("/v1/dead-letters/retry", json={"ids": ["p0"]}).get_json()["skipped"] == [
        {"id": "p0", "status": "scored"}]
    fixed.work(burst=True)
    counters = Redline(api_settings, redis).store.counters()
    assert counters["scored|profanity|m"] == 2 and counters["failed|m"] == 3
    assert redis.zcard(Keys(settings.queue_prefix).pending) == 0
    for body, what in (({"ids": []}, "empty"), ({"ids": [7]}, "strings"), ({"ids": ["a b"]}, "must match"),
                       ({"ids": ["p2"], "all": True}, "unknown field"), ({}, "strings")):
        bad = client.post("/v1/dead-letters/retry", json=body)
        assert bad.status_code == 422 and what in bad.get_json()["error"]["message"], (body, bad.get_json())


def test_a_failed_job_does_not_name_an_erased_output(redis: Redis, settings: Settings) -> None:
    # RQ keeps a failed job's record, with its output ids, for days: once an output is erased
    # (DELETE, a privacy request), the listing no longer names it, and a job left with none goes.
    core = Redline(settings, redis)
    core.store.create([NewOutput(id=i, model="m", response="fine", detectors=["injury"]) for i in ("keep", "erase")],
                      job_id="raises-two")
    core.queues.enqueue(["keep", "erase"], "raises-two")
    broken = build_worker(redis, settings)

    def scoring_fails(output_ids: list[str], job_ids: set[str] | None = None) -> None:
        raise RuntimeError("inference session lost")

    broken.scorer.score = scoring_fails  # type: ignore[method-assign,assignment]
    broken.work(burst=True)
    client = create_app(settings, redis).test_client()
    [job] = client.get("/v1/dead-letters").get_json()["jobs"]
    assert job["id"] == "raises-two" and job["output_ids"] == ["keep", "erase"]
    assert client.delete("/v1/outputs/erase").status_code == 200
    [job] = client.get("/v1/dead-letters").get_json()["jobs"]
    assert job["output_ids"] == ["keep"]
    assert client.delete("/v1/outputs/keep").status_code == 200
    listing = client.get("/v1/dead-letters")
    assert listing.get_json() == {"outputs": [], "next": None, "jobs": []} and b"erase" not in listing.get_data()


def test_dead_letters_page_with_a_cursor_that_survives_retries(redis: Redis, settings: Settings) -> None:
    # Failures written in one step share their time: the pages must order ties too, and a retry between
    # two pages (taking entries off the list) must neither skip nor repeat the rest.
    core = Redline(settings, redis)
    ids = [f"d{i}" for i in range(7)]
    core.store.create([NewOutput(id=i, model="m", response="x", detectors=["injury"]) for i in ids], job_id="j")
    assert core.store.finish_failed({i: "boom" for i in ids[:5]}) == 5
    core.store.finish_failed({"d5": "later"})
    core.store.finish_failed({"d6": "latest"})
    client = create_app(settings, redis).test_client()
    first = client.get("/v1/dead-letters?limit=3").get_json()
    assert [o["id"] for o in first["outputs"]] == ["d6", "d5", "d4"] and first["next"]
    assert client.post("/v1/dead-letters/retry", json={"ids": ["d6", "d5", "d4"]}).status_code == 200
    second = client.get(f"/v1/dead-letters?limit=3&cursor={first['next']}").get_json()
    assert [o["id"] for o in second["outputs"]] == ["d3", "d2", "d1"] and second["jobs"] == []
    third = client.get(f"/v1/dead-letters?limit=3&cursor={second['next']}").get_json()
    assert [o["id"] for o in third["outputs"]] == ["d0"] and third["next"] is None
    whole = client.get("/v1/dead-letters").get_json()
    assert [o["id"] for o in whole["outputs"]] == ["d3", "d2", "d1", "d0"] and whole["next"] is None
    for bad in ("nope", "W10", first["next"] + "&cursor=" + first["next"]):
        r = client.get(f"/v1/dead-letters?cursor={bad}")
        assert r.status_code == 422 and "cursor" in r.get_json()["error"]["message"], (bad, r.get_json())
    redis.zrem(core.keys.pending, "d4", "d5", "d6")  # retried, left unscored on purpose
