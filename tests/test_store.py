"""Output records against a real Redis: atomic create, idempotent finish, exact counters."""

import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis

from service.errors import Conflict
from service.keys import Keys
from service.review_queues import Lease
from service.scores import DetectorScore
from service.store import BacklogFull, NewOutput, OutputStore


@pytest.fixture()
def store(redis: Redis, prefix: str) -> OutputStore:
    return OutputStore(redis, Keys(prefix), ttl_s=3600)


def _out(i: str, text: str = "hi") -> NewOutput:
    return NewOutput(id=i, model="m1", response=text, detectors=["injury"])


def test_create_then_read(store: OutputStore) -> None:
    assert store.create([_out("a"), _out("b")], job_id="j1") == ["new", "new"]
    record = store.get("a")
    assert record is not None
    assert record["status"] == "queued" and record["response"] == "hi" and record["detectors"] == ["injury"]
    assert record["job"] == "j1" and record["created_at"] > 0
    assert store.redis.zcard(store.keys.pending) == 2


def test_resubmitting_same_content_is_idempotent(store: OutputStore) -> None:
    store.create([_out("a")], job_id="j1")
    assert store.create([_out("a")], job_id="j2") == ["queued"]
    assert store.get("a")["job"] == "j1"  # type: ignore[index]


def test_conflict_stores_nothing(store: OutputStore) -> None:
    store.create([_out("a")], job_id="j1")
    with pytest.raises(Conflict, match="'a'"):
        store.create([_out("fresh"), _out("a", text="different")], job_id="j2")
    assert store.get("fresh") is None


def test_finish_is_exactly_once(store: OutputStore) -> None:
    store.create([_out("a"), _out("b")], job_id="j1")
    record = store.get("a")
    assert record is not None
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}
    assert store.finish_scored([(record, hit, {"id": "b1"})]) == 1
    assert store.finish_scored([(record, hit, {"id": "b2"})]) == 0  # second writer changes nothing
    scored = store.get("a")
    assert scored is not None and scored["status"] == "scored" and scored["batch"] == {"id": "b1"}
    assert scored["scores"]["injury"] == {"score": 0.9, "flagged": True, "threshold": 0.5, "version": "v1"}
    assert store.counters() == {"scored|injury|m1": 1, "flagged|injury|m1": 1}
    assert store.finish_failed({"a": "boom", "b": "boom"}) == 1  # only b was still queued
    assert store.get("b")["error"] == "boom"  # type: ignore[index]
    assert store.redis.zcard(store.keys.pending) == 0


def test_every_failure_is_a_dead_letter_kept_as_long_as_records(redis: Redis, prefix: str) -> None:
    now = [1_000_000.0]
    store = OutputStore(redis, Keys(prefix), ttl_s=3600, clock=lambda: now[0])
    store.create([_out("old"), _out("new"), _out("fine")], job_id="j1")
    assert store.finish_failed({"old": "boom"}) == 1
    assert store.finish_failed({"old": "again"}) == 0  # no longer queued: not listed twice
    assert redis.zrange(store.keys.dead, 0, -1, withscores=True) == [(b"old", 1_000_000.0)]
    now[0] += 3601  # "old" is past the record TTL now: its dead-letter entry goes with the next failure
    assert store.finish_failed({"new": "boom"}) == 1
    assert redis.zrange(store.keys.dead, 0, -1) == [b"new"]
    record = store.get("fine")
    assert record is not None
    store.finish_scored([(record, {}, {})])
    assert redis.zrange(store.keys.dead, 0, -1) == [b"new"]  # a score is no dead letter


