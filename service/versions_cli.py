"""`redline versions`: the detector version claims workers hold (`workers.runtime.claim_versions`), and
releasing one so that a version can be reused for other files.

A worker whose files differ from a version's claim refuses to start and names the claim; before this
command, the only way past it was deleting a key with redis-cli, which the embedded Redis of
`redline serve` leaves users without.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from redis import Redis

from .errors import ConfigError
from .settings import Settings
from .version_claims import Claim

if TYPE_CHECKING:
    from .core import Redline


def connect(settings: Settings) -> Redis:
    """The configured Redis, or the one a running `redline serve` embeds (its socket in the data folder)."""
    if settings.redis_url:
        return Redis.from_url(settings.redis_url)
    socket = Path(settings.data_dir) / "redis.sock"
    if not socket.exists():
        raise ConfigError(f"no Redis to read: REDLINE_REDIS_URL is not set and no `redline serve` is running "
                          f"with its data in {settings.data_dir} (no {socket})")
    return Redis(unix_socket_path=str(socket))


def main(settings: Settings, args: argparse.Namespace) -> int:
    from .core import Redline
    from .detector_config import fingerprints

    core = Redline(settings, connect(settings))
    claims = core.store.versions.all()
    if args.versions_command == "release":
        return release(core, claims, args.detector, args.version)
    prints = fingerprints(core.detectors.values())  # by detector name
    here = {name: (config.version, prints[name]) for name, config in core.detectors.items()}
    served, files_served = core.fleet.served()
    now = datetime.now(tz=UTC)
    rows = [("DETECTOR", "VERSION", "FINGERPRINT", "LAPSES", "LIVE WORKERS", "OTHER FILES", "FILES HERE")]
    for detector, version, fingerprint, ttl_s in claims:
        mine = here.get(detector)
        files = "-" if mine is None or mine[0] != version else "match" if mine[1] == fingerprint else "differ"
        lapses = "never" if ttl_s < 0 else (now + timedelta(seconds=ttl_s)).strftime("%Y-%m-%dT%H:%MZ")
        by_print = files_served.get(detector, {}).get(version, {})
        other = sum(n for p, n in by_print.items() if p != fingerprint)  # live, on files the claim is not of
        rows.append((detector, version, fingerprint[:16], lapses, str(served.get(detector, {}).get(version, 0)),
                     str(other), files))
    if len(rows) == 1:
        print("no detector version is claimed yet: the first worker to load a version claims it", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def release(core: Redline, claims: list[Claim], detector: str, version: str) -> int:
    """Delete one claim; warns where live workers serve that version (one on the old files takes it back)."""
    held = {(c.detector, c.version): c.fingerprint for c in claims}
    if not core.store.versions.release(detector, version):
        known = ", ".join(f"{d} {v}" for d, v in held) or "none"
        print(f"redline: no claim on {detector} {version!r} (claimed: {known})", file=sys.stderr)
        return 1
    print(f"released {detector} {version!r} (was claimed by {held.get((detector, version), '?')[:16]}): the next "
          "worker to load it claims it for its files, and that version's windows then hold both models' scores",
          file=sys.stderr)
    served, files = core.fleet.served()
    live = served.get(detector, {}).get(version, 0)
    by_print = files.get(detector, {}).get(version, {})
    unknown = live - sum(by_print.values())  # workers of an earlier release publish no fingerprints
    old = by_print.get(held.get((detector, version), ""), 0) + unknown
    if old:
        # Each renews its claim hourly (workers.heart.CLAIM_RENEW_S), so it would take the version back.
        print(f"warning: {old} live worker(s) serve {detector} {version!r} with the released files"
              f"{' (or files they do not publish)' if unknown else ''}: each claims it back at its next renewal "
              "(within the hour): stop or upgrade them first", file=sys.stderr)
    return 0
