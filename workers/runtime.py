"""The process-wide scorer of a worker process, loaded once and shared by every job it runs."""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import socket
from collections.abc import Mapping

from redis import Redis

from service.detector_config import DetectorConfig, fingerprints, load_configs
from service.errors import ConfigError
from service.fleet import Fleet
from service.queueing import ScoreQueues
from service.settings import Settings
from service.store import OutputStore

from . import cpus
from .detector import load_detectors
from .handoff import Handoff
from .scorer import Scorer

log = logging.getLogger(__name__)
_scorer: Scorer | None = None


def build_scorer(redis: Redis, settings: Settings, worker_name: str | None = None,
                 queues: ScoreQueues | None = None) -> Scorer:
    """Load every configured detector (the slow part: done once per process). `queues` are those its
    handoffs queue on (the worker's own; built here without one)."""
    threads, why = cpus.intra_op_threads(settings.intra_op_threads)
    log.info("onnxruntime intra-op threads per session: %s (%s)", threads or "onnxruntime's default", why)
    configs = load_configs(settings.models_dirs)
    store = OutputStore.from_settings(redis, settings)
    prints = fingerprints(configs.values())
    claim_versions(store, configs, prints)  # before the slow load: a clash is found at once
    counted = store.backlog.recount_once()
    if counted is not None:  # the first worker of a deployment, or of the release that brought the counts
        log.info("counted the %d outputs waiting to be scored by tenant", counted)
    detectors = load_detectors(configs, settings.providers, threads)
    # Host and PID say where a worker runs; the suffix keeps names unique where both repeat. A
    # container restarted after an unclean death (OOM kill) has the same hostname and PID 1, and RQ
    # refuses a name whose old record has not expired (its TTL, minutes), so the restart would fail.
    name = worker_name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
    handoff = Handoff(store, Fleet(redis, settings, store, {}), queues or ScoreQueues(redis, settings))
    return Scorer(store, detectors, name, settings.max_batch_tokens, settings.audit_rate, prints, handoff)


def claim_versions(store: OutputStore, configs: Mapping[str, DetectorConfig], prints: Mapping[str, str]) -> None:
    """Claim each detector version for this worker's files (`fingerprints`), or raise ConfigError naming
    every version that workers already score with other files: a retrained model, a changed threshold or
    the int8 graph, all under an unchanged `version`, whose scores would be judged as one model's."""
    clashes, keys, releases = [], [], []
    for name, config in configs.items():
        held = store.versions.claim(name, config.version, prints[name])
        if held is None:
            log.info("detector %s %s: fingerprint %s", name, config.version, prints[name][:16])
        else:
            clashes.append(f"{name} {config.version!r} (claimed by {held[:16]}, this worker has {prints[name][:16]})")
            keys.append(store.keys.version_claim(name, config.version))
            releases.append(f"`redline versions release {name} {shlex.quote(config.version)}`")
    if clashes:
        raise ConfigError(
            f"other files already score {'; '.join(clashes)}: give each changed detector a version of its own "
            "in its model.json (a version names one model: its graph, tokenizer and threshold). A claim lasts "
            "REDLINE_RECORD_TTL_S or REDLINE_WINDOW_RETENTION_S, whichever is longer; to reuse a version anyway "
            f"(its windows would then mix both models' scores), run {' and '.join(releases)} (or delete "
            f"{' and '.join(map(repr, keys))})")


def install(scorer: Scorer) -> None:
    """Make `scorer` the one jobs in this process use."""
    global _scorer
    _scorer = scorer


def current(redis: Redis) -> Scorer:
    """The installed scorer; a plain `rq worker` (no ScoringWorker) gets one built from the environment."""
    global _scorer
    if _scorer is None:
        _scorer = build_scorer(redis, Settings.from_env())
    return _scorer