def test_the_review_queue_holds_flagged_and_audited_outputs_until_labeled(redis: Redis, prefix: str) -> None:
    now = [1_000_000.0]
    store = OutputStore(redis, Keys(prefix), ttl_s=3600, window_cap=3, clock=lambda: now[0])
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}
    miss = {"injury": DetectorScore(score=0.1, flagged=False, threshold=0.5, version="v1")}

    def scored(i: str, scores: dict[str, DetectorScore], audit_rate: float = 0.0, **labels: int) -> None:
        store.create([NewOutput(id=i, model="m1", response=i, detectors=["injury"], labels=dict(labels))], "j")
        record = store.get(i)
        assert record is not None
        store.finish_scored([(record, scores, {})], audit_rate=audit_rate)
        now[0] += 1

    scored("flagged", hit)
    scored("audited", miss, audit_rate=1.0)  # every unflagged output is audit-sampled at rate 1
    scored("passed", miss)  # neither flagged nor audited: nobody is asked to label it
    scored("known", hit, injury=1)  # labeled when submitted: nothing left to review
    assert store.reviews.awaiting("m1", "injury", 10) == (["flagged", "audited"], 2)
    assert store.apply_labels([("flagged", "m1", "injury", 1)]) == ["new"]
    assert store.apply_labels([("flagged", "m1", "injury", 0)]) == ["changed"]  # still labeled: not back
    assert store.reviews.awaiting("m1", "injury", 10) == (["audited"], 1)
    for i in range(3):  # at most window_cap waiting: the oldest go first
        scored(f"new-{i}", hit)
    assert store.reviews.awaiting("m1", "injury", 10) == (["new-0", "new-1", "new-2"], 3)
    assert store.reviews.awaiting("m1", "injury", 2) == (["new-0", "new-1"], 3)
    now[0] += 3600  # past the record TTL: those records are gone, and so are their queue entries
    scored("latest", hit)
    assert store.reviews.awaiting("m1", "injury", 10) == (["latest"], 1)


def test_review_leases_hand_each_waiting_output_to_one_reviewer_at_a_time(redis: Redis, prefix: str) -> None:
    now = [1_000_000.0]
    store = OutputStore(redis, Keys(prefix), ttl_s=3600, clock=lambda: now[0])
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}
    ids = [f"o{n}" for n in range(5)]
    for i in ids:
        store.create([NewOutput(id=i, model="m1", response=i, detectors=["injury"])], "j")
        record = store.get(i)
        assert record is not None
        store.finish_scored([(record, hit, {})])
        now[0] += 1
    first, waiting, until = store.reviews.lease("m1", "injury", 2, 600, by="alice")
    assert (first, waiting, until) == (["o0", "o1"], 5, now[0] + 600)
    now[0] += 10
    assert store.reviews.lease("m1", "injury", 2, 600, by="bob")[0] == ["o2", "o3"]  # the next reviewer: the next ones
    assert store.reviews.lease("m1", "injury", 10, 30)[0] == ["o4"]  # no API keys: nobody named
    leases = Keys(prefix).review_leases("m1", "injury")
    assert 590 < redis.ttl(leases) <= 600  # the set lives as long as its longest lease
    assert store.reviews.lease("m1", "injury", 10, 600) == ([], 5, now[0] + 600)  # all held
    assert store.reviews.leases("m1", "injury", ["o0", "o2", "o4", "nope"]) == [
        Lease(until, "alice"), Lease(until + 10, "bob"), Lease(now[0] + 30, None), None]
    holders = Keys(prefix).review_lease_holders("m1", "injury")
    assert 590 < redis.ttl(holders) <= 600  # the holders live as long as the leases
    assert store.reviews.awaiting("m1", "injury", 10) == (ids, 5)  # the listing still shows every one
    assert store.apply_labels([("o1", "m1", "injury", 1)]) == ["new"]  # labeled: off the queue for good
    assert store.reviews.leases("m1", "injury", ["o1"]) == [None]  # and its lease ended with it
    assert redis.hexists(holders, "o1") == 0
    now[0] += 31  # o4's short lease lapsed: back for the next reviewer
    assert store.reviews.leases("m1", "injury", ["o4"]) == [None]
    assert store.reviews.lease("m1", "injury", 10, 600, by="carol")[0] == ["o4"]
    assert store.reviews.leases("m1", "injury", ["o4"]) == [Lease(now[0] + 600, "carol")]
    assert store.reviews.release("m1", "injury", ["o4", "o1", "nope"]) == [True, False, False]  # skipped: given back
    assert redis.hexists(holders, "o4") == 0
    assert store.reviews.lease("m1", "injury", 10, 600)[0] == ["o4"]  # handed out again at once
    now[0] += 600  # every lease lapsed
    assert store.reviews.lease("m1", "injury", 10, 60)[0] == ["o0", "o2", "o3", "o4"]
    assert redis.zcard(leases) == 4 and 50 < redis.ttl(leases) <= 60  # the lapsed ones trimmed
    assert store.reviews.leases("m1", "injury", ["o0", "o2"]) == [Lease(now[0] + 60, None)] * 2  # theirs no more
    assert redis.hlen(holders) == 0
    store.reviews.forget("m1", "injury", ["o0"])  # its record expired
    assert redis.zscore(leases, "o0") is None
    # Reviewers asking at once: every output goes to exactly one of them.
    many = [f"c{n}" for n in range(40)]
    store.create([NewOutput(id=i, model="m2", response=i, detectors=["injury"]) for i in many], "j")
    store.finish_scored([(r, hit, {}) for r in store.get_many(many) if r is not None])
    with ThreadPoolExecutor(8) as pool:
        handed = list(pool.map(lambda _: store.reviews.lease("m2", "injury", 3, 60)[0], range(20)))
    assert sorted(i for got in handed for i in got) == sorted(many)
    assert 0 < redis.ttl(Keys(prefix).review_leases("m2", "injury")) <= 60


