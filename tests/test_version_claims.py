"""One detector version, one model: workers whose files differ refuse to serve a version others serve."""

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from redis import Redis

from service.app import create_app
from service.core import Redline
from service.detector_config import fingerprints, load_configs
from service.errors import ConfigError
from service.keys import Keys
from service.settings import Settings
from service.store import NewOutput, OutputStore
from tests.procs import ROOT, copy_models, redline_env, start_worker, wait_for
from tests.scrape import Scrape
from workers.detector import load_detectors
from workers.worker import build_worker


def test_a_fingerprint_covers_what_makes_a_score_and_nothing_else(synthetic_models: Path, tmp_path: Path) -> None:
    base = fingerprints(load_configs([synthetic_models]).values())
    assert set(base) == {"injury", "deception"} and base["injury"] != base["deception"]  # heads differ by index
    for name, changes in (("description", {"description": "reworded"}), ("target", {"target_fnr": 0.05}),
                          ("calibration", {"calibration": {"note": "x"}}), ("gpu", {"onnx_gpu": "../synthetic.onnx"})):
        same = fingerprints(load_configs([copy_models(synthetic_models, tmp_path / name, **changes)]).values())
        assert same == base, name
    for name, changes in (("threshold", {"threshold": 0.6}), ("activation", {"activation": "none"}),
                          ("length", {"max_length": 64}), ("input", {"input": "prompt_response"})):
        moved = fingerprints(load_configs([copy_models(synthetic_models, tmp_path / name, **changes)]).values())
        assert moved["injury"] != base["injury"] and moved["deception"] == base["deception"], name
    for file in ("synthetic.onnx", "tokenizer.json"):  # one byte of the graph or tokenizer
        folder = copy_models(synthetic_models, tmp_path / file)
        (folder / file).write_bytes((folder / file).read_bytes() + b" ")
        moved = fingerprints(load_configs([folder]).values())
        assert moved["injury"] != base["injury"] and moved["deception"] != base["deception"], file


