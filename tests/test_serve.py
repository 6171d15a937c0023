"""`redline serve` as a user runs it: embedded Redis, API and a worker from one command."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from redis import Redis

from workers.cpus import allowed_cpus

from .procs import ROOT, ctrl_c, is_ready, start_serve, wait_for, worker_pid

pytestmark = pytest.mark.integration


def test_serve_starts_everything_scores_restarts_workers_and_stops_cleanly(tmp_path: Path) -> None:
    # As in the README: no Redis URL, default models (the shipped detectors).
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({"REDLINE_DATA_DIR": str(tmp_path / "var"), "REDLINE_WORKERS": "1"})
    serve, base = start_serve(env, tmp_path / "serve.log")
    try:
        injured = "I slipped on the rocks and broke my wrist; there was blood everywhere."
        r = requests.post(base + "/v1/score", json={"outputs": [{"model": "m", "response": injured}]}, timeout=10)
        assert r.status_code == 200, serve.log()
        scores = r.json()["outputs"][0]["scores"]
        assert set(scores) == {"injury", "deception", "sycophancy"}
        assert scores["injury"]["flagged"] is True

        # The embedded Redis listens on a unix socket in the data dir, with AOF persistence on.
        redis = Redis.from_url(f"unix://{tmp_path / 'var' / 'redis.sock'}")
        assert redis.config_get("appendonly")["appendonly"] == "yes"
        [name] = [n.decode() for n in redis.zrange("redline:workers", 0, -1)]
        os.kill(worker_pid(name), signal.SIGKILL)

        def replaced() -> bool:
            names = {n.decode() for n in redis.zrange("redline:workers", 0, -1)}
            return bool(names - {name})

        wait_for(replaced, timeout=60)
        baking = "Preheat the oven to 180 degrees and bake for twenty minutes."
        r = requests.post(base + "/v1/score", json={"outputs": [{"model": "m", "response": baking}]}, timeout=10)
        assert r.status_code == 200 and r.json()["outputs"][0]["scores"]["injury"]["flagged"] is False

        # The embedded Redis dies (OOM killer, say): serve restarts it from its append-only file.
        r = requests.post(base + "/v1/outputs", json={"outputs": [{"model": "m", "response": injured}]}, timeout=10)
        assert r.status_code == 202, r.text
        kept = r.json()["outputs"][0]["id"]
        wait_for(lambda: requests.get(f"{base}/v1/outputs/{kept}", timeout=5).json()["status"] == "scored")
        time.sleep(1.5)  # appendfsync everysec: a hard kill may lose the last second, not this
        old_pid = int(redis.info("server")["process_id"])
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: "embedded Redis is back" in serve.log(), timeout=60)
        wait_for(lambda: is_ready(base), timeout=60)
        assert int(redis.info("server")["process_id"]) != old_pid
        after = requests.get(f"{base}/v1/outputs/{kept}", timeout=5).json()
        assert after["status"] == "scored" and after["scores"]["injury"]["flagged"] is True
        r = requests.post(base + "/v1/score", json={"outputs": [{"model": "m", "response": injured}]}, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["scores"]["injury"]["flagged"] is True, r.text
        assert serve.alive()
    finally:
        code, log = ctrl_c(serve)
    assert code == 0, log
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/healthz", timeout=2)
    assert not (tmp_path / "var" / "redis.sock").exists()  # Redis shut down too


class FakeProc:
    def __init__(self, alive: bool = True) -> None:
        self.alive, self.pid, self.returncode = alive, 1, 1

    def poll(self) -> int | None:
        return None if self.alive else 1


def test_worker_restarts_back_off_while_a_worker_keeps_dying() -> None:
    from service.supervisor import WorkerSlot

    spawned: list[FakeProc] = []

    def spawn(role: str) -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    slot = WorkerSlot(spawn, clock=lambda: 0.0)
    restart_times = []
    now = 0.0
    while len(restart_times) < 6 and now < 1000:
        slot.proc.alive = False  # crashes as soon as it starts
        before = len(spawned)
        slot.tick(now)
        if len(spawned) > before:
            restart_times.append(now)
        now += 0.25
    gaps = [b - a for a, b in zip(restart_times, restart_times[1:], strict=False)]
    assert restart_times[0] == 0.0  # the first death restarts at once
    assert gaps == sorted(gaps) and gaps[-1] >= 8 * gaps[0]  # then backs off
    slot.proc.alive = True
    slot.tick(now + 61)  # stayed up a minute: the next death restarts at once again
    slot.proc.alive = False
    before = len(spawned)
    slot.tick(now + 61.5)
    assert len(spawned) == before + 1


def test_serve_shares_the_cpus_out_among_its_workers(tmp_path: Path) -> None:
    """Each worker sizes its onnxruntime pool to the CPUs it may use: under one `redline serve` they
    would together run REDLINE_WORKERS times too many threads, so serve gives each its share."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({"REDLINE_DATA_DIR": str(tmp_path / "var"), "REDLINE_WORKERS": "2"})
    serve, _ = start_serve(env, tmp_path / "serve.log")
    try:
        wait_for(lambda: serve.log().count("encoder.onnx on CPUExecutionProvider") == 2, timeout=60)
    finally:
        code, log = ctrl_c(serve)
    assert code == 0, log
    share, whole = max(1, allowed_cpus() // 2), (tmp_path / "serve.log").read_text()
    assert whole.count(f"encoder.onnx on CPUExecutionProvider, intra-op threads: {share}\n") == 2, whole


def test_serve_refuses_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    # gunicorn retried the bind for 5 s and exited, after serve had started Redis and a worker for nothing.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
        env.update({"REDLINE_DATA_DIR": str(tmp_path / "var"), "REDLINE_PORT": str(port)})
        run = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"redline: 127.0.0.1:{port} is in use (another Redline API, or another server)" in run.stderr
    assert not (tmp_path / "var" / "redis.sock").exists() and "embedded Redis" not in run.stderr


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_data_dir_that_cannot_be_made_is_named_before_starting_anything(tmp_path: Path, command: str) -> None:
    # It was a traceback from the embedded Redis (serve) or from gunicorn's first hook (api).
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "var"  # under a regular file: not even root can make it
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({"REDLINE_DATA_DIR": str(data_dir), "REDLINE_REDIS_URL": "redis://127.0.0.1:1/0"} if command == "api"
               else {"REDLINE_DATA_DIR": str(data_dir)})
    run = subprocess.run([sys.executable, "-m", "service.cli", command], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().endswith(f"redline: REDLINE_DATA_DIR {data_dir} cannot be created: Not a directory")
    assert "Traceback" not in run.stderr


def test_an_ipv6_host_is_bracketed_where_gunicorn_binds_it() -> None:
    # "::1:8080" was read by gunicorn as host "::1:8080" with port "", and it refused to start.
    from gunicorn.util import parse_address

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}, "REDLINE_HOST": "::1"}
    read_bind = "import runpy; print(runpy.run_path('deploy/gunicorn.conf.py')['bind'])"
    bind = subprocess.run([sys.executable, "-c", read_bind], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()
    assert bind == "[::1]:8080" and parse_address(bind) == ("::1", 8080)


@pytest.mark.parametrize("host, problem", [
    ("redline.invalid", "does not resolve"),  # .invalid never resolves (RFC 6761)
    ("192.0.2.1", "cannot be bound here (Cannot assign requested address)"),  # TEST-NET-1: no host has it
])
def test_an_address_gunicorn_cannot_bind_is_named_at_once(host: str, problem: str) -> None:
    # gunicorn retried for 5 s and said "Can't connect to ('999.1.1.1', 8080)".
    from service.errors import ConfigError
    from service.settings import Settings
    from service.supervisor import require_free_port

    with pytest.raises(ConfigError, match=re.escape(f"REDLINE_HOST {host!r} {problem}")):
        require_free_port(Settings(host=host, port=8080))