def test_delete_erases_an_output_and_every_entry_naming_it(redis: Redis, prefix: str) -> None:
    store = OutputStore(redis, Keys(prefix), ttl_s=3600)
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}
    store.create([_out("labeled"), _out("waiting"), _out("failed"), _out("queued"), _out("kept")], job_id="j1")
    for i in ("labeled", "waiting", "kept"):
        record = store.get(i)
        assert record is not None
        store.finish_scored([(record, hit, {})])
    store.apply_labels([("labeled", "m1", "injury", 1), ("kept", "m1", "injury", 0)])
    store.finish_failed({"failed": "boom"})
    stale = store.get("queued")  # as a worker read it, before the delete
    counters = store.counters()
    keys = store.keys
    window, scores = keys.window("m1", "injury", "v1"), keys.scores("m1", "injury", "v1")
    assert redis.zcard(window) == 2 and redis.zcard(scores) == 3 and redis.zcard(keys.review("m1", "injury")) == 1
    assert store.reviews.lease("m1", "injury", 5, 600, by="alice")[0] == ["waiting"]  # a reviewer holds it
    assert redis.hlen(keys.review_lease_holders("m1", "injury")) == 1
    for i in ("labeled", "waiting", "failed", "queued"):
        assert store.delete(i) is True
        assert store.get(i) is None and store.delete(i) is False
    # What names "kept" stays; nothing names the erased outputs any more.
    assert [m.split(b"|")[0] for m in redis.zrange(window, 0, -1)] == [b"kept"]
    assert redis.hkeys(keys.window_index("m1", "injury", "v1")) == [b"kept"]
    assert [m.split(b"|")[0] for m in redis.zrange(scores, 0, -1)] == [b"kept"]
    for key in (keys.review("m1", "injury"), keys.review_leases("m1", "injury"), keys.dead, keys.pending):
        assert redis.zcard(key) == 0, key
    assert redis.hlen(keys.review_lease_holders("m1", "injury")) == 0
    assert stale is not None and store.finish_scored([(stale, hit, {})]) == 0  # its job, run late, writes nothing
    assert store.get("queued") is None
    assert store.counters() == counters  # what happened is still counted


def test_a_label_after_its_score_keeps_the_score_exact_in_the_window(store: OutputStore) -> None:
    score = 0.8807970779778823  # 16 significant digits
    store.create([_out("late"), _out("early")], job_id="j1")
    store.apply_labels([("early", "m1", "injury", 1)])  # before the score: joined by the finish script
    for i in ("late", "early"):
        record = store.get(i)
        assert record is not None
        store.finish_scored([(record, {"injury": DetectorScore(score=score, flagged=True, threshold=0.5,
                                                               version="v1")}, {})])
    store.apply_labels([("late", "m1", "injury", 1)])  # after the score: joined by the label script
    members = store.redis.zrange(store.keys.window("m1", "injury", "v1"), 0, -1)
    assert [struct.unpack("<d", m.split(b"|", 1)[1][:8])[0] for m in members] == [score, score]


