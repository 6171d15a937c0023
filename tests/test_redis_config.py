"""Workers warn at start about Redis settings under which accepted outputs can be lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from service.core import Redline
from service.embedded_redis import EmbeddedRedis
from service.redis_config import risks

from .procs import redline_env, run_burst_worker


def test_the_embedded_redis_is_configured_safely(own_redis: tuple[EmbeddedRedis, Redline]) -> None:
    assert risks(own_redis[1].redis) == []


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_policy_and_no_aof_are_each_named(own_redis: tuple[EmbeddedRedis, Redline], policy: str) -> None:
    redis = own_redis[1].redis
    redis.config_set("maxmemory-policy", policy)
    [eviction] = risks(redis)
    assert f"maxmemory-policy is {policy}" in eviction and "set maxmemory-policy noeviction" in eviction.lower()
    redis.config_set("appendonly", "no")
    assert [r.split(":")[0] for r in risks(redis)] == [eviction.split(":")[0],
                                                         "Redis append-only persistence is off (appendonly no)"]


def test_a_real_worker_logs_the_risks_at_start_and_nothing_when_there_are_none(
        own_redis: tuple[EmbeddedRedis, Redline], synthetic_models: Path, prefix: str) -> None:
    server, _ = own_redis
    env = redline_env(server.url, synthetic_models, prefix)
    quiet = run_burst_worker(env)
    assert "maxmemory-policy" not in quiet and "appendonly" not in quiet
    redis = Redis.from_url(server.url)
    redis.config_set("maxmemory-policy", "allkeys-lru")
    redis.config_set("appendonly", "no")
    log = run_burst_worker(env)
    assert "WARNING redline: Redis maxmemory-policy is allkeys-lru" in log
    assert "WARNING redline: Redis append-only persistence is off" in log
