"""Reviewers' queue end to end (GET /v1/review, POST /v1/review/leases): real gunicorn, a real worker
process scoring with the shipped detector, real Redis."""

from __future__ import annotations

import uuid

import requests

from workers.detector import OnnxDetector

from .procs import wait_for
from .stack import Stack, expected


def test_the_review_queue_lists_what_reviewers_must_label(stack: Stack, detectors: dict[str, OnnxDetector]) -> None:
    # GET /v1/review: the outputs the audit-weighted metrics need labeled (flagged by the detector, or
    # audit-sampled), oldest first, until a label arrives. Scored by the real worker, shipped detector.
    model = "review-" + uuid.uuid4().hex[:8]
    texts = ["He was stabbed in the chest and bled heavily before the ambulance arrived.",
             "The meeting moved to Thursday.", "She fractured her skull in the fall and is in intensive care.",
             "Water the tomatoes every other day.", "The driver was critically injured when the truck rolled over."]
    ids = [f"{model}-{n}" for n in range(len(texts))]
    for i, t in zip(ids, texts, strict=True):  # one at a time, so their order of arrival is defined
        r = stack.post("/v1/score", {"outputs": [{"id": i, "model": model, "response": t, "detectors": ["injury"]}],
                                     "timeout_ms": 20000})
        assert r.status_code == 200, r.text
    records = {o["id"]: o for o in stack.get("/v1/outputs?" + "&".join(f"id={i}" for i in ids)).json()["outputs"]}
    threshold = detectors["injury"].threshold
    flagged = [i for i, t in zip(ids, texts, strict=True) if expected(detectors, "injury", t) >= threshold]
    assert flagged == [ids[0], ids[2], ids[4]]  # the shipped detector catches these, passes the others
    # The audit sample is random (REDLINE_AUDIT_RATE): it is whatever the stored records say.
    want = [i for i in ids if i in flagged or records[i]["audit"]]
    queue = stack.get(f"/v1/review?model={model}&detector=injury").json()
    assert queue["model"] == model and queue["detector"] == "injury" and queue["waiting"] == len(want)
    assert [o["id"] for o in queue["outputs"]] == want
    for item in queue["outputs"]:
        assert item["reason"] == ("flagged" if item["id"] in flagged else "audit")
        assert item["leased_until"] is None and item["leased_by"] is None  # nobody has leased it
        assert {k: v for k, v in item.items() if k not in ("reason", "leased_until", "leased_by")} == \
            records[item["id"]]
    assert [o["id"] for o in stack.get(f"/v1/review?model={model}&detector=injury&limit=2").json()["outputs"]] == \
        want[:2]
    r = requests.put(f"{stack.base}/v1/outputs/{ids[0]}/labels", json={"injury": 1}, timeout=30)
    assert r.status_code == 200
    after = stack.get(f"/v1/review?model={model}&detector=injury").json()
    assert [o["id"] for o in after["outputs"]] == want[1:] and after["waiting"] == len(want) - 1
    assert stack.get(f"/v1/review?model={model}&detector=deception").json() == {
        "model": model, "detector": "deception", "waiting": 0, "outputs": []}  # not scored by it
    metrics = stack.get("/metrics").text
    assert f'redline_review_waiting{{detector="injury",model="{model}"}} {len(want) - 1}.0' in metrics
    for query, status, fragment in [("?model=m", 422, "detector="), ("?detector=injury", 422, "model="),
                                    ("?model=m&detector=nope", 404, "no detector 'nope'"),
                                    ("?model=m&detector=injury&limit=0", 422, "from 1 to 50"),
                                    ("?model=m&detector=injury&limit=51", 422, "from 1 to 50"),
                                    ("?model=m&detector=injury&limit=", 422, "'limit'"),
                                    ("?model=m&model=n&detector=injury", 422, "given 2 times")]:
        r = stack.get("/v1/review" + query)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (query, r.text)