def test_each_tenants_pending_count_follows_the_pending_set_and_bounds_it(redis: Redis, prefix: str) -> None:
    # REDLINE_MAX_PENDING_PER_TENANT reads these counts: every way into or out of `pending` keeps them.
    store = OutputStore(redis, Keys(prefix), ttl_s=3600, max_pending_per_tenant=3)
    hit = {"injury": DetectorScore(score=0.9, flagged=True, threshold=0.5, version="v1")}

    def outs(*ids: str) -> list[NewOutput]:
        return [NewOutput(id=i, model=i.split("~")[0] + "~m" if "~" in i else "m", response=i, detectors=["injury"])
                for i in ids]

    def counts_match() -> dict[str, int]:
        actual: dict[str, int] = {}
        for member in redis.zrange(store.keys.pending, 0, -1):
            tenant = member.decode().split("~")[0] if b"~" in member else "default"
            actual[tenant] = actual.get(tenant, 0) + 1
        assert {t: n for t, n in store.backlog.counts().items() if n} == actual
        return actual

    assert store.create(outs("a~1", "a~2", "b~1", "solo"), "j") == ["new"] * 4
    assert counts_match() == {"a": 2, "b": 1, "default": 1}
    assert store.create(outs("a~1"), "j") == ["queued"]  # a resubmission adds nothing
    with pytest.raises(BacklogFull) as full:  # a's third and fourth: past its bound of 3, and nothing stored
        store.create(outs("a~3", "a~4"), "j")
    assert (full.value.tenant, full.value.pending) == ("a", 2) and store.get("a~3") is None
    assert store.create(outs("b~2", "b~3"), "j") == ["new"] * 2  # another tenant is not held back
    assert counts_match() == {"a": 2, "b": 3, "default": 1}
    record = store.get("a~1")
    assert record is not None and store.finish_scored([(record, hit, {})]) == 1
    assert store.finish_scored([(record, hit, {})]) == 0  # written once: counted down once
    assert store.finish_failed({"a~2": "boom", "b~1": "boom"}) == 2
    assert counts_match() == {"b": 2, "default": 1}
    assert store.reassign(["b~2", "b~3"], "j2") == ["b~2", "b~3"]  # a new attempt: still one each
    assert counts_match() == {"b": 2, "default": 1}
    assert store.create(outs("b~4"), "j") == ["new"]
    with pytest.raises(BacklogFull) as full:  # b is full again: its failed output cannot come back yet
        store.retry_failed(["b~1"], "j3")
    assert full.value.tenant == "b" and store.get("b~1")["status"] == "failed"  # type: ignore[index]
    assert store.retry_failed(["a~2"], "j3") == ["requeued"]
    assert store.delete("b~4") and store.delete("b~1")  # pending, and failed (not pending): one counted down
    redis.delete(store.keys.output("solo"))  # its record expired; the reaper drops it
    store.drop_pending(["solo"])
    assert counts_match() == {"a": 1, "b": 2}
    assert store.backlog.counts()["default"] == 0  # drained: 0, not gone (its gauge reads 0)


def test_the_tenant_counts_are_counted_from_the_pending_set_once(redis: Redis, prefix: str) -> None:
    # Outputs queued by a release before the counts existed are in no count: the first worker of the
    # release that brought them counts the pending set itself, once.
    store = OutputStore(redis, Keys(prefix), ttl_s=3600)
    assert store.create([NewOutput(id=i, model="m", response=i, detectors=["injury"]) for i in ("a~1", "b~1")],
                        "j") == ["new", "new"]
    redis.hset(store.keys.pending_by_tenant, "gone", 3)  # a tenant whose outputs all left uncounted
    redis.zadd(store.keys.pending, {"a~0": 1.0, "old": 1.0})  # queued before the counts: never counted
    assert store.backlog.counts() == {"a": 1, "b": 1, "gone": 3}
    assert store.backlog.recount_once() == 4
    assert store.backlog.counts() == {"a": 2, "b": 1, "default": 1, "gone": 0}
    redis.zadd(store.keys.pending, {"a~00": 1.0})
    assert store.backlog.recount_once() is None  # once: from here the scripts keep them
    assert store.backlog.counts()["a"] == 2
