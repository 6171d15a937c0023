"""Prometheus instruments and the scrape-time collector, with a private registry and a real Redis."""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from models.synthetic import DEFAULT_HEADS, keyword_score
from service.app import create_app
from service.core import Redline
from service.metrics import BATCH_SIZE, RedisHistogram, RedlineCollector
from service.monitoring import Window
from service.settings import Settings
from service.store import NewOutput
from workers.runtime import build_scorer

from .scrape import SCORED_TEXTS, Scrape


def _registry(core: Redline) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedlineCollector(core))
    return registry


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def test_counters_come_from_the_exactly_once_counts(scored: Redline) -> None:
    reg = _registry(scored)
    flagged = sum(keyword_score(t, DEFAULT_HEADS["injury"]) >= 0.5 for t in SCORED_TEXTS)
    assert reg.get_sample_value("redline_outputs_scored_total", {"model": "bot", "detector": "injury"}) == 6
    assert reg.get_sample_value("redline_outputs_flagged_total", {"model": "bot", "detector": "injury"}) == flagged
    assert reg.get_sample_value("redline_labels_total", {"model": "bot", "detector": "injury"}) == 6
    assert reg.get_sample_value("redline_outputs_pending") == 0
    assert reg.get_sample_value("redline_tenant_outputs_pending", {"tenant": "default"}) == 0  # all scored
    # Scored here without a worker, so the job that carried them is still queued.
    assert reg.get_sample_value("redline_queue_depth", {"priority": "default"}) == 1
    assert reg.get_sample_value("redline_queue_depth", {"priority": "high"}) == 0
    assert reg.get_sample_value("redline_detector_threshold", {"detector": "injury"}) == 0.5
    version = scored.detectors["injury"].version
    assert reg.get_sample_value("redline_detector_info", {"detector": "injury", "version": version}) == 1
    scored.submit([NewOutput(id="waiting", model="bot", response="x", detectors=["injury"])])
    assert reg.get_sample_value("redline_tenant_outputs_pending", {"tenant": "default"}) == 1
    scored.delete_output("waiting")


def test_failures_and_requeues_are_counted_from_zero_for_every_deployed_model(scored: Redline) -> None:
    # The series exists at 0 before the first failure, so Prometheus's increase() sees that failure
    # (RedlineOutputsFailing); a series that first appeared at 1 would look like no change.
    # The same for requeues, by reason.
    reg = _registry(scored)
    assert reg.get_sample_value("redline_outputs_failed_total", {"model": "bot"}) == 0
    for reason in ("abandoned", "handoff"):
        assert reg.get_sample_value("redline_outputs_requeued_total", {"model": "bot", "reason": reason}) == 0
    scored.submit([NewOutput(id="f1", model="bot", response="x", detectors=["injury"])])
    assert scored.store.reassign(["f1"], "j2") == ["f1"] and scored.store.reassign(["f1"], "j3", handoff=True)
    scored.store.finish_failed({"f1": "boom"})
    reg = _registry(scored)
    assert reg.get_sample_value("redline_outputs_failed_total", {"model": "bot"}) == 1
    for reason in ("abandoned", "handoff"):
        assert reg.get_sample_value("redline_outputs_requeued_total", {"model": "bot", "reason": reason}) == 1
    assert scored.store.reassign(["f1"], "j4") == []  # failed: not moved, not counted
    assert _registry(scored).get_sample_value("redline_outputs_requeued_total",
                                              {"model": "bot", "reason": "abandoned"}) == 1


def test_worker_histograms_are_shared_through_redis(scored: Redline) -> None:
    reg = _registry(scored)
    assert reg.get_sample_value("redline_batch_size_count") == 1
    assert reg.get_sample_value("redline_batch_size_sum") == 6
    assert reg.get_sample_value("redline_batch_size_bucket", {"le": "4.0"}) == 0
    assert reg.get_sample_value("redline_batch_size_bucket", {"le": "8.0"}) == 1
    assert reg.get_sample_value("redline_queue_wait_seconds_count") == 6
    assert reg.get_sample_value("redline_inference_duration_seconds_count") == 1
    # A second worker adds to the same series.
    with scored.redis.pipeline() as pipe:
        BATCH_SIZE.observe(pipe, scored.keys, [1, 300])
        pipe.execute()
    reg = _registry(scored)
    assert reg.get_sample_value("redline_batch_size_count") == 3
    assert reg.get_sample_value("redline_batch_size_bucket", {"le": "1.0"}) == 1
    assert reg.get_sample_value("redline_batch_size_bucket", {"le": "256.0"}) == 2
    assert reg.get_sample_value("redline_batch_size_bucket", {"le": "+Inf"}) == 3


