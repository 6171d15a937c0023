"""The HTTP API end to end: real gunicorn, real worker processes, real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from models.synthetic import DEFAULT_HEADS, keyword_score

from .procs import Proc, redline_env, start_api, start_worker, wait_for

pytestmark = pytest.mark.integration


class Stack:
    def __init__(self, base: str, redis: Redis, prefix: str, env: dict[str, str], tmp: Path) -> None:
        self.base, self.redis, self.prefix, self.env, self.tmp = base, redis, prefix, env, tmp
        self.workers: list[Proc] = []

    def post(self, path: str, body: object, **kw: object) -> requests.Response:
        return requests.post(self.base + path, json=body, timeout=30, **kw)  # type: ignore[arg-type]

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=30)

    def our_keys(self) -> int:
        return len(list(self.redis.scan_iter(f"{self.prefix}:output:*")))


@pytest.fixture(scope="module")
def stack(redis_url: str, synthetic_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("api")
    prefix = "api" + uuid.uuid4().hex[:8]
    env = redline_env(redis_url, synthetic_models, prefix, max_outputs_per_request=50, max_text_chars=1000,
                      max_body_bytes=200_000)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp / "api.log")
    s = Stack(base, redis, prefix, env, tmp)
    s.workers.append(start_worker(env, tmp / "worker.log", redis, prefix))
    yield s
    for w in s.workers:
        w.stop()
    api.stop()


def _wait_scored(stack: Stack, output_id: str) -> dict:
    def done() -> dict | None:
        body = stack.get(f"/v1/outputs/{output_id}").json()
        return body if body["status"] != "queued" else None
    return wait_for(done)


def test_submit_then_read_scores(stack: Stack) -> None:
    texts = ["bleeding and a broken arm", "a calm day in the park", "that is a lie"]
    r = stack.post("/v1/outputs", {"outputs": [{"model": "chat-v1", "response": t, "metadata": {"k": 1}}
                                               for t in texts]})
    assert r.status_code == 202
    items = r.json()["outputs"]
    assert [i["status"] for i in items] == ["queued"] * 3
    assert all(i["url"] == f"/v1/outputs/{i['id']}" for i in items)
    for item, text in zip(items, texts, strict=True):
        body = _wait_scored(stack, item["id"])
        assert body["status"] == "scored" and body["model"] == "chat-v1" and body["metadata"] == {"k": 1}
        assert body["created_at"].endswith("Z") and body["scored_at"] >= body["created_at"]
        assert set(body["scores"]) == {"injury", "deception"}
        for det, score in body["scores"].items():
            expected = keyword_score(text, DEFAULT_HEADS[det])
            assert score["score"] == pytest.approx(expected, abs=1e-5)
            assert score["flagged"] is (expected >= 0.5)
            assert score["threshold"] == 0.5 and score["version"] == "synthetic-1"


def test_client_id_and_detector_subset(stack: Stack) -> None:
    oid = "client-" + uuid.uuid4().hex[:6]
    r = stack.post("/v1/outputs", {"outputs": [{"id": oid, "model": "m", "response": "fake hoax",
                                                "detectors": ["deception"]}]})
    assert r.status_code == 202 and r.json()["outputs"][0]["id"] == oid
    body = _wait_scored(stack, oid)
    assert list(body["scores"]) == ["deception"] and body["scores"]["deception"]["flagged"] is True


def test_sync_score_returns_scores(stack: Stack) -> None:
    r = stack.post("/v1/score", {"outputs": [{"model": "m", "prompt": "how?", "response": "blood blood"}],
                                 "timeout_ms": 10_000})
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert out["status"] == "scored" and out["scores"]["injury"]["score"] == pytest.approx(
        keyword_score("blood blood", DEFAULT_HEADS["injury"]), abs=1e-5)
    assert out["prompt"] == "how?"


def test_unknown_output_is_404(stack: Stack) -> None:
    r = stack.get("/v1/outputs/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_detectors_listed(stack: Stack) -> None:
    body = stack.get("/v1/detectors").json()
    by_name = {d["name"]: d for d in body["detectors"]}
    assert set(by_name) == {"injury", "deception"}
    assert by_name["injury"]["version"] == "synthetic-1" and by_name["injury"]["threshold"] == 0.5
    assert "keyword" in by_name["injury"]["description"]


def test_health_and_readiness(stack: Stack) -> None:
    assert stack.get("/healthz").json() == {"status": "ok"}
    ready = stack.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers_alive"] == 1


@pytest.mark.parametrize("body, status, code, fragment", [
    ({"outputs": []}, 422, "validation_failed", "empty"),
    ({"outputs": [{"model": "m"}]}, 422, "validation_failed", "outputs[0].response is required"),
    ({"outputs": [{"model": "m", "response": 3}]}, 422, "validation_failed", "must be a string"),
    ({"outputs": [{"model": "m", "response": "x", "detectors": ["nope"]}]}, 422, "unknown_detector", "nope"),
    ({"outputs": [{"model": "m", "response": "x"}] * 51}, 413, "too_large", "limit is 50"),
    ({"outputs": [{"model": "m", "response": "x" * 1001}]}, 413, "too_large", "limit is 1000"),
    ({"outputs": [{"response": "x" * 1000, "model": "m"}] * 50, "pad": "y" * 200_000}, 413, "request_entity_too_large",
     "exceeds 200000 bytes"),
    ([1, 2], 422, "validation_failed", "JSON object"),
])
def test_bad_input_gets_a_json_4xx_and_stores_nothing(stack: Stack, body: object, status: int, code: str,
                                                      fragment: str) -> None:
    before = stack.our_keys()
    for path in ("/v1/outputs", "/v1/score"):
        r = stack.post(path, body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and fragment in error["message"]
    assert stack.our_keys() == before


def test_not_json_is_400(stack: Stack) -> None:
    r = requests.post(stack.base + "/v1/outputs", data="{not json", headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(stack.base + "/v1/outputs", data="model=m", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_conflicting_resubmit_is_409_and_same_content_is_idempotent(stack: Stack) -> None:
    oid = "dup-" + uuid.uuid4().hex[:6]
    first = {"outputs": [{"id": oid, "model": "m", "response": "hello"}]}
    assert stack.post("/v1/outputs", first).status_code == 202
    _wait_scored(stack, oid)
    again = stack.post("/v1/outputs", first)
    assert again.status_code == 202 and again.json()["outputs"][0]["status"] == "scored"
    changed = stack.post("/v1/outputs", {"outputs": [{"id": oid, "model": "m", "response": "other"}]})
    assert changed.status_code == 409 and oid in changed.json()["error"]["message"]


def test_sync_score_without_workers_answers_202_with_pending_ids(stack: Stack) -> None:
    for w in stack.workers:
        w.stop()
    stack.workers.clear()
    wait_for(lambda: stack.get("/readyz").status_code == 503)
    assert stack.get("/readyz").json()["workers_alive"] == 0
    r = stack.post("/v1/score", {"outputs": [{"model": "m", "response": "hello"}], "timeout_ms": 300})
    assert r.status_code == 202
    body = r.json()
    assert body["outputs"] == [] and body["pending"][0]["status"] == "queued"
    # The output is kept and scored once a worker is back.
    stack.workers.append(start_worker(stack.env, stack.tmp / "worker2.log", stack.redis, stack.prefix))
    assert _wait_scored(stack, body["pending"][0]["id"])["status"] == "scored"
