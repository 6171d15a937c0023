"""The scoring workers as their heartbeats show them: how many are alive, which detector versions they
have loaded, and whether this API's detector files are the ones those versions are scored with. Read by
the API, and by a worker looking for one that can score what it cannot (`workers.handoff`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import cast

from redis import Redis

from .detector_config import DetectorConfig, fingerprints
from .keys import text
from .settings import Settings
from .store import OutputStore

log = logging.getLogger(__name__)


class Fleet:
    """Read from the workers' heartbeats (`workers.heart.Heart`) and version claims."""

    def __init__(self, redis: Redis, settings: Settings, store: OutputStore,
                 detectors: dict[str, DetectorConfig]) -> None:
        self.redis, self.settings, self.store, self.detectors = redis, settings, store, detectors
        self.keys = store.keys
        self._fingerprints: dict[str, str] | None = None  # see files_match
        self._warned_files: set[str] = set()  # detectors whose differing files this process has logged

    def workers_alive(self) -> int:
        cutoff = self.store.clock() - self.settings.worker_ttl_s  # the clock workers beat by
        return int(self.redis.zcount(self.keys.workers, cutoff, "+inf"))

    def served(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, dict[str, int]]]]:
        """From one read of the heartbeats: by detector, then version, how many live scoring workers have
        it loaded (a detector this API serves that no live worker loads fails every output that asks for
        it: rollout order, models/README); and by detector, version, then fingerprint, how many score it
        with those files. Two fingerprints under one version mix two models' scores in its windows:
        workers refuse that at start, but a version's claim released (`redline versions release`) while
        workers on the old files still run lets a worker on new files join them. Workers of earlier
        releases publish no fingerprints: they count in the first only."""
        versions: dict[str, dict[str, int]] = {}
        files: dict[str, dict[str, dict[str, int]]] = {}
        for _, served, prints in self._live():
            for detector, version in served.items():
                versions.setdefault(detector, {}).setdefault(version, 0)
                versions[detector][version] += 1
                if detector in prints:
                    counts = files.setdefault(detector, {}).setdefault(version, {})
                    counts[prints[detector]] = counts.get(prints[detector], 0) + 1
        return versions, files

    def served_versions(self) -> dict[str, dict[str, int]]:
        return self.served()[0]

    def others_serve(self, detectors: Collection[str], me: str) -> bool:
        """Whether a live worker other than `me` has every one of `detectors` loaded (any version): one that
        can score an output `me` cannot (workers.handoff)."""
        return any(name != me and set(detectors) <= served.keys() for name, served, _ in self._live())

    def _live(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """Per live worker: its name, what it serves ({detector: version}) and with which files
        ({detector: fingerprint})."""
        cutoff = self.store.clock() - self.settings.worker_ttl_s
        names = cast("list[bytes]", self.redis.zrangebyscore(self.keys.workers, cutoff, "+inf"))
        if not names:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.worker_detectors, names)
            pipe.hmget(self.keys.worker_files, names)
            served, files = pipe.execute()
        return [(text(n), json.loads(s) if s else {}, json.loads(f) if f else {})
                for n, s, f in zip(names, served, files, strict=True)]

    def files_match(self) -> dict[str, bool | None]:
        """By detector: whether this API's files are those its version is scored with (the workers'
        claim, `workers.runtime.claim_versions`); None while no worker has claimed it. The monitor judges
        a version's window at this API's threshold, so a threshold edited here but not on the workers,
        under the same version, would report an FNR at a threshold nothing flags with."""
        if self._fingerprints is None:  # hashed once per process: the shipped graph is 45 MB
            self._fingerprints = fingerprints(self.detectors.values())
        claims = self.store.versions.held({n: c.version for n, c in self.detectors.items()})
        match = {n: None if claims[n] is None else claims[n] == self._fingerprints[n] for n in self.detectors}
        for name in sorted(n for n, m in match.items() if m is False and n not in self._warned_files):
            # Once per process and detector: /metrics asks at every scrape (RedlineDetectorFilesDiffer).
            self._warned_files.add(name)
            log.warning("detector %s %s: this API's files (fingerprint %s) are not those workers score it with "
                        "(%s); its threshold and FNR reports may not be the workers'. Deploy the same files, "
                        "or give the changed ones a version of their own", name, self.detectors[name].version,
                        self._fingerprints[name][:16], (claims[name] or "")[:16])
        return match