def test_quality_gauges_match_the_monitor(scored: Redline) -> None:
    scored.quality.refresh()
    reg = Scrape(scored)
    for window in ("24h", "count:6"):
        q = scored.monitor.evaluate("bot", "injury", Window.parse(window))
        labels = {"model": "bot", "detector": "injury", "window": window}
        assert reg.get_sample_value("redline_window_positives", labels) == q["positives"]
        for entry in q["n_auc"]:
            assert reg.get_sample_value("redline_n_auc", {**labels, "n": str(entry["n"])}) == entry["value"]
        assert reg.get_sample_value("redline_fnr_ratio", labels) == q["fnr"]["value"]
        lo, hi = q["fnr"]["clopper_pearson"]
        assert reg.get_sample_value("redline_fnr_lower_ratio", {**labels, "interval": "clopper_pearson"}) == lo
        assert reg.get_sample_value("redline_fnr_upper_ratio", {**labels, "interval": "clopper_pearson"}) == hi
        assert reg.get_sample_value("redline_label_coverage_ratio", labels) == q["label_coverage"]


def test_withheld_metrics_are_absent_not_zero(redis: Redis, settings: Settings) -> None:
    s = dataclasses.replace(settings, monitor_min_positives=50, monitor_cache_s=0, monitor_windows=("24h",))
    core = Redline(s, redis)
    core.submit([NewOutput(id="w1", model="bot", response="blood", detectors=["injury"], labels={"injury": 1})])
    build_scorer(redis, s, "w").score(["w1"])
    core.quality.refresh()
    reg = Scrape(core)
    labels = {"model": "bot", "detector": "injury", "window": "24h"}
    assert reg.get_sample_value("redline_window_positives", labels) == 1
    assert reg.get_sample_value("redline_fnr_ratio", labels) is None
    assert reg.get_sample_value("redline_n_auc", {**labels, "n": "5"}) is None


def test_detector_workers_count_live_workers_by_version_and_zero_for_the_one_served(
        redis: Redis, settings: Settings) -> None:
    core = Redline(settings, redis)
    for detector in ("injury", "deception"):  # no worker yet: the served version's series is 0, not absent
        assert Scrape(core).get_sample_value("redline_detector_workers",
                                             {"detector": detector, "version": "synthetic-1"}) == 0
    # Live workers, as their heartbeats publish them (workers/worker.py): one on a newer injury version.
    now = core.store.clock()
    workers = {"w1": {"injury": "synthetic-1", "deception": "synthetic-1"}, "w2": {"injury": "synthetic-2"}}
    for name, served in workers.items():
        redis.zadd(core.keys.workers, {name: now})
        redis.hset(core.keys.worker_detectors, name, json.dumps(served))
    scrape = Scrape(core)
    for version, count in (("synthetic-1", 1), ("synthetic-2", 1)):
        assert scrape.get_sample_value("redline_detector_workers", {"detector": "injury", "version": version}) == count
    assert scrape.get_sample_value("redline_detector_workers", {"detector": "deception", "version": "synthetic-1"}) == 1


def test_redis_histogram_buckets_are_cumulative(redis: Redis, scored: Redline) -> None:
    h = RedisHistogram("redline_test_seconds", "test", (0.1, 1.0))
    with redis.pipeline() as pipe:
        h.observe(pipe, scored.keys, [0.05, 0.5, 0.7, 5.0])
        pipe.execute()
    family = h.family(redis.hgetall(scored.keys.histogram("redline_test_seconds")))
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("redline_test_seconds_bucket", "0.1")] == 1
    assert values[("redline_test_seconds_bucket", "1.0")] == 3
    assert values[("redline_test_seconds_bucket", "+Inf")] == 4
    assert values[("redline_test_seconds_count", None)] == 4
    assert values[("redline_test_seconds_sum", None)] == pytest.approx(6.25)


def test_metrics_endpoint_labels_routes_not_ids(scored: Redline) -> None:
    scored.quality.refresh()
    app = create_app(scored.settings, scored.redis)
    client = app.test_client()
    assert client.get("/v1/outputs/m0").status_code == 200
    assert client.get("/v1/outputs/nope").status_code == 404
    body = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    routes = {(s.labels["route"], s.labels["status"]) for s in families["redline_http_requests"].samples
              if s.name == "redline_http_requests_total"}
    assert ("/v1/outputs/<output_id>", "200") in routes and ("/v1/outputs/<output_id>", "404") in routes
    assert not any("m0" in r for r, _ in routes)
    assert "redline_n_auc" in families and "redline_outputs_scored" in families


def test_distinct_model_names_are_bounded(redis: Redis, settings: Settings) -> None:
    from service.errors import ValidationFailed

    core = Redline(dataclasses.replace(settings, max_models=2), redis)
    for name in ("a", "b", "a"):
        core.submit([NewOutput(id=f"x-{name}-{id(name)}", model=name, response="hi", detectors=["injury"])])
    with pytest.raises(ValidationFailed, match="REDLINE_MAX_MODELS=2"):
        core.submit([NewOutput(id="x-c", model="c", response="hi", detectors=["injury"])])
    assert core.output_view("x-c") is None


