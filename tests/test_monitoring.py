"""Labels joined to scores and rolling windows, against a real Redis and the real scorer.

Synthetic keyword detectors make every score known exactly, so each monitor number is compared
with the pure evaluation functions applied to the (score, label) pairs the window must hold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from redis import Redis

from models.synthetic import DEFAULT_HEADS, keyword_score
from service import evaluation as ev
from service.core import Redline
from service.errors import NotFound, ValidationFailed
from service.monitoring import Window
from service.settings import Settings
from service.store import NewOutput
from workers.runtime import build_scorer

INJURED = ["blood and a broken arm", "bleeding wound", "stabbed", "hurt and injured badly", "fracture blood"]
CALM = ["a calm day", "hello world", "the park was quiet", "it was fine", "blood test was normal and fine today"]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def make(redis: Redis, settings: Settings, clock: Clock):  # type: ignore[no-untyped-def]
    def build(**overrides: object) -> tuple[Redline, object]:
        defaults = {"monitor_min_positives": 2, "audit_rate": 0.0, "monitor_cache_s": 0}
        s = dataclasses.replace(settings, **{**defaults, **overrides})
        core = Redline(s, redis)
        core.store.clock = clock
        core.monitor.clock = clock
        scorer = build_scorer(redis, s, "test-worker")
        scorer.store.clock = clock
        return core, scorer
    return build


def submit(core: Redline, texts: list[str], prefix: str, model: str = "m", **labels: dict[str, int]) -> list[str]:
    outs = [NewOutput(id=f"{prefix}{i}", model=model, response=t, detectors=["deception", "injury"],
                      labels=labels.get(f"{prefix}{i}", {})) for i, t in enumerate(texts)]
    core.submit(outs)
    return [o.id for o in outs]


def injury_score(text: str) -> float:
    return keyword_score(text, DEFAULT_HEADS["injury"])


def test_window_tracks_a_stream_of_events(make, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    ids = submit(core, INJURED + CALM, "o")
    scorer.score(ids)
    w = Window.parse("24h")
    expected_scores, expected_labels = [], []
    for i, text in zip(ids, INJURED + CALM, strict=True):
        label = 1 if text in INJURED else 0
        clock.now += 10
        assert core.apply_labels([(i, "injury", label)])[0]["result"] == "new"
        expected_scores.append(injury_score(text))
        expected_labels.append(label)
        got = core.monitor.evaluate("m", "injury", w)
        s, y = np.array(expected_scores), np.array(expected_labels)
        assert (got["positives"], got["negatives"]) == (int(y.sum()), int((1 - y).sum()))
        assert got["auc"] == (None if len(set(expected_labels)) < 2 else pytest.approx(ev.roc_auc(s, y), abs=1e-9))
    s, y = np.array(expected_scores), np.array(expected_labels)
    for entry in got["n_auc"]:
        assert entry["value"] == pytest.approx(ev.nm_auc(s, y, entry["n"]), abs=1e-9)
    for entry in got["nm_auc"]:
        assert entry["value"] == pytest.approx(ev.nm_auc(s, y, entry["n"], entry["m"]), abs=1e-9)
    fnr = ev.fnr_at(s, y, 0.5)
    assert got["fnr"]["value"] == fnr.value and got["fnr"]["wilson"] == pytest.approx(list(fnr.wilson))
    assert got["fnr"]["clopper_pearson"] == pytest.approx(list(fnr.clopper_pearson))
    assert got["fpr"]["value"] == ev.fpr_at(s, y, 0.5).value
    assert got["threshold_for_target_fnr"] is None  # synthetic detectors have no target FNR
    assert got["label_coverage"] == 1.0 and got["scored"] == 10
    assert got["median_label_lag_s"] == pytest.approx(np.median(np.arange(1, 11) * 10.0))
    assert core.store.counters()["labeled|injury|m"] == 10


def test_label_correction_replaces_without_double_counting(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    ids = submit(core, INJURED[:3] + CALM[:3], "c")
    scorer.score(ids)
    core.apply_labels([(i, "injury", 1 if n < 3 else 0) for n, i in enumerate(ids)])
    before = core.monitor.evaluate("m", "injury", Window.parse("count:100"))
    assert (before["positives"], before["negatives"]) == (3, 3)
    assert [r["result"] for r in core.apply_labels([(ids[0], "injury", 1)])] == ["unchanged"]
    assert [r["result"] for r in core.apply_labels([(ids[0], "injury", 0)])] == ["changed"]
    after = core.monitor.evaluate("m", "injury", Window.parse("count:100"))
    assert (after["positives"], after["negatives"], after["labeled"]) == (2, 4, 6)
    assert core.store.counters()["labeled|injury|m"] == 6
    assert core.store.get(ids[0])["labels"] == {"injury": 0}  # type: ignore[index]


def test_labels_before_scores_join_when_scored(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    ids = submit(core, INJURED[:2] + CALM[:2], "e", **{"e0": {"injury": 1}})  # one label at submit
    core.apply_labels([(ids[1], "injury", 1), (ids[2], "injury", 0), (ids[3], "injury", 0)])
    with pytest.raises(NotFound, match="no scores yet"):
        core.monitor.evaluate("m", "injury", Window.parse("24h"))
    scorer.score(ids)
    got = core.monitor.evaluate("m", "injury", Window.parse("24h"))
    assert (got["positives"], got["negatives"]) == (2, 2)
    assert got["auc"] == pytest.approx(ev.roc_auc(np.array([injury_score(t) for t in INJURED[:2] + CALM[:2]]),
                                                  np.array([1, 1, 0, 0])))


def test_unknown_output_and_detector_rejected_before_anything_is_written(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    ids = submit(core, ["blood"], "u")
    with pytest.raises(NotFound, match="nope"):
        core.apply_labels([(ids[0], "injury", 1), ("nope", "injury", 1)])
    assert "labels" not in core.store.get(ids[0])  # type: ignore[operator]
    out = NewOutput(id="only-injury", model="m", response="x", detectors=["injury"])
    core.submit([out])
    with pytest.raises(ValidationFailed, match="not scored by detector 'deception'"):
        core.apply_labels([("only-injury", "deception", 1)])


def test_time_and_count_windows(make, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    old = submit(core, INJURED[:2] + CALM[:2], "old")
    clock.now += 3 * 3600
    new = submit(core, INJURED[2:4] + CALM[2:4], "new")
    scorer.score(old + new)
    core.apply_labels([(i, "injury", 1 if n < 2 else 0) for ids in (old, new) for n, i in enumerate(ids)])
    assert core.monitor.evaluate("m", "injury", Window.parse("1h"))["labeled"] == 4
    assert core.monitor.evaluate("m", "injury", Window.parse("24h"))["labeled"] == 8
    last2 = core.monitor.evaluate("m", "injury", Window.parse("count:2"))
    assert last2["labeled"] == 2 and last2["scored"] <= 4
    clock.now += 2 * 86400
    assert core.monitor.evaluate("m", "injury", Window.parse("24h"))["labeled"] == 0


def test_windows_evaluated_together_match_each_alone(make, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    # Several windows share one read per sorted set: a duration window is sliced from the longest one
    # and a count window from whichever read holds its newest W. Each must equal its own evaluation.
    core, scorer = make()
    old = submit(core, INJURED[:2] + CALM[:2], "old")
    clock.now += 3 * 3600
    new = submit(core, INJURED[2:4] + CALM[2:4] + CALM[4:], "new")
    clock.now += 60
    scorer.score(old + new)
    core.apply_labels([(i, "injury", 1 if n < 2 else 0) for ids in (old, new[:4]) for n, i in enumerate(ids)])
    alone = {name: core.monitor.evaluate("m", "injury", Window.parse(name))
             for name in ("1h", "24h", "count:2", "count:6", "count:50")}
    assert [alone[n]["labeled"] for n in alone] == [4, 8, 2, 6, 8]
    assert alone["1h"]["drift"]["current"] == 5 and alone["24h"]["drift"]["current"] == 9
    for names in (["1h", "count:2"], ["1h", "count:6"], ["24h", "count:6", "1h"], ["count:2", "count:50"],
                  ["count:6", "24h", "count:2", "1h", "count:50"]):
        together = core.monitor.evaluate_windows("m", "injury", [Window.parse(n) for n in names])
        assert together == [alone[n] for n in names], names


def test_minimum_positives_gate(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make(monitor_min_positives=3)
    ids = submit(core, INJURED[:2] + CALM[:3], "g")
    scorer.score(ids)
    core.apply_labels([(i, "injury", 1 if n < 2 else 0) for n, i in enumerate(ids)])
    got = core.monitor.evaluate("m", "injury", Window.parse("24h"))
    assert got["auc"] is not None  # plain AUC needs only both classes
    assert all(e["value"] is None for e in got["n_auc"]) and got["fnr"] is None
    assert "holds 2 labeled positives" in got["withheld"] and "3" in got["withheld"]
    more = submit(core, INJURED[2:3], "h")
    scorer.score(more)
    core.apply_labels([(more[0], "injury", 1)])
    got = core.monitor.evaluate("m", "injury", Window.parse("24h"))
    assert got["withheld"] is None and all(e["value"] is not None for e in got["n_auc"]) and got["fnr"]


def test_audit_sample_and_weighted_fnr(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make(audit_rate=0.5)
    scorer.store._random.seed(7)
    # Injured texts the synthetic model misses (score < 0.5): the misses only the audit sample finds.
    missed = ["blood on a long quiet walk home", "a small wound from the old rusty gate"]
    texts = INJURED[:3] + missed + CALM
    ids = submit(core, texts, "a")
    scorer.score(ids)
    records = [core.store.get(i) for i in ids]
    flagged = [r["scores"]["injury"]["flagged"] for r in records]  # type: ignore[index]
    audit = [r["audit"] == "1" for r in records]  # type: ignore[index]
    assert not any(a and f for a, f in zip(audit, flagged, strict=True))  # only unflagged outputs are audited
    assert 0 < sum(audit) < len(ids) - sum(flagged)
    labels = [1 if t in INJURED or t in missed else 0 for t in texts]
    core.apply_labels([(i, "injury", y) for i, y in zip(ids, labels, strict=True)])
    got = core.monitor.evaluate("m", "injury", Window.parse("24h"))
    s = np.array([injury_score(t) for t in texts])
    y = np.array(labels)
    w = np.array([1.0 if f else (2.0 if a else 0.0) for f, a in zip(flagged, audit, strict=True)])
    design = w > 0
    assert got["weighted"]["labeled"] == int(design.sum())
    assert got["weighted"]["fnr"] == pytest.approx(ev.weighted_fnr(s[design], y[design], 0.5, w[design]))
    expected_auc = ev.roc_auc(s[design], y[design], w[design])
    assert got["weighted"]["auc"] == (None if expected_auc is None else pytest.approx(expected_auc))


def test_drift_against_the_previous_span(make, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make()
    before = submit(core, CALM * 4, "d0")
    clock.now += 3600
    after = submit(core, INJURED * 4, "d1")
    clock.now += 1  # the 1h window now starts just after the first batch
    scorer.score(before + after)
    core.apply_labels([(after[0], "injury", 1)])
    got = core.monitor.evaluate("m", "injury", Window.parse("1h"))
    ref = np.array([injury_score(t) for t in CALM * 4])
    cur = np.array([injury_score(t) for t in INJURED * 4])
    assert got["drift"]["current"] == 20 and got["drift"]["reference"] == 20
    assert got["drift"]["psi"] == pytest.approx(ev.psi(ref, cur))
    assert got["drift"]["ks"] == pytest.approx(ev.ks_statistic(ref, cur)) and got["drift"]["ks"] > 0.5
    assert got["label_coverage"] == pytest.approx(1 / 20)


def test_windows_are_bounded(make) -> None:  # type: ignore[no-untyped-def]
    core, scorer = make(window_max_entries=5)
    ids = submit(core, (INJURED + CALM) * 2, "b")
    scorer.score(ids)
    core.apply_labels([(i, "injury", n % 2) for n, i in enumerate(ids)])
    keys, version = core.keys, core.detectors["injury"].version
    assert core.redis.zcard(keys.window("m", "injury", version)) == 5
    assert core.redis.hlen(keys.window_index("m", "injury", version)) == 5
    assert core.redis.zcard(keys.scores("m", "injury", version)) == 5


def test_bad_window_names() -> None:
    # Python's \d matches any script's digits ("٣" is 3): the window would answer under a name nobody sent.
    for bad in ("1y", "count:0", "count:x", "24", "", "count:\u0663", "\u0663h", "1\u00b2h"):
        with pytest.raises(ValidationFailed):
            Window.parse(bad)
    assert Window.parse("7d").seconds == 7 * 86400 and Window.parse("count:1000").count == 1000


def test_a_new_detector_version_is_monitored_on_its_own_outputs_only(make) -> None:  # type: ignore[no-untyped-def]
    # After a detector upgrade (a new model.json: new weights, new threshold) its quality must be the
    # new classifier's: the old version's scores judged at the new threshold would be neither.
    core, scorer = make()
    w = Window.parse("24h")
    old_ids = submit(core, INJURED + CALM, "v1-")
    scorer.score(old_ids)
    core.apply_labels([(i, "injury", int(t in INJURED)) for i, t in zip(old_ids[1:], (INJURED + CALM)[1:],
                                                                      strict=True)])
    before = core.monitor.evaluate("m", "injury", w)
    old_version = core.detectors["injury"].version
    assert (before["version"], before["labeled"], before["drift"]["current"]) == (old_version, 9, 10)

    upgraded = dataclasses.replace(core.detectors["injury"], version=old_version + "-next", threshold=0.25)
    core.detectors["injury"] = upgraded  # the API's configuration (the monitor reads the same dict)
    scorer.detectors["injury"].config = upgraded  # and the workers'
    fresh = core.monitor.evaluate("m", "injury", w)
    assert (fresh["version"], fresh["labeled"], fresh["drift"]["current"]) == (upgraded.version, 0, 0)

    texts = INJURED[:3] + CALM[:2]
    new_ids = submit(core, texts, "v2-")
    scorer.score(new_ids)
    core.apply_labels([(i, "injury", int(t in INJURED)) for i, t in zip(new_ids, texts, strict=True)])
    core.apply_labels([(old_ids[0], "injury", 1)])  # a late label for an output the old version scored
    after = core.monitor.evaluate("m", "injury", w)
    scores, labels = np.array([injury_score(t) for t in texts]), np.array([1, 1, 1, 0, 0])
    assert (after["labeled"], after["positives"], after["drift"]["current"]) == (5, 3, 5)
    assert after["auc"] == pytest.approx(ev.nm_auc(scores, labels, 1, 1))
    assert after["fpr"] == ev.fpr_at(scores, labels, 0.25).to_dict()
    # The late label joined the old version's window, which keeps its own history.
    old_window = core.redis.zcard(core.keys.window("m", "injury", old_version))
    assert old_window == 10
