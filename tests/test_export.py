"""GET /v1/labels: labeled outputs a page at a time, against a real Redis and the real scorer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from redis import Redis

from service import export
from service.app import create_app
from service.keys import Keys
from service.offline import read_file
from service.scores import DetectorScore
from service.settings import Settings
from service.store import NewOutput, OutputStore
from workers.runtime import build_scorer


def _scored(store: OutputStore, ids: list[str], at: float, now: list[float]) -> None:
    now[0] = at
    store.create([NewOutput(id=i, model="m", response=i, detectors=["injury"]) for i in ids], "j")
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}
    store.finish_scored([(r, hit, {}) for r in store.get_many(ids) if r])


def _all_pages(redis: Redis, keys: Keys, limit: int, between=lambda n: None) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    cursor = None
    for n in range(100):
        entries, cursor = export.labeled_page(redis, keys, "m", "injury", "v1", float("-inf"), cursor, limit)
        seen += [e.id for e in entries]
        if cursor is None:
            return seen
        between(n)
    raise AssertionError("paging did not end")


def test_pages_cover_the_window_once_while_it_changes(redis: Redis, prefix: str) -> None:
    # Outputs of one request share a created_at, so pages must break ties by id, the order Redis keeps.
    now = [0.0]
    keys = Keys(prefix)
    store = OutputStore(redis, keys, ttl_s=10**9, window_cap=1000, clock=lambda: now[0])
    batches = {100.0: [f"a{i}" for i in range(10)], 200.0: [f"b{i}" for i in range(9)] + ["b", "b-", "b_"],
               300.0: [f"c{i}" for i in range(5)]}
    for at, ids in batches.items():
        _scored(store, ids, at, now)
        store.apply_labels([(i, "m", "injury", 1) for i in ids])
    window = [m.split(b"|")[0].decode() for m in redis.zrange(keys.window("m", "injury", "v1"), 0, -1)]
    for limit in (1, 4, 7, 12, 100):
        assert _all_pages(redis, keys, limit) == window, limit
    assert len(window) == 27

    late = ["d0", "d1"]

    def change(n: int) -> None:
        if n == 1:  # a relabel of an entry already read replaces its member: it must not come back
            store.apply_labels([("a0", "m", "injury", 0), ("b3", "m", "injury", 0)])
        if n == 2:  # outputs labeled later, in the window's future
            _scored(store, late, 400.0, now)
            store.apply_labels([(i, "m", "injury", 1) for i in late])

    seen = _all_pages(redis, keys, 4, change)
    assert sorted(seen) == sorted(window + late) and len(seen) == len(set(seen))


@pytest.fixture()
def client(redis: Redis, settings: Settings):  # type: ignore[no-untyped-def]
    s = dataclasses.replace(settings, audit_rate=0.0)
    app = create_app(s, redis)
    app.extensions["scorer"] = build_scorer(redis, s, "export-test")
    return app.test_client()


def test_labeled_outputs_come_with_their_texts_scores_and_labels(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    core = client.application.extensions["redline"]
    texts = {"x-blood": "blood everywhere", "x-calm": "a calm day", "x-hurt": "badly hurt and bleeding"}
    outputs = [{"id": i, "model": "bot", "prompt": f"about {i}", "response": t, "detectors": ["injury"],
                "metadata": {"k": i}} for i, t in texts.items()]
    assert client.post("/v1/outputs", json={"outputs": outputs + [
        {"id": "x-unlabeled", "model": "bot", "response": "blood", "detectors": ["injury"]}]}).status_code == 202
    client.application.extensions["scorer"].score(list(texts) + ["x-unlabeled"])
    client.post("/v1/labels", json={"labels": [{"id": i, "detector": "injury", "label": int(i != "x-calm")}
                                               for i in texts]})
    page = client.get("/v1/labels?model=bot&detector=injury&limit=2").get_json()
    rest = client.get(f"/v1/labels?model=bot&detector=injury&limit=2&cursor={page['next']}").get_json()
    assert rest["next"] is None
    got = page["outputs"] + rest["outputs"]
    assert sorted(o["id"] for o in got) == sorted(texts)  # the unlabeled output is not there
    version = core.detectors["injury"].version
    assert (page["model"], page["detector"], page["version"], page["window"]) == ("bot", "injury", version, None)
    for o in got:
        record = client.get(f"/v1/outputs/{o['id']}").get_json()
        stored = record["scores"]["injury"]
        assert (o["score"], o["flagged"], o["label"]) == (stored["score"], stored["flagged"], int(o["id"] != "x-calm"))
        assert (o["prompt"], o["response"], o["metadata"]) == (f"about {o['id']}", texts[o["id"]], {"k": o["id"]})
        assert o["weight"] == (1.0 if stored["flagged"] else 0.0)  # audit rate 0: flagged or nothing
        assert o["created_at"] == record["created_at"] and o["labeled_at"] >= o["created_at"]
    # One line per output: `redline evaluate` reads it as it is.
    lines = tmp_path / "labeled.jsonl"
    lines.write_text("".join(json.dumps(o) + "\n" for o in got))
    scores, labels = read_file(lines)
    assert sorted(zip(scores.tolist(), labels.tolist(), strict=True)) == sorted((o["score"], o["label"]) for o in got)
    assert client.get("/v1/labels?model=bot&detector=injury&window=1h").get_json()["outputs"] == page["outputs"] + \
        rest["outputs"]
    assert client.get("/v1/labels?model=bot&detector=injury&version=0.9").get_json()["outputs"] == []
    assert client.get("/v1/labels?model=nobody&detector=injury").get_json()["outputs"] == []
    for query, status, fragment in [("?model=bot", 422, "detector="), ("?model=bot&detector=nope", 404, "nope"),
                                    ("?model=bot&detector=injury&cursor=abc", 422, "cursor"),
                                    ("?model=bot&detector=injury&cursor=" + export.encode_cursor((1.0, "a b")),
                                     422, "cursor"),
                                    ("?model=bot&detector=injury&window=count:10", 422, "duration"),
                                    ("?model=bot&detector=injury&window=soon", 422, "window"),
                                    ("?model=bot&detector=injury&limit=0", 422, "'limit'")]:
        r = client.get("/v1/labels" + query)
        assert r.status_code == status and fragment in r.get_json()["error"]["message"], (query, r.get_json())
