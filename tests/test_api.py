"""The HTTP API end to end: real gunicorn, real worker processes, real Redis."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from redis import Redis

from models.synthetic import keyword_score
from service import evaluation as ev
from service.detector_config import load_configs
from workers.detector import OnnxDetector, load_detectors

from .conftest import USER_HEADS
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
def detectors(shipped_models: Path, user_models: Path) -> dict[str, OnnxDetector]:
    """The same detectors the worker serves, loaded in the test process to predict its scores."""
    return load_detectors(load_configs([shipped_models, user_models]), ["CPUExecutionProvider"])


def expected(detectors: dict[str, OnnxDetector], name: str, response: str, prompt: str = "") -> float:
    return float(detectors[name].predict([(prompt, response)])[0])


@pytest.fixture(scope="module")
def stack(redis_url: str, shipped_models: Path, user_models: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("api")
    prefix = "api" + uuid.uuid4().hex[:8]
    # The shipped detectors plus a user's own ONNX classifier in a folder of their own.
    env = redline_env(redis_url, [shipped_models, user_models], prefix, max_outputs_per_request=50,
                      max_text_chars=1000, max_body_bytes=200_000, metrics_refresh_s=1)
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


INJURED = "He was stabbed in the chest and bled heavily before the ambulance arrived."
HARMLESS = "Just kill the process and restart the server, then the build goes green."


def test_submit_then_read_scores(stack: Stack, detectors: dict[str, OnnxDetector]) -> None:
    texts = [INJURED, HARMLESS, "Damn, that heck of a crap day"]
    r = stack.post("/v1/outputs", {"outputs": [{"model": "chat-v1", "response": t, "metadata": {"k": 1}}
                                               for t in texts]})
    assert r.status_code == 202
    items = r.json()["outputs"]
    assert [i["status"] for i in items] == ["queued"] * 3
    assert all(i["url"] == f"/v1/outputs/{i['id']}" for i in items)
    bodies = [_wait_scored(stack, item["id"]) for item in items]
    for body, text in zip(bodies, texts, strict=True):
        assert body["status"] == "scored" and body["model"] == "chat-v1" and body["metadata"] == {"k": 1}
        assert body["created_at"].endswith("Z") and body["scored_at"] >= body["created_at"]
        assert set(body["scores"]) == {"injury", "deception", "sycophancy", "profanity"}
        for det, score in body["scores"].items():
            value = expected(detectors, det, text)
            assert score["score"] == pytest.approx(value, abs=1e-5)
            assert 0.0 <= score["score"] <= 1.0
            assert score["flagged"] is (value >= detectors[det].threshold)
            assert score["threshold"] == detectors[det].threshold and score["version"] == detectors[det].version
    injured, harmless, swearing = bodies
    assert injured["scores"]["injury"]["flagged"] is True and harmless["scores"]["injury"]["flagged"] is False
    # The user's own model is served next to the shipped ones, with its exact scores.
    assert swearing["scores"]["profanity"]["score"] == pytest.approx(
        keyword_score(texts[2], USER_HEADS["profanity"]), abs=1e-5)
    assert swearing["scores"]["profanity"]["version"] == "user-7"


def test_client_id_and_detector_subset(stack: Stack) -> None:
    oid = "client-" + uuid.uuid4().hex[:6]
    r = stack.post("/v1/outputs", {"outputs": [{"id": oid, "model": "m", "response": INJURED,
                                                "detectors": ["injury"]}]})
    assert r.status_code == 202 and r.json()["outputs"][0]["id"] == oid
    body = _wait_scored(stack, oid)
    assert list(body["scores"]) == ["injury"] and body["scores"]["injury"]["flagged"] is True


def test_sync_score_returns_scores(stack: Stack, detectors: dict[str, OnnxDetector]) -> None:
    prompt = "I think the moon landing was faked. Do you agree? (A) Yes (B) No"
    r = stack.post("/v1/score", {"outputs": [{"model": "m", "prompt": prompt, "response": "(A) Yes"}],
                                 "timeout_ms": 10_000})
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert out["status"] == "scored" and out["prompt"] == prompt
    # The sycophancy detector reads the prompt: its score is the prompt+response pair's.
    assert out["scores"]["sycophancy"]["score"] == pytest.approx(
        expected(detectors, "sycophancy", "(A) Yes", prompt), abs=1e-5)
    assert out["scores"]["sycophancy"]["score"] != pytest.approx(expected(detectors, "sycophancy", "(A) Yes"), abs=1e-4)


def test_unknown_output_is_404(stack: Stack) -> None:
    r = stack.get("/v1/outputs/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_detectors_listed(stack: Stack) -> None:
    body = stack.get("/v1/detectors").json()
    by_name = {d["name"]: d for d in body["detectors"]}
    assert set(by_name) == {"injury", "deception", "sycophancy", "profanity"}
    shipped = load_configs([stack_models()])
    for name, config in shipped.items():
        assert by_name[name]["version"] == config.version and by_name[name]["threshold"] == config.threshold
        assert by_name[name]["target_fnr"] == config.target_fnr and by_name[name]["description"]
    assert by_name["profanity"]["version"] == "user-7"
    alive = stack.get("/readyz").json()["workers_alive"]
    assert alive >= 1
    for name, d in by_name.items():  # every live worker of this stack loads all four, from the API's files
        assert d["workers"] == {d["version"]: alive} and d["files_match"] is True, name


def stack_models() -> Path:
    from .conftest import SHIPPED_MODELS

    return SHIPPED_MODELS


def test_health_and_readiness(stack: Stack) -> None:
    assert stack.get("/healthz").json() == {"status": "ok"}
    ready = stack.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers_alive"] == 1


@pytest.mark.parametrize("body, status, code, fragment", [
    ({"outputs": []}, 422, "validation_failed", "empty"),
    ({"outputs": [{"model": "m"}]}, 422, "validation_failed", "outputs[0].response is required"),
    ({"outputs": [{"model": "m", "response": 3}]}, 422, "validation_failed", "must be a string"),
    ({"outputs": [{"model": "m", "response": "x", "detectors": ["nope"]}]}, 422, "unknown_detector", "nope"),
    ({"outputs": [{"model": "m", "response": "x"}] * 51}, 422, "too_large", "limit is 50"),
    ({"outputs": [{"model": "m", "response": "x" * 1001}]}, 422, "too_large", "limit is 1000"),
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


# Bodies Python's json module takes but JSON (or UTF-8, or Redis) does not: each was a 500, or, for
# NaN and overflowing numbers, stored and then served back as invalid JSON.
OUT = '{"outputs": [{"model": "m", "response": %s, "metadata": %s}]}'
NOT_JSON_BODIES = [
    (OUT % ('"ok"', '{"k": NaN}'), 400, "NaN is not a JSON value"),
    (OUT % ('"ok"', '{"k": -Infinity}'), 400, "-Infinity is not a JSON value"),
    (OUT % ('"ok"', '{"k": 1e400}'), 400, "out of range"),
    (OUT % ('"ok"', '{"k": 1%s}' % ("0" * 5000)), 400, "is not valid JSON"),
    (OUT % ('"ok"', '{"a": ' * 5000 + "1" + "}" * 5000), 400, "nests more than 32 levels"),
    (OUT % ('"ok"', '{"a": ' * 30 + "1" + "}" * 30), 400, "nests more than 32 levels (at outputs[0].metadata.a"),
    (OUT % ('"broken \\ud800 pair"', "{}"), 422, "outputs[0].response holds a lone UTF-16 surrogate"),
    (OUT % ('"ok"', '{"\\udfff": 1}'), 422, "outputs[0].metadata: a key holds a lone UTF-16 surrogate"),
    ('{"outputs": [{"model": "m", "response": "caf\xe9"}]}'.encode("latin-1"), 400, "not UTF-8"),
    ("", 400, "is not valid JSON"),
]


@pytest.mark.parametrize("path", ["/v1/outputs", "/v1/score"])
@pytest.mark.parametrize("body, status, fragment", NOT_JSON_BODIES)
def test_json_that_python_accepts_but_json_does_not_is_a_4xx_naming_it_and_stores_nothing(
        stack: Stack, path: str, body: str | bytes, status: int, fragment: str) -> None:
    before = stack.our_keys()
    r = requests.post(stack.base + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == ("invalid_json" if status == 400 else "validation_failed")
    assert fragment in error["message"], error
    assert stack.our_keys() == before


def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_content_length(stack: Stack) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: requests sends a generator chunked
        yield b'{"outputs": [{"model": "m", "response": "'
        yield from (b"x" * 10_000 for _ in range(30))  # 300 kB, the limit being 200 kB
        yield b'"}]}'

    before = stack.our_keys()
    r = requests.post(stack.base + "/v1/outputs", data=body(), headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413 and "exceeds 200000 bytes" in r.json()["error"]["message"], r.text
    small = [b'{"outputs": [{"model": "m", "response": "chunked and small"}]}']
    assert requests.post(stack.base + "/v1/outputs", data=iter(small), headers={"Content-Type": "application/json"},
                         timeout=30).status_code == 202
    assert stack.our_keys() == before + 1


def test_label_bodies_get_the_same_json_checks(stack: Stack) -> None:
    r = requests.put(stack.base + "/v1/outputs/x/labels", data='{"injury": NaN}',
                     headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    r = requests.post(stack.base + "/v1/labels", data='{"labels": ' + "[" * 40 + "]" * 40 + "}",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "nests more than 32" in r.json()["error"]["message"]


def test_deepest_allowed_metadata_and_surrogate_pairs_round_trip(stack: Stack) -> None:
    deep: object = "leaf \N{GRINNING FACE}"
    for _ in range(29):  # body > outputs > output > metadata: 29 more levels reach the limit of 32
        deep = {"a": deep}
    oid = "deep-" + uuid.uuid4().hex[:6]
    # ensure_ascii escapes the emoji as a surrogate pair, which is valid JSON and must stay accepted.
    body = json.dumps({"outputs": [{"id": oid, "model": "m", "response": "ok \N{GRINNING FACE}", "metadata": deep}]})
    assert "\\ud83d\\ude00" in body
    r = requests.post(stack.base + "/v1/outputs", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 202, r.text
    got = stack.get(f"/v1/outputs/{oid}").json()
    assert got["metadata"] == deep and got["response"] == "ok \N{GRINNING FACE}"


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
    wait_for(lambda: stack.get("/readyz").json()["workers_alive"] == 0)
    # Still ready: outputs are accepted and queued while no worker runs, so a load balancer must keep
    # sending them (a 503 here took every API out of rotation whenever the workers were down).
    assert stack.get("/readyz").status_code == 200
    r = stack.post("/v1/score", {"outputs": [{"model": "m", "response": "hello"}], "timeout_ms": 300})
    assert r.status_code == 202
    body = r.json()
    assert body["outputs"] == [] and body["pending"][0]["status"] == "queued"
    # The output is kept and scored once a worker is back.
    stack.workers.append(start_worker(stack.env, stack.tmp / "worker2.log", stack.redis, stack.prefix))
    assert _wait_scored(stack, body["pending"][0]["id"])["status"] == "scored"


def test_labels_join_scores_and_monitor_reports_exact_metrics(stack: Stack) -> None:
    model = "labels-" + uuid.uuid4().hex[:6]
    texts = INJURED_SET + HARMLESS_SET
    outputs = [{"model": model, "response": t, "detectors": ["injury", "deception"]} for t in texts]
    outputs[0]["labels"] = {"injury": 1}  # ground truth may come with the output
    r = stack.post("/v1/outputs", {"outputs": outputs})
    ids = [o["id"] for o in r.json()["outputs"]]
    r = requests.put(f"{stack.base}/v1/outputs/{ids[1]}/labels", json={"injury": 1, "deception": 0}, timeout=10)
    assert r.status_code == 200 and r.json()["labels"]["injury"] == {"label": 1, "result": "new"}
    bulk = [{"id": i, "detector": "injury", "label": 1 if n < len(INJURED_SET) else 0}
            for n, i in enumerate(ids) if n >= 2]
    r = stack.post("/v1/labels", {"labels": bulk})
    assert r.status_code == 200 and r.json()["new"] == len(bulk)
    r = stack.post("/v1/labels", {"labels": bulk[:1]})
    assert r.json()["unchanged"] == 1 and r.json()["new"] == 0
    bodies = [_wait_scored(stack, i) for i in ids]
    assert bodies[1]["labels"] == {"injury": 1, "deception": 0}
    scores = np.array([b["scores"]["injury"]["score"] for b in bodies])
    labels = np.array([1] * len(INJURED_SET) + [0] * len(HARMLESS_SET))
    got = stack.get(f"/v1/monitor?model={model}&detector=injury&window=24h").json()
    assert (got["positives"], got["negatives"], got["labeled"], got["scored"]) == (4, 4, 8, 8)
    assert got["auc"] == pytest.approx(ev.roc_auc(scores, labels), abs=1e-9)
    assert got["label_coverage"] == 1.0 and got["median_label_lag_s"] >= 0
    assert got["threshold"] == bodies[0]["scores"]["injury"]["threshold"] and got["target_fnr"] == 0.02
    # Fewer positives than REDLINE_MONITOR_MIN_POSITIVES (20): N-AUC and FNR are withheld, and it says so.
    assert got["fnr"] is None and "need 20" in got["withheld"]
    # The listing is computed in the background (REDLINE_METRICS_REFRESH_S, 1 s here): it catches up.
    def mine() -> list[dict]:
        listing = stack.get("/v1/monitor").json()["monitors"]
        rows = [m for m in listing if m["model"] == model and m["detector"] == "injury"]
        return rows if rows and all(m["labeled"] == 8 for m in rows) else []
    assert {m["window"] for m in wait_for(mine, timeout=30)} == {"count:1000", "1h", "24h", "7d"}


INJURED_SET = ["He was stabbed in the chest and bled heavily.", "She broke her leg in two places skiing.",
               "The driver was critically injured in the crash.", "I cut my hand badly and needed stitches."]
HARMLESS_SET = ["Kill the process and restart it.", "The cake needs two eggs.", "Our sales grew this year.",
                "The meeting moved to Friday."]


def test_label_errors(stack: Stack) -> None:
    oid = "lab-" + uuid.uuid4().hex[:6]
    stack.post("/v1/outputs", {"outputs": [{"id": oid, "model": "m", "response": "hello", "detectors": ["injury"]}]})
    cases = [
        (f"/v1/outputs/nope-{oid}/labels", {"injury": 1}, 404, "not_found"),
        (f"/v1/outputs/{oid}/labels", {"injury": 2}, 422, "validation_failed"),
        (f"/v1/outputs/{oid}/labels", {"injury": True}, 422, "validation_failed"),
        (f"/v1/outputs/{oid}/labels", {"nope": 1}, 422, "unknown_detector"),
        (f"/v1/outputs/{oid}/labels", {"deception": 1}, 422, "validation_failed"),  # not scored by it
        (f"/v1/outputs/{oid}/labels", {}, 422, "validation_failed"),
    ]
    for url, body, status, code in cases:
        r = requests.put(stack.base + url, json=body, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (url, body, r.text)
    r = stack.post("/v1/labels", {"labels": [{"id": oid, "detector": "injury", "label": 1},
                                             {"id": "missing-" + oid, "detector": "injury", "label": 1}]})
    assert r.status_code == 404 and "missing-" in r.json()["error"]["message"]
    assert stack.get(f"/v1/outputs/{oid}").json()["labels"] == {}  # nothing applied
    for query, status in [("?model=m&detector=injury&window=1y", 422), ("?model=m", 422),
                          ("?model=never-seen&detector=injury&window=1h", 404),
                          ("?model=m&detector=nope&window=1h", 404)]:
        assert stack.get("/v1/monitor" + query).status_code == status, query


def test_sync_score_with_the_smallest_timeout_answers(stack: Stack) -> None:
    # timeout_ms=1 once made a sub-millisecond BLPOP, which Redis reads as "block forever".
    r = stack.post("/v1/score", {"outputs": [{"model": "m", "response": "hello there"}], "timeout_ms": 1})
    assert r.status_code in (200, 202), r.text


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_each_api_on_a_host_has_its_own_gunicorn_control_socket_in_the_data_dir(
        redis_url: str, synthetic_models: Path, prefix: str, tmp_path: Path) -> None:
    """`gunicornc` reaches each API's own gunicorn through a socket per port in the data dir, not
    gunicorn's default ~/.gunicorn/gunicorn.ctl, which a second API would take over (and which a user
    without a writable home, as in the Docker image, cannot create)."""
    data = tmp_path / "var"
    env = {**redline_env(redis_url, synthetic_models, prefix, data_dir=data), "HOME": str(tmp_path / "home")}
    apis = [start_api(env, tmp_path / f"api{i}.log") for i in range(2)]
    try:
        for api, base in apis:
            control = data / f"gunicorn-api-{base.rsplit(':', 1)[1]}.ctl"
            shown = subprocess.run([sys.executable, "-m", "gunicorn.ctl.cli", "-s", str(control), "-c", "show workers",
                                    "-j"], capture_output=True, text=True, timeout=30)
            assert shown.returncode == 0, shown.stdout + shown.stderr + api.log()
            pids = [w["pid"] for w in json.loads(shown.stdout)["workers"]]
            assert len(pids) == 2 and {_parent(p) for p in pids} == {api.popen.pid}  # this API's own processes
    finally:
        for api, _ in apis:
            api.stop()
    assert not (tmp_path / "home").exists()


def test_every_response_names_its_request_and_so_does_the_access_log(stack: Stack) -> None:
    mine = "req-" + uuid.uuid4().hex
    bad = requests.post(stack.base + "/v1/outputs", json={"outputs": [{"model": "m", "response": 5}]},
                        headers={"X-Request-ID": mine}, timeout=30)
    assert bad.status_code == 422 and bad.headers["X-Request-ID"] == mine
    assert bad.json()["error"]["request_id"] == mine  # what a client quotes to the operator
    made = [stack.get("/healthz").headers["X-Request-ID"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made) and made[0] != made[1]
    for unusable in ("x" * 129, "two words", "semi;colon", ""):
        got = requests.get(stack.base + "/v1/detectors", headers={"X-Request-ID": unusable}, timeout=30)
        assert got.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", got.headers["X-Request-ID"]), unusable
    log = stack.tmp / "api.log"
    wait_for(lambda: [line for line in log.read_text().splitlines()
                      if '"POST /v1/outputs HTTP/1.1" 422' in line and line.endswith("ms " + mine)])


def test_gzip_request_bodies(stack: Stack) -> None:
    oid = "gz-" + uuid.uuid4().hex[:8]
    body = json.dumps({"outputs": [{"id": oid, "model": "m", "response": "hello there", "detectors": ["injury"]}]})
    sent = requests.post(stack.base + "/v1/outputs", data=gzip.compress(body.encode()), timeout=30,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert sent.status_code == 202, sent.text
    assert _wait_scored(stack, oid)["response"] == "hello there"
    # Inflated, the body is held to REDLINE_MAX_BODY_BYTES (200,000 here) like any other, before anything is stored.
    big = json.dumps({"outputs": [{"model": "m", "response": "x" * 900} for _ in range(50)] * 5}).encode()
    before = stack.our_keys()
    for payload, encoding, status, fragment in [
        (gzip.compress(big), "gzip", 413, "once decompressed"),
        (b"\x1f\x8b not really", "gzip", 400, "not valid gzip"),
        (body.encode(), "br", 415, "Content-Encoding 'br' is not supported"),
    ]:
        r = requests.post(stack.base + "/v1/outputs", data=payload, timeout=30,
                          headers={"Content-Type": "application/json", "Content-Encoding": encoding})
        assert r.status_code == status and fragment in r.json()["error"]["message"], (encoding, r.text)
    assert stack.our_keys() == before


def test_a_wrong_method_is_a_405_that_says_what_is_allowed(stack: Stack) -> None:
    r = requests.delete(stack.base + "/v1/labels", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS", "POST"}
    assert r.json()["error"]["message"] == "DELETE is not allowed on /v1/labels; allowed: GET, HEAD, OPTIONS, POST"


def test_many_outputs_are_read_in_one_request(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [f"many-{tag}-{n}" for n in range(3)]
    stack.post("/v1/outputs", {"outputs": [{"id": i, "model": "m", "response": f"text {i}"} for i in ids]})
    asked = [ids[2], f"nope-{tag}", ids[0], ids[2]]
    got = stack.get("/v1/outputs?" + "&".join(f"id={i}" for i in asked)).json()
    assert [o["id"] for o in got["outputs"]] == [ids[2], ids[0]]  # in the order asked, once each
    assert got["missing"] == [f"nope-{tag}"]
    assert got["outputs"][1] == stack.get(f"/v1/outputs/{ids[0]}").json()  # the same record as one by one
    # Ids up to the longest allowed, as many as the limit (50 here): a 6.6 KB request line, past gunicorn's
    # default 4,094 bytes.
    long_ids = [f"{n:02d}" + "x" * 126 for n in range(50)]
    r = stack.get("/v1/outputs?" + "&".join(f"id={i}" for i in long_ids))
    assert r.status_code == 200 and r.json()["missing"] == long_ids, r.text[:200]
    # Past gunicorn's 8,190-byte request line its own 414 answers, as the OpenAPI document says.
    r = stack.get("/v1/outputs?" + "&".join(f"id={i}" for i in long_ids + long_ids[:12]))
    assert r.status_code == 414
    assert "414" in stack.get("/openapi.json").json()["paths"]["/v1/outputs"]["get"]["responses"]
    for query, fragment in [("", "give the outputs to read as id parameters"),
                            ("?" + "&".join(f"id=x{n}" for n in range(51)), "51 ids; the limit is 50"),
                            # Counted as sent: the OpenAPI document's maxItems counts repeats (schemathesis).
                            ("?" + "&".join("id=same" for _ in range(51)), "51 ids; the limit is 50"),
                            ("?id=a%20b", "must match")]:
        r = stack.get("/v1/outputs" + query)
        assert r.status_code == 422 and fragment in r.json()["error"]["message"], (query, r.text)


def test_the_review_queue_lists_what_reviewers_must_label(stack: Stack, detectors: dict[str, OnnxDetector]) -> None:
    # GET /v1/review: the outputs the audit-weighted metrics need labeled (flagged by the detector, or
    # audit-sampled), oldest first, until a label arrives. Scored by the real worker, shipped detector.
    model = "review-" + uuid.uuid4().hex[:8]
    texts = ["He was stabbed in the chest and bled heavily before the ambulance arrived.",
             "The meeting moved to Thursday.", "She fractured her skull in the fall and is in intensive care.",
             "Water the tomatoes every other day.", "The driver was critically injured when the truck rolled over."]
    ids = [f"{model}-{n}" for n in range(len(texts))]
    for i, t in zip(ids, texts, strict=True):  # one at a time, so their order of arrival is defined
        r = stack.post("/v1/score", {"outputs": [{"id": i, "model": model, "response": t, "detectors": ["injury"]}],
                                     "timeout_ms": 20000})
        assert r.status_code == 200, r.text
    records = {o["id"]: o for o in stack.get("/v1/outputs?" + "&".join(f"id={i}" for i in ids)).json()["outputs"]}
    threshold = detectors["injury"].threshold
    flagged = [i for i, t in zip(ids, texts, strict=True) if expected(detectors, "injury", t) >= threshold]
    assert flagged == [ids[0], ids[2], ids[4]]  # the shipped detector catches these, passes the others
    # The audit sample is random (REDLINE_AUDIT_RATE): it is whatever the stored records say.
    want = [i for i in ids if i in flagged or records[i]["audit"]]
    queue = stack.get(f"/v1/review?model={model}&detector=injury").json()
    assert queue["model"] == model and queue["detector"] == "injury" and queue["waiting"] == len(want)
    assert [o["id"] for o in queue["outputs"]] == want
    for item in queue["outputs"]:
        assert item["reason"] == ("flagged" if item["id"] in flagged else "audit")
        assert item["leased_until"] is None and item["leased_by"] is None  # nobody has leased it
        assert {k: v for k, v in item.items() if k not in ("reason", "leased_until", "leased_by")} == \
            records[item["id"]]
    assert [o["id"] for o in stack.get(f"/v1/review?model={model}&detector=injury&limit=2").json()["outputs"]] == \
        want[:2]
    r = requests.put(f"{stack.base}/v1/outputs/{ids[0]}/labels", json={"injury": 1}, timeout=30)
    assert r.status_code == 200
    after = stack.get(f"/v1/review?model={model}&detector=injury").json()
    assert [o["id"] for o in after["outputs"]] == want[1:] and after["waiting"] == len(want) - 1
    assert stack.get(f"/v1/review?model={model}&detector=deception").json() == {
        "model": model, "detector": "deception", "waiting": 0, "outputs": []}  # not scored by it
    metrics = stack.get("/metrics").text
    assert f'redline_review_waiting{{detector="injury",model="{model}"}} {len(want) - 1}.0' in metrics
    for query, status, fragment in [("?model=m", 422, "detector="), ("?detector=injury", 422, "model="),
                                    ("?model=m&detector=nope", 404, "no detector 'nope'"),
                                    ("?model=m&detector=injury&limit=0", 422, "from 1 to 50"),
                                    ("?model=m&detector=injury&limit=51", 422, "from 1 to 50"),
                                    ("?model=m&detector=injury&limit=", 422, "'limit'"),
                                    ("?model=m&model=n&detector=injury", 422, "given 2 times")]:
        r = stack.get("/v1/review" + query)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (query, r.text)


def test_reviewers_leasing_from_one_queue_are_handed_different_outputs(stack: Stack) -> None:
    model = "lease-" + uuid.uuid4().hex[:8]
    texts = ["He was stabbed in the chest and bled heavily.", "She fractured her skull in the fall.",
             "The driver was critically injured when the truck rolled over.", "He broke both legs in the crash."]
    ids = [f"{model}-{n}" for n in range(len(texts))]
    for i, t in zip(ids, texts, strict=True):  # one at a time, so their order of arrival is defined
        r = stack.post("/v1/score", {"outputs": [{"id": i, "model": model, "response": t, "detectors": ["injury"]}],
                                     "timeout_ms": 20000})
        assert r.status_code == 200 and r.json()["outputs"][0]["scores"]["injury"]["flagged"], r.text
    first = stack.post("/v1/review/leases", {"model": model, "detector": "injury", "limit": 2, "lease_s": 600})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [o["id"] for o in body["outputs"]] == ids[:2] and body["waiting"] == 4 and body["lease_s"] == 600
    assert all(o["leased_until"] == body["leased_until"] and o["reason"] == "flagged" for o in body["outputs"])
    assert body["outputs"][0]["response"] == texts[0]  # with the texts a reviewer needs
    second = stack.post("/v1/review/leases", {"model": model, "detector": "injury"}).json()  # limit 50, 900 s
    assert [o["id"] for o in second["outputs"]] == ids[2:] and second["lease_s"] == 900
    assert stack.post("/v1/review/leases", {"model": model, "detector": "injury"}).json()["outputs"] == []
    listing = stack.get(f"/v1/review?model={model}&detector=injury").json()  # still lists all, with their leases
    assert [(o["id"], o["leased_until"]) for o in listing["outputs"]] == \
        [(i, body["leased_until"]) for i in ids[:2]] + [(i, second["leased_until"]) for i in ids[2:]]
    assert requests.put(f"{stack.base}/v1/outputs/{ids[0]}/labels", json={"injury": 1}, timeout=30).status_code == 200
    assert [o["id"] for o in stack.get(f"/v1/review?model={model}&detector=injury").json()["outputs"]] == ids[1:]
    skipped = stack.post("/v1/review/leases/release", {"model": model, "detector": "injury",
                                                        "ids": [ids[3], ids[0], "never-seen"]})
    assert skipped.status_code == 200 and skipped.json() == {"released": [ids[3]], "not_leased": [ids[0], "never-seen"]}
    assert [o["id"] for o in stack.post("/v1/review/leases", {"model": model, "detector": "injury"}
                                        ).json()["outputs"]] == [ids[3]]  # the skipped one, handed out again
    short = "lease-short-" + uuid.uuid4().hex[:8]  # an unlabeled output returns once its lease lapses
    assert stack.post("/v1/score", {"outputs": [{"id": short, "model": short, "response": texts[3],
                                                 "detectors": ["injury"]}], "timeout_ms": 20000}).status_code == 200
    assert [o["id"] for o in stack.post("/v1/review/leases", {"model": short, "detector": "injury",
                                                              "lease_s": 1}).json()["outputs"]] == [short]
    wait_for(lambda: [o["id"] for o in stack.post("/v1/review/leases", {"model": short, "detector": "injury"}
                                                  ).json()["outputs"]] == [short], timeout=10)
    for body_sent, status, fragment in [({"detector": "injury"}, 422, "'model'"),
                                        ({"model": model}, 422, "'detector'"),
                                        ({"model": model, "detector": "nope"}, 404, "no detector 'nope'"),
                                        ({"model": model, "detector": "injury", "limit": 0}, 422, "from 1 to 50"),
                                        ({"model": model, "detector": "injury", "limit": True}, 422, "'limit'"),
                                        ({"model": model, "detector": "injury", "lease_s": 86401}, 422,
                                         "'lease_s' must be an integer from 1 to 86400"),
                                        ({"model": model, "detector": "injury", "lease_s": 1.5}, 422, "'lease_s'"),
                                        ({"model": model, "detector": "injury", "who": "ana"}, 422, "unknown field")]:
        r = stack.post("/v1/review/leases", body_sent)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (body_sent, r.text)
    for body_sent, status, fragment in [({"model": model, "detector": "injury"}, 422, "'ids'"),
                                        ({"model": model, "detector": "injury", "ids": []}, 422, "'ids'"),
                                        ({"model": model, "detector": "injury", "ids": ["bad id"]}, 422, "must match"),
                                        ({"model": model, "detector": "nope", "ids": ["a"]}, 404, "no detector"),
                                        ({"detector": "injury", "ids": ["a"]}, 422, "'model'")]:
        r = stack.post("/v1/review/leases/release", body_sent)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (body_sent, r.text)


def test_an_output_is_erased_on_request(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    out = {"id": f"erase-{tag}-1", "model": f"erase-model-{tag}", "prompt": "my name is Ana Lopez",
           "response": "I broke my arm, Ana", "detectors": ["injury"], "labels": {"injury": 1}}
    assert stack.post("/v1/score", {"outputs": [out], "timeout_ms": 20000}).status_code == 200
    r = requests.delete(f"{stack.base}/v1/outputs/{out['id']}", timeout=30)
    assert r.status_code == 200 and r.json() == {"id": out["id"], "deleted": True}
    assert stack.get(f"/v1/outputs/{out['id']}").status_code == 404
    again = requests.delete(f"{stack.base}/v1/outputs/{out['id']}", timeout=30)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    # Nothing of Redline's in Redis holds its text or its id any more (RQ's job records hold ids, no text,
    # and expire on RQ's schedule).
    for key in stack.redis.scan_iter(f"{stack.prefix}:*"):
        kind = stack.redis.type(key)
        dump = b"".join(stack.redis.zrange(key, 0, -1) if kind == b"zset" else
                        stack.redis.hkeys(key) + stack.redis.hvals(key) if kind == b"hash" else
                        stack.redis.smembers(key) if kind == b"set" else [])
        assert b"Ana" not in dump and out["id"].encode() not in dump, key
    # The same id may be used again, as a new output.
    assert stack.post("/v1/outputs", {"outputs": [{**out, "response": "fine"}]}).json()["outputs"][0]["status"] == \
        "queued"
