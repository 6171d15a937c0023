"""The HTTP API end to end: real gunicorn, real worker processes, real Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from models.synthetic import keyword_score
from service import evaluation as ev
from service.detector_config import load_configs
from workers.detector import OnnxDetector

from .conftest import USER_HEADS
from .procs import redline_env, start_api, start_worker, wait_for
from .stack import Stack, expected, wait_scored

pytestmark = pytest.mark.integration


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
    bodies = [wait_scored(stack, item["id"]) for item in items]
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
    body = wait_scored(stack, oid)
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


def test_detectors_listed(stack: Stack, shipped_models: Path) -> None:
    body = stack.get("/v1/detectors").json()
    by_name = {d["name"]: d for d in body["detectors"]}
    assert set(by_name) == {"injury", "deception", "sycophancy", "profanity"}
    shipped = load_configs([shipped_models])
    for name, config in shipped.items():
        assert by_name[name]["version"] == config.version and by_name[name]["threshold"] == config.threshold
        assert by_name[name]["target_fnr"] == config.target_fnr and by_name[name]["description"]
    assert by_name["profanity"]["version"] == "user-7"
    alive = stack.get("/readyz").json()["workers_alive"]
    assert alive >= 1
    for name, d in by_name.items():  # every live worker of this stack loads all four, from the API's files
        assert d["workers"] == {d["version"]: alive} and d["files_match"] is True, name


def test_health_and_readiness(stack: Stack) -> None:
    assert stack.get("/healthz").json() == {"status": "ok"}
    ready = stack.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers_alive"] == 1


def test_conflicting_resubmit_is_409_and_same_content_is_idempotent(stack: Stack) -> None:
    oid = "dup-" + uuid.uuid4().hex[:6]
    first = {"outputs": [{"id": oid, "model": "m", "response": "hello"}]}
    assert stack.post("/v1/outputs", first).status_code == 202
    wait_scored(stack, oid)
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
    assert wait_scored(stack, body["pending"][0]["id"])["status"] == "scored"


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
    bodies = [wait_scored(stack, i) for i in ids]
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


def test_many_outputs_are_read_in_one_request(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [f"many-{tag}-{n}" for n in range(3)]
    stack.post("/v1/outputs", {"outputs": [{"id": i, "model": "m", "response": f"text {i}"} for i in ids]})
    for i in ids:  # scored first: a record the worker writes between the two reads would differ
        wait_scored(stack, i)
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
