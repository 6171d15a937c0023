"""`redline submit` against a real gunicorn and worker: a backfill past the backlog bound waits out the
429s and is stored whole, and a second run of the same file scores nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from service import api_client
from service.keys import Keys

from .procs import ROOT, redline_env, start_api, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture()
def served(redis_url: str, synthetic_models: Path, tmp_path: Path) -> Iterator[dict]:
    """A real gunicorn with a backlog bound below the backfill, and no worker until a test starts one."""
    prefix = "sub" + uuid.uuid4().hex[:8]
    env = redline_env(redis_url, synthetic_models, prefix, max_pending=15, retry_after_s=1)
    api, base = start_api(env, tmp_path / "api.log")
    procs = [api]
    served = {"base": base, "prefix": prefix, "tmp": tmp_path, "redis_url": redis_url,
              "start_worker": lambda: procs.append(start_worker(env, tmp_path / "worker.log",
                                                                Redis.from_url(redis_url), prefix))}
    try:
        yield served
    finally:
        for proc in reversed(procs):
            proc.stop()


def _submit(served: dict, path: Path, *options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "submit", str(path), "--url", served["base"],
                           *map(str, options)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_backfill_waits_out_backpressure_and_a_rerun_scores_nothing_twice(served: dict) -> None:
    path = served["tmp"] / "backfill.jsonl"
    ids = [f"bf-{n}" for n in range(40)]
    lines = [{"id": i, "model": "bot", "response": "bleeding" if n % 3 else "a calm day", "detectors": ["injury"]}
             for n, i in enumerate(ids)]
    lines += [{"model": "bot", "response": "no id here", "detectors": ["injury"]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # No worker yet: the second request meets the backlog bound (15) and waits; a worker then drains it.
    running = subprocess.Popen([sys.executable, "-m", "service.cli", "submit", str(path), "--url", served["base"],
                                "--chunk", "10"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    def refusals() -> int:
        return (served["tmp"] / "api.log").read_text().count('"POST /v1/outputs HTTP/1.1" 429')

    # More 429s than a plain API call waits out (api_client.RETRIES): a backfill waits as long as it lasts.
    wait_for(lambda: refusals() > api_client.RETRIES + 1, timeout=60)
    assert running.poll() is None  # still waiting, not failed
    served["start_worker"]()
    _, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr
    assert "41 outputs from" in stderr and "41 queued" in stderr and "1 without an id" in stderr

    def status(i: str) -> str:
        return str(requests.get(f"{served['base']}/v1/outputs/{i}", timeout=30).json()["status"])

    wait_for(lambda: all(status(i) == "scored" for i in ids), timeout=120)
    again = _submit(served, path, "--chunk", 10)  # the 40 with ids are known; the one without is new
    assert again.returncode == 0 and "40 scored" in again.stderr and "1 queued" in again.stderr, again.stderr
    # Scored: the 40 once each, and the line without an id twice (a new output each run).
    counters = Redis.from_url(served["redis_url"])
    wait_for(lambda: counters.hget(Keys(served["prefix"]).counters, "scored|injury|bot") == b"42", timeout=60)
    # A bad field in the second request: it is refused whole, the first was stored; a bad line stops it first.
    bad = served["tmp"] / "bad.jsonl"
    bad.write_text("".join(json.dumps(line) + "\n" for line in [
        {"id": "ok-1", "model": "bot", "response": "fine"}, {"id": "ok-2", "model": "bot", "response": "fine"},
        {"id": "ok-3", "model": "bot", "response": 7}]))
    refused = _submit(served, bad, "--chunk", 2)
    assert refused.returncode == 1 and "lines 3-3 were refused" in refused.stderr and "422 from" in refused.stderr
    assert "the 2 outputs before them were" in refused.stderr, refused.stderr
    assert requests.get(f"{served['base']}/v1/outputs/ok-3", timeout=30).status_code == 404
    assert requests.get(f"{served['base']}/v1/outputs/ok-1", timeout=30).status_code == 200
    bad.write_text('{"id": "never", "model": "bot", "response": "x"}\n[1, 2]\n')
    stopped = _submit(served, bad)
    assert stopped.returncode == 2 and "line 2: not a JSON object" in stopped.stderr
    assert requests.get(f"{served['base']}/v1/outputs/never", timeout=30).status_code == 404


def test_a_long_wait_says_so_once_a_minute(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # With no live worker the backlog never drains: the wait must not look like a hang.
    from service import outputs_client

    slept: list[float] = []
    monkeypatch.setattr(outputs_client.time, "sleep", slept.append)
    patience = outputs_client._Patience()
    for _ in range(25):
        patience(5.0)  # Retry-After 5 s, 25 times: 125 s
    said = capsys.readouterr().err.splitlines()
    assert slept == [5.0] * 25
    assert said == [f"redline submit: waiting for the backlog to drain (429) or Redis (503), {n} s so far; are "
                    "workers running?" for n in (60, 120)]
