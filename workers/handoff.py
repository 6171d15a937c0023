"""Pass an output on to a worker that can score it, when this one lacks one of its detectors.

Outputs ask for the detectors the API serves when they are submitted. While a new detector rolls out,
an output asking for it can reach a worker of the previous release, one without it; failing it there
would turn the rollout's order (workers first, then the API) into dead letters whenever the two overlap,
as they do in any rolling update of one image. So the worker queues such an output again, in its own
lane, as long as another live worker has every detector it asks for; and fails it, as before, when no
live worker does (`RedlineDetectorNotLoaded` then fires) or after `MAX_HANDOFFS` passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from service.auth import tenant_of
from service.fleet import Fleet
from service.queueing import HIGH, ScoreQueues, new_job_id
from service.store import OutputStore

log = logging.getLogger(__name__)

# An output passed on this many times fails as one no worker can score: a bound on the bouncing
# should the workers that can score it stop taking work while they still beat (wedged, or draining
# other queues). With PAUSE_S after each pass, that is minutes of bouncing, far past any rollout's overlap.
MAX_HANDOFFS = 50
# A worker that passed outputs on waits this long before taking more: it dequeues faster than workers
# that score, and would otherwise take most of the bounced jobs straight back.
PAUSE_S = 1.0


class Handoff:
    """Queues outputs again for the workers that have the detectors this one lacks."""

    def __init__(self, store: OutputStore, fleet: Fleet, queues: ScoreQueues) -> None:
        self.store, self.fleet, self.queues = store, fleet, queues

    def pass_on(self, lacking: Mapping[str, frozenset[str]], records: Sequence[dict[str, Any]], me: str) -> list[str]:
        """Queue again each of `records` (still queued, read with `handoffs` and `notify`) whose detectors
        missing here, `lacking[id]`, another live worker than `me` has all loaded, unless it was passed
        on `MAX_HANDOFFS` times already; returns the ids queued again. A sync request's output (it has
        `notify`) goes back to the sync lane, the others to their tenant's."""
        able: dict[frozenset[str], bool] = {}  # usually one set: the detector being rolled out
        lane_of: dict[str, str] = {}  # by tenant: one count read each
        by_lane: dict[str, list[str]] = {}
        for record in records:
            missing = lacking[record["id"]]
            if int(record.get("handoffs", 0)) >= MAX_HANDOFFS:
                continue
            if missing not in able:
                able[missing] = self.fleet.others_serve(missing, me)
            if not able[missing]:
                continue
            tenant = tenant_of(record["id"])
            if not record.get("notify") and tenant not in lane_of:
                lane_of[tenant] = self.queues.lane(tenant, self.store.backlog)
            by_lane.setdefault(HIGH if record.get("notify") else lane_of[tenant], []).append(record["id"])
        passed: list[str] = []
        for lane, ids in sorted(by_lane.items()):
            job_id = new_job_id()
            moved = self.store.reassign(ids, job_id, handoff=True)
            if moved:
                self.queues.enqueue(moved, job_id, lane)
                passed += moved
        if passed:
            log.info("passed %d outputs on to workers with %s loaded", len(passed),
                     ", ".join(sorted(set().union(*(lacking[i] for i in passed)))))
        return passed
