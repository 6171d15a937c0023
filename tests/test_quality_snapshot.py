"""The quality gauges and the every-pair listing, computed off the request path (service.quality_snapshot)
and by `redline monitor`, and served from Redis: with a private registry and a real Redis."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from service.app import create_app
from service.core import Redline
from service.settings import Settings
from service.store import NewOutput
from workers.runtime import build_scorer

from .procs import Proc, redline_env, wait_for
from .scrape import SCORED_TEXTS, Scrape


def _label(core: Redline, output_id: str, value: int) -> None:
    core.apply_labels([(output_id, "injury", value)])


def test_a_scrape_serves_the_stored_snapshot_without_computing(scored: Redline,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Computing the gauges costs seconds at scale (bench.monitoring): a scrape must never pay it.
    snapshot = scored.quality.refresh()
    def no_compute(*args: object) -> None:
        raise AssertionError("a scrape evaluated a window")
    monkeypatch.setattr(scored.monitor, "evaluate_windows", no_compute)
    reg = Scrape(scored)
    assert reg.get_sample_value("redline_window_positives", {"model": "bot", "detector": "injury",
                                                             "window": "24h"}) == 3
    assert reg.get_sample_value("redline_quality_computed_timestamp_seconds") == snapshot.computed_at
    assert reg.get_sample_value("redline_quality_compute_duration_seconds") == snapshot.duration_s
    assert scored.quality._thread is None  # fresh: no refresh was started either


class Clock:
    """The snapshot's clock, moved by hand: ages without sleeping, so a slow machine cannot make a
    fresh snapshot stale between two lines."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_stale_snapshot_is_served_while_it_is_refreshed_in_the_background(redis: Redis,
                                                                           settings: Settings) -> None:
    s = dataclasses.replace(settings, monitor_min_positives=2, monitor_cache_s=0, monitor_windows=("24h",),
                            metrics_refresh_s=15)
    core = Redline(s, redis)
    core.quality.clock = clock = Clock()
    outs = [NewOutput(id=f"s{i}", model="bot", response=t, detectors=["injury"]) for i, t in enumerate(SCORED_TEXTS)]
    core.submit(outs)
    build_scorer(redis, s, "w1").score([o.id for o in outs])
    labels = {"model": "bot", "detector": "injury", "window": "24h"}
    first = Scrape(core)  # nothing computed yet: no quality series (absent, not 0) and a refresh starts
    assert first.get_sample_value("redline_window_negatives", labels) is None
    assert first.get_sample_value("redline_quality_computed_timestamp_seconds") is None
    assert core.quality._thread is not None
    core.quality._thread.join(30)
    assert Scrape(core).get_sample_value("redline_window_negatives", labels) == 0
    _label(core, "s4", 0)
    clock.now += 14
    assert Scrape(core).get_sample_value("redline_window_negatives", labels) == 0  # still fresh: served as is
    assert not core.quality._thread.is_alive()  # and no refresh started
    clock.now += 1
    stale = Scrape(core)  # answered from the stale snapshot at once; the refresh runs behind it
    assert stale.get_sample_value("redline_window_negatives", labels) == 0
    assert stale.get_sample_value("redline_quality_computed_timestamp_seconds") == clock.now - 15
    core.quality._thread.join(30)
    fresh = Scrape(core)
    assert fresh.get_sample_value("redline_window_negatives", labels) == 1
    assert fresh.get_sample_value("redline_quality_computed_timestamp_seconds") == clock.now


def test_one_api_process_refreshes_at_a_time(redis: Redis, scored: Redline) -> None:
    other = Redline(scored.settings, redis)  # a second API process
    other.quality.clock = clock = Clock()
    held = redis.lock(scored.keys.quality_refresh_lock, timeout=30)
    assert held.acquire(blocking=False)
    assert other.quality.refresh_if_due() is False and other.quality.latest() is None
    held.release()
    assert other.quality.refresh_if_due() is True
    done = other.quality.latest()
    assert done is not None and redis.ttl(scored.keys.quality_snapshot) >= 300
    clock.now += scored.settings.metrics_refresh_s - 1
    assert other.quality.refresh_if_due() is False  # refreshed under REDLINE_METRICS_REFRESH_S ago: not due
    assert not redis.exists(scored.keys.quality_refresh_lock)  # released after each refresh
    clock.now += 1
    assert other.quality.refresh_if_due() is True
    assert other.quality.latest().computed_at == done.computed_at + scored.settings.metrics_refresh_s  # type: ignore[union-attr]


