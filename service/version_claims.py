"""One detector version, one model: which files (`detector_config.fingerprints`) score each detector
version. Windows, counters and alerts are kept per version, so two models under one version would be
judged as one; the first worker to load a version claims it for its files, and a worker with other
files refuses to start (`workers.runtime.claim_versions`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from redis import Redis

from .keys import Keys, text

# KEYS[1] = a detector version's claim. ARGV = fingerprint, TTL seconds. Takes or renews the claim;
# returns the other fingerprint holding it (and changes nothing), or nil. One script, so two workers
# starting together with different files cannot both find the version free.
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class Claim(NamedTuple):
    detector: str
    version: str
    fingerprint: str
    ttl_s: int  # seconds until it lapses; running workers renew it hourly


class VersionClaims:
    """The claims under one key prefix, each kept `ttl_s`: as long as that version's scores can be read."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis, self.keys, self.ttl_s = redis, keys, ttl_s
        self._claim = redis.register_script(CLAIM)

    def claim(self, detector: str, version: str, fingerprint: str) -> str | None:
        """Record that `fingerprint` scores `detector` at `version`, and renew that; or, where another
        fingerprint holds the version, return that one and change nothing."""
        held = self._claim(keys=[self.keys.version_claim(detector, version)], args=[fingerprint, self.ttl_s])
        return None if held is None else text(held)

    def held(self, versions: Mapping[str, str]) -> dict[str, str | None]:
        """By detector: the fingerprint that claims its `versions[detector]`, or None where none does."""
        names = sorted(versions)
        found = self.redis.mget([self.keys.version_claim(n, versions[n]) for n in names]) if names else []
        return {n: None if h is None else text(h) for n, h in zip(names, found, strict=True)}

    def all(self) -> list[Claim]:
        """Every claim, sorted by detector and version."""
        keys = sorted({text(k) for k in self.redis.scan_iter(match=self.keys.version_claims_match, count=500)})
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.ttl(key)
            replies = pipe.execute()
        return [Claim(*self.keys.claimed(key), text(held), int(ttl))
                for key, held, ttl in zip(keys, replies[::2], replies[1::2], strict=True)
                if held is not None]  # lapsed between the scan and the read

    def release(self, detector: str, version: str) -> bool:
        """Delete a version's claim, so the next worker to load it claims it for its files; False if none."""
        return bool(self.redis.delete(self.keys.version_claim(detector, version)))
