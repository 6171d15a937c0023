"""The fleet as the workers' heartbeats show it (service.fleet): which detector versions live workers serve."""

import dataclasses
import json
from pathlib import Path

from redis import Redis

from service.core import Redline
from service.settings import Settings
from workers.worker import build_worker

from .procs import copy_models


def test_workers_publish_the_detector_versions_they_serve(redis: Redis, settings: Settings,
                                                         synthetic_models: Path, tmp_path: Path) -> None:
    core = Redline(settings, redis)
    assert core.fleet.served_versions() == {}
    first = build_worker(redis, settings)
    other = build_worker(redis, dataclasses.replace(settings, models_dirs=(
        copy_models(synthetic_models, tmp_path / "bumped", version="synthetic-2"),)))
    try:
        for worker in (first, other):
            worker.heart.beat()
        # A rollout in progress: one worker on each injury version, both on deception's.
        assert core.fleet.served_versions() == {"injury": {"synthetic-1": 1, "synthetic-2": 1},
                                          "deception": {"synthetic-1": 2}}
        keys, now = core.keys, core.store.clock()
        redis.zadd(keys.workers, {other.heart.worker_name: now - settings.worker_ttl_s - 1})  # went silent
        assert core.fleet.served_versions() == {"injury": {"synthetic-1": 1}, "deception": {"synthetic-1": 1}}
        redis.zadd(keys.workers, {"gone": now - 86401})  # dead for a day: forgotten, name and detectors
        redis.hset(keys.worker_detectors, "gone", json.dumps({"injury": "old"}))
        redis.hset(keys.worker_files, "gone", json.dumps({"injury": "0" * 64}))
        first.heart.beat()
        assert redis.zscore(keys.workers, "gone") is None and not redis.hexists(keys.worker_detectors, "gone")
        assert not redis.hexists(keys.worker_files, "gone")
        assert redis.hexists(keys.worker_detectors, other.heart.worker_name)  # silent, not yet a day
        redis.delete(keys.worker_detectors)  # a Redis that lost its data: the next beat says it again
        first.heart.beat()
        assert core.fleet.served_versions() == {"injury": {"synthetic-1": 1}, "deception": {"synthetic-1": 1}}
    finally:
        first.heart.stop()
        other.heart.stop()
