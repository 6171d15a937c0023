"""The process-wide scorer of a worker process, loaded once and shared by every job it runs."""

from __future__ import annotations

import logging
import os
import secrets
import socket

from redis import Redis

from service.detector_config import load_configs
from service.settings import Settings
from service.store import OutputStore

from . import cpus
from .detector import load_detectors
from .scorer import Scorer

log = logging.getLogger(__name__)
_scorer: Scorer | None = None


def build_scorer(redis: Redis, settings: Settings, worker_name: str | None = None) -> Scorer:
    """Load every configured detector (the slow part: done once per process)."""
    threads, why = cpus.intra_op_threads(settings.intra_op_threads)
    log.info("onnxruntime intra-op threads per session: %s (%s)", threads or "onnxruntime's default", why)
    detectors = load_detectors(load_configs(settings.models_dirs), settings.providers, threads)
    store = OutputStore.from_settings(redis, settings)
    # Host and PID say where a worker runs; the suffix keeps names unique where both repeat. A
    # container restarted after an unclean death (OOM kill) has the same hostname and PID 1, and RQ
    # refuses a name whose old record has not expired (its TTL, minutes), so the restart would fail.
    name = worker_name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
    return Scorer(store, detectors, name, settings.max_batch_tokens, settings.audit_rate)


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
