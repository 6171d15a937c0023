"""API keys, scopes and tenant isolation (Flask app against a real Redis, real scorer)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from redis import Redis

from service.app import create_app
from service.auth import create_key, describe_keys
from service.settings import Settings
from workers.runtime import build_scorer

ALL = ["outputs:write", "labels:write", "read"]


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "keys"
    made = {
        "a": create_key(path, "team-a", ALL),
        "b": create_key(path, "team-b", ALL),
        "reader": create_key(path, "team-a", ["read"]),
        "writer": create_key(path, "team-a", ["outputs:write"]),
        "labeler": create_key(path, "team-a", ["labels:write"]),
        "reviewer": create_key(path, "team-a", ["labels:write", "read"]),
        "default": create_key(path, "default", ALL),  # the tenant open mode uses, which has no id prefix
    }
    made["file"] = str(path)
    return made


@pytest.fixture()
def client(redis: Redis, settings: Settings, keys: dict[str, str]):  # type: ignore[no-untyped-def]
    s = dataclasses.replace(settings, api_keys_file=keys["file"], monitor_min_positives=1, monitor_cache_s=0)
    app = create_app(s, redis)
    app.extensions["scorer"] = build_scorer(redis, s, "auth-test")
    return app.test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def score_all(client) -> None:  # type: ignore[no-untyped-def]
    core = client.application.extensions["redline"]
    ids = [i.decode() for i in core.redis.zrange(core.keys.pending, 0, -1)]
    client.application.extensions["scorer"].score(ids)


OUT = {"outputs": [{"id": "x1", "model": "bot", "response": "blood everywhere", "detectors": ["injury"]}]}
ENDPOINTS = [  # method, path, body, scope needed
    ("POST", "/v1/outputs", OUT, "outputs:write"),
    ("POST", "/v1/score", {**OUT, "timeout_ms": 1}, "outputs:write"),
    ("GET", "/v1/outputs/x1", None, "read"),
    ("GET", "/v1/outputs?id=x1", None, "read"),
    ("PUT", "/v1/outputs/x1/labels", {"injury": 1}, "labels:write"),
    ("POST", "/v1/labels", {"labels": [{"id": "x1", "detector": "injury", "label": 1}]}, "labels:write"),
    ("GET", "/v1/monitor", None, "read"),
    ("GET", "/v1/detectors", None, "read"),
    ("GET", "/v1/dead-letters", None, "read"),
    ("GET", "/v1/review?model=bot&detector=injury", None, "read"),
    ("GET", "/v1/labels?model=bot&detector=injury", None, "read"),
    ("POST", "/v1/dead-letters/retry", {"ids": ["x1"]}, "outputs:write"),
    ("POST", "/v1/review/leases", {"model": "bot", "detector": "injury"}, "labels:write+read"),  # texts come back
    ("POST", "/v1/review/leases/release", {"model": "bot", "detector": "injury", "ids": ["x1"]}, "labels:write"),
    ("DELETE", "/v1/outputs/x1", None, "outputs:write"),  # last: its holder erases x1
]


def test_auth_matrix_for_every_endpoint(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client.post("/v1/outputs", json=OUT, headers=auth(keys["a"]))
    for method, path, body, scope in ENDPOINTS:
        missing = client.open(path, method=method, json=body)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert missing.get_json()["error"]["code"] == "unauthorized"
        assert client.open(path, method=method, json=body, headers=auth("rl_not-a-key")).status_code == 401
        assert client.open(path, method=method, json=body, headers={"Authorization": keys["a"]}).status_code == 401
        holds = {"writer": {"outputs:write"}, "labeler": {"labels:write"}, "reader": {"read"},
                 "reviewer": {"labels:write", "read"}}
        needed = set(scope.split("+"))
        for who, scopes in holds.items():
            r = client.open(path, method=method, json=body, headers=auth(keys[who]))
            if needed <= scopes:
                assert r.status_code < 400, (path, who, r.get_json())
            else:  # refused, naming a scope it lacks
                assert r.status_code == 403, (path, who)
                assert any(repr(x) in r.get_json()["error"]["message"] for x in needed - scopes), (path, who)
        assert any(needed <= scopes for scopes in holds.values()), path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200  # open


def test_a_tenant_pages_through_its_own_labeled_outputs(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    # Cursors name public ids: an internal `team-a~id` in `next` was refused as no valid id, so a keyed
    # tenant could read only the first page.
    a, b = auth(keys["a"]), auth(keys["b"])
    for headers, tag in ((a, "a"), (b, "b")):
        outs = [{"id": f"{tag}{n}", "model": "bot", "response": "blood everywhere", "detectors": ["injury"],
                 "labels": {"injury": 1}} for n in range(3)]
        for out in outs:  # one request each, so created_at orders them
            assert client.post("/v1/outputs", json={"outputs": [out]}, headers=headers).status_code == 202
    score_all(client)
    for headers, tag in ((a, "a"), (b, "b")):
        seen, cursor = [], None
        while True:
            page = client.get("/v1/labels?model=bot&detector=injury&limit=1" + (f"&cursor={cursor}" if cursor else ""),
                              headers=headers).get_json()
            assert "error" not in page, page
            seen += [o["id"] for o in page["outputs"]]
            if not (cursor := page["next"]):
                break
        assert seen == [f"{tag}0", f"{tag}1", f"{tag}2"]
    first = client.get("/v1/labels?model=bot&detector=injury&limit=1", headers=a).get_json()
    theirs = client.get(f"/v1/labels?model=bot&detector=injury&cursor={first['next']}", headers=b).get_json()
    assert [o["id"] for o in theirs["outputs"]] == ["b0", "b1", "b2"]  # another's cursor reads only one's own


def test_each_label_names_the_key_that_gave_it(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    # A reviewer's bad labels must be findable: the label in force names its key, in the record, the
    # labeled-outputs listing (and so `redline export`) and `redline keys list`.
    key_id = {who: hashlib.sha256(keys[who].encode()).hexdigest()[:12] for who in ("a", "reviewer", "labeler")}
    listed = "\n".join(describe_keys(Path(keys["file"])))
    assert all(f"id {k}" in listed for k in key_id.values())
    a, reviewer, labeler = auth(keys["a"]), auth(keys["reviewer"]), auth(keys["labeler"])
    outs = [{"id": "given", "model": "bot", "response": "blood everywhere", "detectors": ["injury"],
             "labels": {"injury": 1}},
            {"id": "later", "model": "bot", "response": "a calm day", "detectors": ["injury"]}]
    assert client.post("/v1/outputs", json={"outputs": outs}, headers=a).status_code == 202
    score_all(client)
    assert client.put("/v1/outputs/later/labels", json={"injury": 0}, headers=reviewer).status_code == 200

    def attribution() -> dict[str, dict[str, str]]:
        found = client.get("/v1/outputs?id=given&id=later", headers=reviewer).get_json()["outputs"]
        return {o["id"]: o["labeled_by"] for o in found}

    assert attribution() == {"given": {"injury": key_id["a"]}, "later": {"injury": key_id["reviewer"]}}
    # The same label again keeps whose it was; a changed one is the changer's.
    same = client.post("/v1/labels", json={"labels": [{"id": "later", "detector": "injury", "label": 0}]},
                       headers=labeler).get_json()
    assert same["unchanged"] == 1 and attribution()["later"] == {"injury": key_id["reviewer"]}
    changed = client.post("/v1/labels", json={"labels": [{"id": "given", "detector": "injury", "label": 0}]},
                          headers=labeler).get_json()
    assert changed["changed"] == 1 and attribution()["given"] == {"injury": key_id["labeler"]}
    page = client.get("/v1/labels?model=bot&detector=injury", headers=reviewer).get_json()
    assert {o["id"]: o["labeled_by"] for o in page["outputs"]} == {"given": key_id["labeler"],
                                                                  "later": key_id["reviewer"]}


def test_a_review_lease_names_the_key_that_holds_it(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    reviewer, a = auth(keys["reviewer"]), auth(keys["a"])
    outs = [{"id": f"r{n}", "model": "bot", "response": "blood everywhere", "detectors": ["injury"]} for n in range(3)]
    assert client.post("/v1/outputs", json={"outputs": outs}, headers=a).status_code == 202
    score_all(client)
    mine = client.post("/v1/review/leases", json={"model": "bot", "detector": "injury", "limit": 2},
                       headers=reviewer).get_json()
    key_id = hashlib.sha256(keys["reviewer"].encode()).hexdigest()[:12]
    assert [(o["id"], o["leased_by"]) for o in mine["outputs"]] == [("r0", key_id), ("r1", key_id)]
    queue = client.get("/v1/review?model=bot&detector=injury", headers=a).get_json()["outputs"]
    assert [(o["id"], o["leased_by"]) for o in queue] == [("r0", key_id), ("r1", key_id), ("r2", None)]
    released = client.post("/v1/review/leases/release", json={"model": "bot", "detector": "injury", "ids": ["r1"]},
                           headers=a).get_json()  # not locked to its holder: anyone of the tenant may
    assert released["released"] == ["r1"]
    queue = client.get("/v1/review?model=bot&detector=injury", headers=a).get_json()["outputs"]
    assert [(o["id"], o["leased_by"], o["leased_until"] is None) for o in queue] == [
        ("r0", key_id, False), ("r1", None, True), ("r2", None, True)]


def test_a_tenant_past_its_share_of_the_backlog_is_refused_and_others_are_not(  # type: ignore[no-untyped-def]
        redis: Redis, settings: Settings, keys: dict[str, str]) -> None:
    # REDLINE_MAX_PENDING_PER_TENANT: one tenant's flood must not fill the backlog for every tenant.
    s = dataclasses.replace(settings, api_keys_file=keys["file"], max_pending_per_tenant=2, retry_after_s=3)
    app = create_app(s, redis)
    app.extensions["scorer"] = build_scorer(redis, s, "tenant-bound")
    client = app.test_client()

    def post(key: str, *ids: str):  # type: ignore[no-untyped-def]
        return client.post("/v1/outputs", headers=auth(keys[key]), json={"outputs": [
            {"id": i, "model": "bot", "response": "blood everywhere", "detectors": ["injury"]} for i in ids]})

    assert post("a", "x1", "x2").status_code == 202
    refused = post("a", "x3")
    error = refused.get_json()["error"]
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "3" and error["code"] == "overloaded"
    assert "2 outputs of tenant 'team-a' are waiting" in error["message"]
    assert "REDLINE_MAX_PENDING_PER_TENANT=2" in error["message"]
    assert client.get("/v1/outputs/x3", headers=auth(keys["a"])).status_code == 404  # nothing of it stored
    assert post("b", "x1", "x2").status_code == 202  # team-b has its own share
    score_all(client)
    assert post("a", "x3").status_code == 202  # scored: room again


def test_tenants_never_see_each_other(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    a, b = auth(keys["a"]), auth(keys["b"])
    assert client.post("/v1/outputs", json=OUT, headers=a).status_code == 202
    # Same id, different content, other tenant: no 409, since ids are per tenant (and existence is never revealed).
    other = {"outputs": [{"id": "x1", "model": "bot", "response": "a quiet day", "detectors": ["injury"],
                          "labels": {"injury": 0}}]}
    assert client.post("/v1/outputs", json=other, headers=b).status_code == 202
    score_all(client)
    # Review queues are per tenant: team-a's flagged x1 awaits a label; team-b's x1 came labeled.
    review = "/v1/review?model=bot&detector=injury"
    assert [(o["id"], o["model"], o["reason"]) for o in client.get(review, headers=a).get_json()["outputs"]] == [
        ("x1", "bot", "flagged")]
    assert client.get(review, headers=b).get_json() == {"model": "bot", "detector": "injury", "waiting": 0,
                                                        "outputs": []}
    lease = {"model": "bot", "detector": "injury"}
    assert client.post("/v1/review/leases", json=lease, headers=b).get_json()["outputs"] == []  # not team-a's x1
    assert [o["id"] for o in client.post("/v1/review/leases", json=lease, headers=a).get_json()["outputs"]] == ["x1"]
    give_back = {**lease, "ids": ["x1"]}
    assert client.post("/v1/review/leases/release", json=give_back, headers=b).get_json()["released"] == []
    assert client.post("/v1/review/leases", json=lease, headers=a).get_json()["outputs"] == []  # still team-a's lease
    assert client.post("/v1/review/leases/release", json=give_back, headers=a).get_json()["released"] == ["x1"]
    mine = client.get("/v1/outputs/x1", headers=a).get_json()
    theirs = client.get("/v1/outputs/x1", headers=b).get_json()
    assert (mine["id"], mine["model"], mine["response"]) == ("x1", "bot", "blood everywhere")
    assert (theirs["id"], theirs["model"], theirs["response"]) == ("x1", "bot", "a quiet day")
    only_a = {"outputs": [{"id": "a-only", "model": "bot", "response": "hi", "detectors": ["injury"]}]}
    client.post("/v1/outputs", json=only_a, headers=a)
    assert client.get("/v1/outputs/a-only", headers=b).status_code == 404
    assert client.get("/v1/outputs?id=a-only", headers=b).get_json() == {"outputs": [], "missing": ["a-only"]}
    assert [o["id"] for o in client.get("/v1/outputs?id=a-only", headers=a).get_json()["outputs"]] == ["a-only"]
    assert client.put("/v1/outputs/a-only/labels", json={"injury": 1}, headers=b).status_code == 404
    assert client.delete("/v1/outputs/a-only", headers=b).status_code == 404  # not theirs to erase
    labeled = client.put("/v1/outputs/x1/labels", json={"injury": 1}, headers=a).get_json()
    assert labeled["labels"]["injury"]["result"] == "new"
    # Windows and monitor are per tenant: each sees its own one label under its own model name.
    for key, label in ((a, 1), (b, 0)):
        listing = client.get("/v1/monitor", headers=key).get_json()["monitors"]
        assert {(m["model"], m["detector"]) for m in listing} == {("bot", "injury")}
        one = client.get("/v1/monitor?model=bot&detector=injury&window=24h", headers=key).get_json()
        assert one["model"] == "bot" and one["labeled"] == 1 and one["positives"] == label
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'model="team-a~bot"' in metrics and 'model="team-b~bot"' in metrics
    # Each exports its own labels only: the same model name, the other tenant's label.
    for key, label in ((a, 1), (b, 0)):
        exported = client.get("/v1/labels?model=bot&detector=injury", headers=key).get_json()
        assert [(o["id"], o["label"]) for o in exported["outputs"]] == [("x1", label)] and exported["model"] == "bot"
    # Each erases its own x1 only.
    assert client.delete("/v1/outputs/x1", headers=a).get_json() == {"id": "x1", "deleted": True}
    assert client.get("/v1/outputs/x1", headers=a).status_code == 404
    assert client.get("/v1/outputs/x1", headers=b).get_json()["response"] == "a quiet day"


def test_the_unprefixed_default_tenant_cannot_reach_other_tenants_ids(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    # Tenant ids live in Redis as `tenant~id`; the default tenant's (open mode's) are unprefixed, so
    # its public ids and internal ones are the same string. '~' is in no valid public id, yet the
    # path of GET and PUT .../labels took any string: the default tenant could read and relabel
    # another tenant's output by naming it `team-a~x1`.
    a, default = auth(keys["a"]), auth(keys["default"])
    assert client.post("/v1/outputs", json=OUT, headers=a).status_code == 202
    score_all(client)
    assert client.get("/v1/outputs/x1", headers=a).status_code == 200
    assert client.get("/v1/outputs/team-a~x1", headers=default).status_code == 404
    assert client.put("/v1/outputs/team-a~x1/labels", json={"injury": 1}, headers=default).status_code == 404
    assert client.get("/v1/outputs/x1", headers=a).get_json()["labels"] == {}  # untouched
    client.put("/v1/outputs/x1/labels", json={"injury": 1}, headers=a)
    window = "/v1/monitor?model={}&detector=injury&window=24h"
    assert client.get(window.format("bot"), headers=a).get_json()["labeled"] == 1
    assert client.get(window.format("team-a~bot"), headers=default).status_code == 404
    # A keyed tenant's own prefix does not help either: its ids are always prefixed once more.
    assert client.get("/v1/outputs/team-a~x1", headers=a).status_code == 404


def test_a_tenants_dead_letters_are_found_behind_many_newer_ones_of_another(client, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    # The dead-letter set holds every tenant's failures, and is read a page at a time: team-a's two
    # older failures must still be listed behind 600 newer ones of team-b (more than a page).
    core = client.application.extensions["redline"]
    from service.store import NewOutput

    mine = [NewOutput(id=f"team-a~lost-{i}", model="team-a~bot", response="x", detectors=["injury"]) for i in range(2)]
    theirs = [NewOutput(id=f"team-b~lost-{i}", model="team-b~bot", response="x", detectors=["injury"])
              for i in range(600)]
    core.store.create(mine + theirs, job_id="never-run")
    core.store.finish_failed({o.id: "boom" for o in mine})
    core.store.finish_failed({o.id: "boom" for o in theirs})
    listed = client.get("/v1/dead-letters?limit=5", headers=auth(keys["a"])).get_json()["outputs"]
    assert sorted(o["id"] for o in listed) == ["lost-0", "lost-1"]
    assert {o["model"] for o in listed} == {"bot"}
    assert len(client.get("/v1/dead-letters?limit=1000", headers=auth(keys["b"])).get_json()["outputs"]) == 600
    # A retry names the caller's own outputs: team-b's "lost-0" is not team-a's.
    retried = client.post("/v1/dead-letters/retry", json={"ids": ["lost-0"]}, headers=auth(keys["a"])).get_json()
    assert retried == {"requeued": ["lost-0"], "skipped": [], "missing": []}
    assert core.store.get("team-a~lost-0")["status"] == "queued"  # type: ignore[index]
    assert core.store.get("team-b~lost-0")["status"] == "failed"  # type: ignore[index]
    assert client.post("/v1/dead-letters/retry", json={"ids": ["a-only"]},
                       headers=auth(keys["b"])).get_json()["missing"] == ["a-only"]