def test_reviewers_leasing_from_one_queue_are_handed_different_outputs(stack: Stack) -> None:
    model = "lease-" + uuid.uuid4().hex[:8]
    texts = ["He was stabbed in the chest and bled heavily.", "She fractured her skull in the fall.",
             "The driver was critically injured when the truck rolled over.", "He broke both legs in the crash."]
    ids = [f"{model}-{n}" for n in range(len(texts))]
    for i, t in zip(ids, texts, strict=True):  # one at a time, so their order of arrival is defined
        r = stack.post("/v1/score", {"outputs": [{"id": i, "model": model, "response": t, "detectors": ["injury"]}],
                                     "timeout_ms": 20000})
        assert r.status_code == 200 and r.json()["outputs"][0]["scores"]["injury"]["flagged"], r.text
    first = stack.post("/v1/review/leases", {"model": model, "detector": "injury", "limit": 2, "lease_s": 600})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [o["id"] for o in body["outputs"]] == ids[:2] and body["waiting"] == 4 and body["lease_s"] == 600
    assert all(o["leased_until"] == body["leased_until"] and o["reason"] == "flagged" for o in body["outputs"])
    assert body["outputs"][0]["response"] == texts[0]  # with the texts a reviewer needs
    second = stack.post("/v1/review/leases", {"model": model, "detector": "injury"}).json()  # limit 50, 900 s
    assert [o["id"] for o in second["outputs"]] == ids[2:] and second["lease_s"] == 900
    assert stack.post("/v1/review/leases", {"model": model, "detector": "injury"}).json()["outputs"] == []
    listing = stack.get(f"/v1/review?model={model}&detector=injury").json()  # still lists all, with their leases
    assert [(o["id"], o["leased_until"]) for o in listing["outputs"]] == \
        [(i, body["leased_until"]) for i in ids[:2]] + [(i, second["leased_until"]) for i in ids[2:]]
    assert requests.put(f"{stack.base}/v1/outputs/{ids[0]}/labels", json={"injury": 1}, timeout=30).status_code == 200
    assert [o["id"] for o in stack.get(f"/v1/review?model={model}&detector=injury").json()["outputs"]] == ids[1:]
    skipped = stack.post("/v1/review/leases/release", {"model": model, "detector": "injury",
                                                        "ids": [ids[3], ids[0], "never-seen"]})
    assert skipped.status_code == 200 and skipped.json() == {"released": [ids[3]], "not_leased": [ids[0], "never-seen"]}
    assert [o["id"] for o in stack.post("/v1/review/leases", {"model": model, "detector": "injury"}
                                        ).json()["outputs"]] == [ids[3]]  # the skipped one, handed out again
    short = "lease-short-" + uuid.uuid4().hex[:8]  # an unlabeled output returns once its lease lapses
    assert stack.post("/v1/score", {"outputs": [{"id": short, "model": short, "response": texts[3],
                                                 "detectors": ["injury"]}], "timeout_ms": 20000}).status_code == 200
    assert [o["id"] for o in stack.post("/v1/review/leases", {"model": short, "detector": "injury",
                                                              "lease_s": 1}).json()["outputs"]] == [short]
    wait_for(lambda: [o["id"] for o in stack.post("/v1/review/leases", {"model": short, "detector": "injury"}
                                                  ).json()["outputs"]] == [short], timeout=10)
    for body_sent, status, fragment in [({"detector": "injury"}, 422, "'model'"),
                                        ({"model": model}, 422, "'detector'"),
                                        ({"model": model, "detector": "nope"}, 404, "no detector 'nope'"),
                                        ({"model": model, "detector": "injury", "limit": 0}, 422, "from 1 to 50"),
                                        ({"model": model, "detector": "injury", "limit": True}, 422, "'limit'"),
                                        ({"model": model, "detector": "injury", "lease_s": 86401}, 422,
                                         "'lease_s' must be an integer from 1 to 86400"),
                                        ({"model": model, "detector": "injury", "lease_s": 1.5}, 422, "'lease_s'"),
                                        ({"model": model, "detector": "injury", "who": "ana"}, 422, "unknown field")]:
        r = stack.post("/v1/review/leases", body_sent)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (body_sent, r.text)
    for body_sent, status, fragment in [({"model": model, "detector": "injury"}, 422, "'ids'"),
                                        ({"model": model, "detector": "injury", "ids": []}, 422, "'ids'"),
                                        ({"model": model, "detector": "injury", "ids": ["bad id"]}, 422, "must match"),
                                        ({"model": model, "detector": "nope", "ids": ["a"]}, 404, "no detector"),
                                        ({"detector": "injury", "ids": ["a"]}, 422, "'model'")]:
        r = stack.post("/v1/review/leases/release", body_sent)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (body_sent, r.text)
