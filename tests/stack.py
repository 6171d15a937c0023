"""The API stack of the end-to-end tests (a real gunicorn and worker process on a prefix of their own,
serving the shipped detectors and a user's), and what they predict its scores with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import requests
from redis import Redis

from workers.detector import OnnxDetector

from .procs import Proc, redline_env, start_api, start_worker, wait_for


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


def run_stack(redis_url: str, models: list[Path], prefix: str, tmp: Path) -> Iterator[Stack]:
    """The body of the `stack` fixture (conftest): one API and one worker, stopped afterwards."""
    env = redline_env(redis_url, models, prefix, max_outputs_per_request=50,
                      max_text_chars=1000, max_body_bytes=200_000, metrics_refresh_s=1)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp / "api.log")
    s = Stack(base, redis, prefix, env, tmp)
    s.workers.append(start_worker(env, tmp / "worker.log", redis, prefix))
    yield s
    for w in s.workers:
        w.stop()
    api.stop()


def expected(detectors: dict[str, OnnxDetector], name: str, response: str, prompt: str = "") -> float:
    return float(detectors[name].predict([(prompt, response)])[0])


def wait_scored(stack: Stack, output_id: str) -> dict:
    def done() -> dict | None:
        body = stack.get(f"/v1/outputs/{output_id}").json()
        return body if body["status"] != "queued" else None
    return wait_for(done)