def test_a_monitor_process_refreshes_early_so_api_processes_never_do(redis: Redis, scored: Redline) -> None:
    # An API process refreshes the numbers once they are REDLINE_METRICS_REFRESH_S old; `redline monitor`
    # at half that, so while it runs the API processes always find them fresh.
    monitor, api = Redline(scored.settings, redis), Redline(scored.settings, redis)
    monitor.quality.clock = api.quality.clock = clock = Clock()
    half = scored.settings.metrics_refresh_s / 2
    assert monitor.quality.refresh_if_due(min_age_s=half) is True  # none yet
    first = monitor.quality.latest()
    clock.now += half - 0.01
    assert monitor.quality.refresh_if_due(min_age_s=half) is False
    clock.now += 0.01
    assert api.quality.refresh_if_due() is False  # half an interval old: not due for an API process
    assert monitor.quality.refresh_if_due(min_age_s=half) is True
    assert monitor.quality.latest().computed_at == first.computed_at + half  # type: ignore[union-attr]
    stop = threading.Event()
    stop.set()
    monitor.quality.keep_fresh(stop)  # returns at once when asked to stop


def test_the_monitor_loop_waits_out_a_redis_outage_saying_so_once(own_redis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server, core = own_redis
    core.submit([NewOutput(id="o1", model="bot", response="calm", detectors=["injury"])])
    server.stop()
    stop = threading.Event()
    loop = threading.Thread(target=core.quality.keep_fresh, args=(stop, 0.02))
    with caplog.at_level("WARNING", logger="service.quality_snapshot"):
        loop.start()
        try:
            wait_for(lambda: "waiting for Redis" in caplog.text, timeout=20)
            time.sleep(0.3)  # some fifteen polls more with Redis still away
            assert caplog.text.count("waiting for Redis") == 1  # said once per outage, not once a poll
            assert "not refreshed" not in caplog.text
            server.start()
            wait_for(lambda: core.quality.latest() is not None, timeout=20)
        finally:
            stop.set()
            loop.join(10)
    assert "Redis is back; refreshing the quality gauges again" in caplog.text


def test_redline_monitor_keeps_the_numbers_fresh_and_stops_on_sigterm(redis: Redis, scored: Redline,
                                                                       tmp_path: Path) -> None:
    env = redline_env(scored.settings.redis_url, list(scored.settings.models_dirs), scored.settings.queue_prefix,
                      metrics_refresh_s=2, monitor_windows="24h", log_level="INFO")
    proc = Proc([sys.executable, "-m", "service.cli", "monitor"], env, tmp_path / "monitor.log")
    try:
        wait_for(lambda: scored.quality.latest() is not None, timeout=30)
        first = scored.quality.latest()
        assert first is not None and b'redline_window_positives{detector="injury",model="bot",window="24h"} 3.0' \
            in first.text, proc.log()
        wait_for(lambda: scored.quality.latest().computed_at > first.computed_at, timeout=30)  # type: ignore[union-attr]
        assert proc.alive(), proc.log()
    finally:
        code = proc.stop()
    assert code == 0 and "keeping the quality gauges fresh: refreshed once they are 1 s old" in proc.log()


def test_the_listing_is_served_from_the_background_computation(scored: Redline,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Listing every pair computed every pair on each request: seconds at a few dozen pairs.
    scored.quality.clock = clock = Clock()
    client = create_app(scored.settings, scored.redis).test_client()
    app_core = client.application.extensions["redline"]
    app_core.quality.clock = clock

    def negatives(query: str = "") -> list[int]:
        body = client.get("/v1/monitor" + query).get_json()
        rows = body["monitors"] if "monitors" in body else [body]
        return [r["negatives"] for r in rows if r["window"] == "24h"]

    first = client.get("/v1/monitor").get_json()  # nothing computed yet: computed for this request, and stored
    assert [r["negatives"] for r in first["monitors"] if r["window"] == "24h"] == [3]
    scored.submit([NewOutput(id="late", model="bot", response="calm", detectors=["injury"], labels={"injury": 0})])
    build_scorer(scored.redis, scored.settings, "w2").score(["late"])
    assert negatives() == [3]  # the stored numbers, until they are REDLINE_METRICS_REFRESH_S old
    assert client.get("/v1/monitor").get_json()["computed_at"] == first["computed_at"]
    assert negatives("?model=bot&detector=injury&window=24h") == [4]  # one pair: computed now
    assert negatives("?window=6h") == []  # a window not configured: computed now, for the caller's pairs
    assert client.get("/v1/monitor?window=6h").get_json()["monitors"][0]["negatives"] == 4

    def no_compute(*args: object) -> None:
        raise AssertionError("the listing evaluated a window")
    with monkeypatch.context() as patch:
        patch.setattr(app_core.monitor, "evaluate_windows", no_compute)
        assert negatives() == [3]
    clock.now += scored.settings.metrics_refresh_s
    assert negatives() == [3]  # stale: served at once, refreshed behind it
    app_core.quality._thread.join(30)  # type: ignore[union-attr]
    fresh = client.get("/v1/monitor").get_json()
    assert [r["negatives"] for r in fresh["monitors"] if r["window"] == "24h"] == [4]
    assert fresh["computed_at"] > first["computed_at"]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