def test_a_fingerprint_covers_weights_stored_outside_the_graph_file(synthetic_models: Path, tmp_path: Path) -> None:
    # Exporters write a large model's weights to files beside the graph; a retrain then changes those
    # files and not the graph's own bytes.
    folder = copy_models(synthetic_models, tmp_path / "external")
    onnx.save_model(onnx.load(str(folder / "synthetic.onnx")), str(folder / "synthetic.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=128)  # the keyword embedding only: onnxruntime wants small axes inline

    def injury_scores() -> np.ndarray:
        served = load_detectors(load_configs([folder]), ["CPUExecutionProvider"])["injury"]
        return served.predict([("", "he was bleeding"), ("", "a calm day")])

    first = injury_scores()
    assert first[0] > 0.5 > first[1]  # served from the external weights
    before = fingerprints(load_configs([folder]).values())
    weights = np.fromfile(folder / "weights.bin", dtype=np.float32)
    (weights * 3).tofile(folder / "weights.bin")  # retrained weights; the graph file is untouched
    assert injury_scores()[0] > first[0]
    after = fingerprints(load_configs([folder]).values())
    assert after["injury"] != before["injury"] and after["deception"] != before["deception"]
    (folder / "weights.bin").unlink()  # a missing file is the loader's to report, not a crash here
    assert fingerprints(load_configs([folder]).values())["injury"] not in (before["injury"], after["injury"])


def test_a_claim_is_taken_renewed_and_kept_from_other_fingerprints(redis: Redis, prefix: str) -> None:
    store = OutputStore(redis, Keys(prefix), ttl_s=3600, retention_s=7200)
    key = Keys(prefix).version_claim("injury", "1.2.0")
    assert store.versions.claim("injury", "1.2.0", "aaa") is None
    assert redis.get(key) == b"aaa" and 7190 < redis.ttl(key) <= 7200  # the longer of records and windows
    redis.expire(key, 10)
    assert store.versions.claim("injury", "1.2.0", "aaa") is None and redis.ttl(key) > 7190  # renewed
    assert store.versions.claim("injury", "1.2.0", "bbb") == "aaa"
    assert redis.get(key) == b"aaa"
    assert store.versions.claim("injury", "1.3.0", "bbb") is None  # a version of its own is free


def test_a_worker_with_other_files_under_a_served_version_refuses_to_start(
        redis: Redis, redis_url: str, synthetic_models: Path, prefix: str, tmp_path: Path) -> None:
    # The first worker claims injury "synthetic-1" with its threshold 0.5. A second one, whose model.json
    # moved the threshold without a new version (as a recalibration, or the int8 graph, would), exits 2
    # with an error naming the detector and version, and the first one keeps scoring by its own files.
    running = start_worker(redline_env(redis_url, synthetic_models, prefix), tmp_path / "w1.log", redis, prefix)
    try:
        changed = copy_models(synthetic_models, tmp_path / "recalibrated", threshold=0.9)
        refused = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--burst"], cwd=ROOT,
                                 env=redline_env(redis_url, changed, prefix), capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "injury 'synthetic-1'" in refused.stderr and "give each changed detector a version" in refused.stderr
        assert "deception" not in refused.stderr.split("give each")[0]  # unchanged: no clash
        original = fingerprints(load_configs([synthetic_models]).values())["injury"]
        assert redis.get(Keys(prefix).version_claim("injury", "synthetic-1")) == original.encode()
        core = Redline(Settings(redis_url=redis_url, models_dirs=(synthetic_models,), queue_prefix=prefix), redis)
        core.submit([NewOutput(id="after", model="m", response="bleeding", detectors=["injury"])])
        wait_for(lambda: (core.store.get("after") or {}).get("status") == "scored")
        assert core.store.get("after")["scores"]["injury"]["threshold"] == 0.5  # type: ignore[index]
        assert running.alive()
        bumped = copy_models(synthetic_models, tmp_path / "bumped", threshold=0.9, version="synthetic-2")
        started = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--burst"], cwd=ROOT,
                                 env=redline_env(redis_url, bumped, prefix), capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    finally:
        assert running.stop() == 0, running.log()


def test_a_long_running_worker_renews_its_claims(
        redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    worker = build_worker(redis, settings)
    try:
        keys = Keys(settings.queue_prefix)
        claim = keys.version_claim("injury", "synthetic-1")
        held = redis.get(claim)
        assert held is not None
        redis.delete(claim)  # lapsed
        worker.heart._maybe_renew_claims()  # not due yet: an hour has not passed
        assert redis.get(claim) is None
        worker.heart._last_claim -= 3601
        worker.heart._maybe_renew_claims()
        assert redis.get(claim) == held and redis.ttl(claim) > settings.record_ttl_s - 10
        redis.set(claim, "someone-else")  # taken by other files while this claim had lapsed
        worker.heart._last_claim -= 3601
        with caplog.at_level(logging.ERROR, logger="workers.heart"):
            worker.heart._maybe_renew_claims()
        assert "injury 'synthetic-1' is now claimed by other files (someone-else" in caplog.text
        assert redis.get(claim) == b"someone-else"
    finally:
        worker.heart.stop()


def test_the_in_process_error_names_every_clash(redis: Redis, settings: Settings, synthetic_models: Path,
                                                tmp_path: Path) -> None:
    build_worker(redis, settings).heart.stop()
    changed = copy_models(synthetic_models, tmp_path / "changed", ("injury", "deception"), threshold=0.7)
    with pytest.raises(ConfigError) as raised:
        build_worker(redis, dataclasses.replace(settings, models_dirs=(changed,)))
    message = raised.value.message
    assert "injury 'synthetic-1'" in message and "deception 'synthetic-1'" in message
    assert (f"delete '{settings.queue_prefix}:version-claim:deception|synthetic-1' and "
            f"'{settings.queue_prefix}:version-claim:injury|synthetic-1'") in message


def test_the_api_says_whether_its_files_are_those_its_version_is_scored_with(
        redis: Redis, settings: Settings, synthetic_models: Path, tmp_path: Path) -> None:
    # The monitor judges a version's window at the API's threshold: one edited on the API's host but not
    # on the workers', under the same version, would report an FNR at a threshold nothing flags with.
    from service.app import create_app

    def files_match(s: Settings) -> dict[str, bool | None]:
        body = create_app(s, redis).test_client().get("/v1/detectors").get_json()
        return {d["name"]: d["files_match"] for d in body["detectors"]}

    assert files_match(settings) == {"injury": None, "deception": None}  # no worker has claimed them yet
    build_worker(redis, settings).heart.stop()
    assert files_match(settings) == {"injury": True, "deception": True}
    edited = copy_models(synthetic_models, tmp_path / "api-host", threshold=0.9)
    assert files_match(dataclasses.replace(settings, models_dirs=(edited,))) == {"injury": False, "deception": True}


def test_an_api_with_other_files_than_its_workers_exports_it_and_logs_it_once(
        redis: Redis, settings: Settings, synthetic_models: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # RedlineDetectorFilesDiffer reads this gauge: 0 where the API's files differ, absent before any claim.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    def gauges(core: Redline) -> dict[str, float | None]:
        scrape = Scrape(core)
        return {n: scrape.get_sample_value("redline_detector_files_match", {"detector": n, "version": "synthetic-1"})
                for n in ("injury", "deception")}

    assert gauges(Redline(settings, redis)) == {"injury": None, "deception": None}
    build_worker(redis, settings).heart.stop()
    assert gauges(Redline(settings, redis)) == {"injury": 1, "deception": 1}
    edited = Redline(dataclasses.replace(settings, models_dirs=(copy_models(synthetic_models, tmp_path / "api",
                                                                            threshold=0.9),)), redis)
    with caplog.at_level(logging.WARNING, logger="service.core"):
        assert gauges(edited) == {"injury": 0, "deception": 1}
        assert gauges(edited) == {"injury": 0, "deception": 1}
    warned = [r.getMessage() for r in caplog.records if "not those workers score it with" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("detector injury synthetic-1"), warned


def test_live_workers_on_two_files_under_one_version_are_seen_and_exported(
        redis: Redis, settings: Settings, synthetic_models: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers refuse that at start, but a claim released while workers on the old files still run lets
    # one on new files join them: RedlineDetectorVersionMixed reads this gauge.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    core = Redline(settings, redis)
    prints = fingerprints(load_configs([synthetic_models]).values())
    first = build_worker(redis, settings)
    changed = copy_models(synthetic_models, tmp_path / "retrained", threshold=0.7)  # injury's files only
    assert core.store.versions.release("injury", "synthetic-1")
    second = build_worker(redis, dataclasses.replace(settings, models_dirs=(changed,)))
    try:
        new = fingerprints(load_configs([changed]).values())["injury"]
        assert core.fleet.served()[1] == {"injury": {"synthetic-1": {prints["injury"]: 1, new: 1}},
                                             "deception": {"synthetic-1": {prints["deception"]: 2}}}
        scrape = Scrape(core)
        assert {n: scrape.get_sample_value("redline_detector_worker_files", {"detector": n, "version": "synthetic-1"})
                for n in ("injury", "deception")} == {"injury": 2, "deception": 1}
        listed = create_app(settings, redis).test_client().get("/v1/detectors").get_json()["detectors"]
        assert {d["name"]: d["worker_files"] for d in listed} == {
            "injury": {"synthetic-1": {prints["injury"][:16]: 1, new[:16]: 1}},
            "deception": {"synthetic-1": {prints["deception"][:16]: 2}}}
    finally:
        first.heart.stop()
        second.heart.stop()
    assert core.fleet.served()[1] == {}  # stopped workers are not live


def test_redline_versions_lists_the_claims_and_releases_one_for_other_files(
        redis: Redis, redis_url: str, synthetic_models: Path, prefix: str, tmp_path: Path) -> None:
    # The way past a refused worker, for users of `redline serve`'s embedded Redis, who have no redis-cli.
    def redline(models: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              env=redline_env(redis_url, models, prefix), timeout=120)

    running = start_worker(redline_env(redis_url, synthetic_models, prefix), tmp_path / "w1.log", redis, prefix)
    changed = copy_models(synthetic_models, tmp_path / "recalibrated", threshold=0.9)
    prints = fingerprints(load_configs([synthetic_models]).values())
    try:
        listing = redline(changed, "versions")
        assert listing.returncode == 0, listing.stderr
        rows = [line.split() for line in listing.stdout.splitlines()]
        assert rows[0] == ["DETECTOR", "VERSION", "FINGERPRINT", "LAPSES", "LIVE", "WORKERS", "OTHER", "FILES", "FILES",
                           "HERE"]
        by_name = {r[0]: r for r in rows[1:]}
        assert set(by_name) == {"deception", "injury"}
        for name, files in (("injury", "differ"), ("deception", "match")):  # as this host's (changed) files say
            assert by_name[name][1:3] == ["synthetic-1", prints[name][:16]] and by_name[name][4:] == ["1", "0", files]
        refused = redline(changed, "worker", "--burst")
        assert refused.returncode == 2 and "run `redline versions release injury synthetic-1`" in refused.stderr
        released = redline(changed, "versions", "release", "injury", "synthetic-1")
        assert released.returncode == 0, released.stderr
        assert f"was claimed by {prints['injury'][:16]}" in released.stderr
        # It runs the released files, so it would take the claim back.
        assert "1 live worker(s) serve injury 'synthetic-1' with the released files:" in released.stderr
        assert redis.get(Keys(prefix).version_claim("injury", "synthetic-1")) is None
        assert redis.get(Keys(prefix).version_claim("deception", "synthetic-1")) == prints["deception"].encode()
    finally:
        assert running.stop() == 0, running.log()
    again = redline(changed, "versions", "release", "injury", "synthetic-1")
    assert again.returncode == 1 and "no claim on injury 'synthetic-1' (claimed: deception synthetic-1)" in again.stderr
    assert redline(changed, "worker", "--burst").returncode == 0  # now it claims the version for its files
    now = fingerprints(load_configs([changed]).values())["injury"]
    assert redis.get(Keys(prefix).version_claim("injury", "synthetic-1")) == now.encode()


def test_redline_versions_finds_the_embedded_redis_of_a_running_serve(tmp_path: Path) -> None:
    from service.embedded_redis import EmbeddedRedis
    from service.versions_cli import connect

    with pytest.raises(ConfigError, match="no `redline serve` is running with its data in"):
        connect(Settings(redis_url=None, data_dir=tmp_path))
    server = EmbeddedRedis(tmp_path, persist=False).start()  # as `redline serve` starts it: a unix socket
    try:
        assert connect(Settings(redis_url=None, data_dir=tmp_path)).ping()
    finally:
        server.stop()