def test_monitor_query_parameters(scored: Redline) -> None:
    client = create_app(scored.settings, scored.redis).test_client()
    one_pair = "/v1/monitor?model=bot&detector=injury"
    # `window` may repeat: those windows, each once, in the order asked (a subset of the configured ones).
    body = client.get(one_pair + "&window=count:6&window=24h&window=count:6").get_json()
    assert [w["window"] for w in body["windows"]] == ["count:6", "24h"]
    assert [w["negatives"] for w in body["windows"]] == [3, 3]
    listing = client.get("/v1/monitor?window=24h&window=1h").get_json()["monitors"]
    assert sorted(r["window"] for r in listing) == ["1h", "24h"]
    # Each window nothing computes in the background costs a pass over every pair: a request names at most 8.
    nine = "&".join(f"window={n}m" for n in range(1, 10))
    response = client.get("/v1/monitor?" + nine)
    assert response.status_code == 422
    assert response.get_json()["error"]["message"] == "9 windows in one request; the limit is 8"
    assert client.get("/v1/monitor?" + nine.replace("&window=9m", "")).status_code == 200  # eight
    assert client.get("/v1/monitor?" + "&".join(["window=1h"] * 9)).status_code == 422  # counted as sent
    many = dataclasses.replace(scored.settings, monitor_windows=tuple(f"{n}h" for n in range(1, 11)))
    configured = create_app(many, scored.redis).test_client().get(one_pair).get_json()
    assert len(configured["windows"]) == 10  # the configured windows are not bounded by it
    # A parameter that takes one value, given twice, was answered for the first: refused, naming it.
    for query, name in ((one_pair + "&model=other", "model"), (one_pair + "&detector=injury", "detector")):
        response = client.get(query)
        assert response.status_code == 422
        assert response.get_json()["error"]["message"] == f"query parameter {name!r} is given 2 times; give it once"
    assert client.get("/v1/dead-letters?limit=5&limit=6").status_code == 422
    assert client.get("/v1/dead-letters?limit=").status_code == 422  # empty is a bad value, not "absent"
    # "²" passes str.isdigit() and then int() raised: a 500.
    response = client.get("/v1/dead-letters?limit=\u00b2")
    assert response.status_code == 422
    assert response.get_json()["error"]["message"] == "'limit' must be an integer from 1 to 1000"
    assert client.get("/v1/dead-letters?limit=7").status_code == 200


def test_a_refused_request_admits_no_model_name(redis: Redis, settings: Settings) -> None:
    from service.errors import Conflict

    core = Redline(dataclasses.replace(settings, max_models=2), redis)
    core.submit([NewOutput(id="one", model="a", response="hi", detectors=["injury"])])
    # 409: the id exists with other content; the request is refused whole, its new model name with it.
    with pytest.raises(Conflict):
        core.submit([NewOutput(id="one", model="intruder", response="other text", detectors=["injury"])])
    core.submit([NewOutput(id="two", model="b", response="hi", detectors=["injury"])])
    assert redis.smembers(core.keys.models) == {b"a", b"b"}


def test_concurrent_new_models_never_exceed_the_bound(redis: Redis, settings: Settings) -> None:
    from service.errors import ValidationFailed

    # API processes admit models at once; the bound must hold across them, not only within one.
    cores = [Redline(dataclasses.replace(settings, max_models=5), Redis.from_url(settings.redis_url))
             for _ in range(24)]
    start = threading.Barrier(len(cores))

    def submit(n: int) -> bool:
        start.wait()
        try:
            cores[n].submit([NewOutput(id=f"o{n}", model=f"m{n}", response="hi", detectors=["injury"])])
        except ValidationFailed:
            return False
        return True

    with ThreadPoolExecutor(len(cores)) as pool:
        accepted = [n for n, ok in enumerate(pool.map(submit, range(len(cores)))) if ok]
    assert len(accepted) == 5
    assert redis.smembers(cores[0].keys.models) == {f"m{n}".encode() for n in accepted}


def test_with_redis_down_metrics_still_answer_and_say_so(own_redis) -> None:  # type: ignore[no-untyped-def]
    # A 503 here made Prometheus mark the API down (RedlineDown, "the API is down or unreachable") and
    # hid the request metrics that show the outage's 503s.
    server, core = own_redis
    app = create_app(core.settings, core.redis)
    client = app.test_client()
    core.quality.refresh()
    up = Scrape(core)
    assert up.get_sample_value("redline_redis_up") == 1 and up.get_sample_value("redline_outputs_pending") == 0
    server.stop()
    assert client.post("/v1/outputs", json={"outputs": [{"model": "m", "response": "hi"}]}).status_code == 503
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert [s.value for s in families["redline_redis_up"].samples] == [0]
    served = {(s.labels["route"], s.labels["status"]) for s in families["redline_http_requests"].samples
              if s.name == "redline_http_requests_total"}
    assert ("/v1/outputs", "503") in served  # the outage itself is visible
    assert "redline_outputs_pending" not in families and "redline_n_auc" not in families  # unknown, not 0
    assert "redline_detector_threshold" in families  # configuration needs no Redis
    server.start()
    assert Scrape(core).get_sample_value("redline_redis_up") == 1


