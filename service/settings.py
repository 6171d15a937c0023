"""The one reader of REDLINE_* environment variables.

Everything configurable lives in `Settings`; code receives a Settings object instead of
reading the environment, so tests can build one directly and bad values fail at start-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, RedlineError
from .keys import LIVENESS_REFRESH_S

_ROOT = Path(__file__).resolve().parent.parent
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    """Service configuration; `from_env` maps field `x_y` to `REDLINE_X_Y`."""

    redis_url: str = ""
    """Redis URL; empty means `redline serve` starts its own Redis."""
    api_keys_file: str = ""
    """File of API keys (`<sha256> <tenant> <scopes>` per line); empty: no keys (see `auth`)."""
    auth: str = "auto"
    """`auto`: keys required when a keys file is set, open on loopback otherwise; `off`: open anywhere."""
    host: str = "127.0.0.1"
    """Address the API listens on."""
    port: int = 8080
    """Port the API listens on."""
    workers: int = 1
    """Scoring worker processes started by `redline serve`."""
    api_processes: int = 2
    """gunicorn worker processes for the API."""
    models_dirs: tuple[Path, ...] = (_ROOT / "models",)
    """Folders holding detectors (one sub-folder with a model.json each), ':'-separated."""
    data_dir: Path = _ROOT / "var"
    """Where the embedded Redis keeps its files."""
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    """onnxruntime execution providers in order of preference; unavailable ones are skipped."""
    intra_op_threads: int = 0
    """onnxruntime intra-op threads per worker process (0: onnxruntime's default)."""
    queue_prefix: str = "redline"
    """Prefix of RQ queue names and of every Redis key Redline owns."""
    max_batch: int = 32
    """Most outputs scored in one onnxruntime call."""
    max_batch_tokens: int = 16_384
    """Padded tokens per onnxruntime call; a batch of long texts is split, sorted by length."""
    max_batch_wait_ms: int = 5
    """How long a worker waits for more queued outputs to fill a batch."""
    max_outputs_per_request: int = 256
    """Most outputs in one POST."""
    max_text_chars: int = 20_000
    """Most characters in one prompt or response."""
    max_metadata_bytes: int = 4096
    """Largest metadata object, as JSON bytes."""
    max_models: int = 200
    """Most distinct deployed-model names accepted (they are metric label values, so bounded)."""
    max_pending: int = 100_000
    """Backpressure: outputs accepted and not yet scored beyond which submits get 429."""
    max_pending_per_tenant: int = 0
    """The same bound for one tenant's outputs, so one tenant's flood is refused before it fills the
    backlog for all (0: none)."""
    tenant_fair_share: int = 0
    """Outputs of one tenant waiting to be scored past which its further submissions go to the bulk
    lane, scored after the other tenants' (0: one lane for all)."""
    retry_after_s: int = 5
    """Retry-After sent with 429 when the backlog is full."""
    max_labels_per_request: int = 1000
    """Most labels in one POST /v1/labels."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body."""
    sync_timeout_ms: int = 2000
    """Default wait of POST /v1/score."""
    max_sync_timeout_ms: int = 30_000
    """Largest `timeout_ms` a client may ask POST /v1/score for."""
    record_ttl_s: int = 30 * 24 * 3600
    """How long output records are kept in Redis."""
    job_timeout_s: int = 120
    """RQ job timeout for one scoring job."""
    requeue_after_s: int = 10
    """Outputs queued this long with no live worker holding them are queued again. It only has to
    cover the moments when a job is in neither a queue nor a lease (stored but not yet queued,
    popped but not yet leased), as the lease says whether its worker lives; a requeue that was not
    needed costs one more scoring pass, never a double count."""
    max_attempts: int = 5
    """Scoring attempts per output (first + requeues after a worker died or its job failed) before it is
    marked failed and listed in GET /v1/dead-letters."""
    worker_ttl_s: int = 15
    """A worker whose liveness key is older than this counts as dead."""
    log_level: str = "INFO"
    """Log level of API and workers."""
    audit_rate: float = 0.05
    """Share of unflagged outputs marked `audit: true` for reviewers to label (0 turns it off)."""
    window_retention_s: int = 15 * 86400
    """How long scores and labels stay in the monitoring windows (covers 7d plus its reference)."""
    window_max_entries: int = 100_000
    """Most entries one (model, detector) window or score history keeps."""
    monitor_ns: tuple[int, ...] = (1, 5, 20)
    """N of the N-AUCs reported by the monitor."""
    monitor_nm: tuple[str, ...] = ("5:2", "20:5")
    """(N,M)-AUC pairs reported by the monitor, as N:M."""
    monitor_min_positives: int = 20
    """N-AUC and FNR are withheld until a window holds this many labeled positives."""
    monitor_cache_s: float = 5.0
    """How long a computed monitor result is reused (0: recompute on every request)."""
    monitor_windows: tuple[str, ...] = ("count:1000", "1h", "24h", "7d")
    """Windows listed by GET /v1/monitor and exported to Prometheus."""
    metrics_refresh_s: float = 15.0
    """Age at which a scrape has the quality gauges recomputed, in the background, by one API process at a time."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from REDLINE_* variables, failing fast on malformed values."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("REDLINE_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        if isinstance(values.get("log_level"), str):
            values["log_level"] = str(values["log_level"]).upper()  # `info` as well as `INFO`, for every consumer
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    @property
    def bind_address(self) -> str:
        """host:port as gunicorn's `bind` and URLs want it: an IPv6 address in brackets ([::1]:8080)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def validate(self) -> None:
        """Reject values that would only fail later, far from their cause."""
        positive = ("port", "workers", "api_processes", "max_batch", "max_outputs_per_request",
                    "max_text_chars", "max_batch_tokens", "max_labels_per_request", "max_models", "max_pending",
                    "retry_after_s", "max_metadata_bytes",
                    "max_body_bytes", "sync_timeout_ms",
                    "max_sync_timeout_ms", "record_ttl_s", "job_timeout_s", "requeue_after_s",
                    "worker_ttl_s", "max_attempts", "window_retention_s", "window_max_entries",
                    "monitor_min_positives", "metrics_refresh_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"REDLINE_{name.upper()} must be positive, got {getattr(self, name)}")
        if self.max_batch_wait_ms < 0 or self.intra_op_threads < 0:
            raise ConfigError("REDLINE_MAX_BATCH_WAIT_MS and REDLINE_INTRA_OP_THREADS must be >= 0")
        if self.auth not in ("auto", "off"):
            raise ConfigError("REDLINE_AUTH must be 'auto' or 'off'")
        if self.max_pending_per_tenant < 0:
            raise ConfigError("REDLINE_MAX_PENDING_PER_TENANT must be >= 0 (0: no per-tenant bound)")
        if self.tenant_fair_share < 0:
            raise ConfigError("REDLINE_TENANT_FAIR_SHARE must be >= 0 (0: no bulk lane)")
        if self.monitor_cache_s < 0:
            raise ConfigError("REDLINE_MONITOR_CACHE_S must be >= 0")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ConfigError("REDLINE_AUDIT_RATE must be between 0 and 1")
        if not self.monitor_ns or min(self.monitor_ns) < 1:
            raise ConfigError("REDLINE_MONITOR_NS must list integers >= 1")
        from .evaluation import MAX_NM_ORDER  # here, not at the top: settings is read where numpy is not needed

        for pair in self.monitor_nm:
            n, _, m = pair.partition(":")
            # ASCII digits: str.isdigit() accepts "²", which int() refuses with a bare ValueError.
            if not (re.fullmatch("[0-9]{1,6}", n) and re.fullmatch("[0-9]{1,6}", m) and int(n) >= 1 and int(m) >= 1):
                raise ConfigError(f"REDLINE_MONITOR_NM entry {pair!r} must look like N:M with N, M >= 1")
            if int(m) > 1 and int(n) + int(m) > MAX_NM_ORDER:  # each refresh of the gauges would compute it
                raise ConfigError(f"REDLINE_MONITOR_NM entry {pair!r}: with M > 1, N + M must be at most "
                                  f"{MAX_NM_ORDER}")
        if self.sync_timeout_ms > self.max_sync_timeout_ms:
            raise ConfigError("REDLINE_SYNC_TIMEOUT_MS exceeds REDLINE_MAX_SYNC_TIMEOUT_MS")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            # Only the scheme is echoed: the URL may hold a password. (redis-py refused it inside each
            # gunicorn worker, which exited with "Worker failed to boot".)
            scheme = self.redis_url.split("://", 1)[0] if "://" in self.redis_url else "no scheme"
            raise ConfigError(f"REDLINE_REDIS_URL must start with redis://, rediss:// or unix:// (it has {scheme!r})")
        if not self.queue_prefix or ":" in self.queue_prefix:
            raise ConfigError("REDLINE_QUEUE_PREFIX must be non-empty and contain no ':'")
        if self.port > 65535:
            raise ConfigError(f"REDLINE_PORT must be a TCP port (1-65535), got {self.port}")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"REDLINE_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")
        if self.worker_ttl_s < 2 * LIVENESS_REFRESH_S:
            # Liveness and job leases are refreshed every LIVENESS_REFRESH_S: a shorter TTL lets a live
            # worker's leases lapse between refreshes, so its running jobs are requeued and scored twice
            # over (never counted twice, but the work is done again), and it flickers dead in /readyz.
            raise ConfigError(f"REDLINE_WORKER_TTL_S must be at least {2 * LIVENESS_REFRESH_S:g} (twice the "
                              f"{LIVENESS_REFRESH_S:g} s heartbeat), got {self.worker_ttl_s}")
        from .monitoring import Window  # here: monitoring imports this module

        for name, values in (("MONITOR_WINDOWS", self.monitor_windows), ("MONITOR_NS", self.monitor_ns),
                             ("MONITOR_NM", self.monitor_nm)):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:  # each would be exported twice under the same labels (Prometheus drops the repeats)
                raise ConfigError(f"REDLINE_{name} lists {', '.join(repeated)} more than once")
        for text in self.monitor_windows:
            try:
                window = Window.parse(text)
            except RedlineError as exc:  # refused here, not on every /v1/monitor request and scrape
                raise ConfigError(f"REDLINE_MONITOR_WINDOWS: {exc.message}") from None
            # A window Redis never holds in full would be reported under a name it does not deserve.
            if window.seconds is not None and window.seconds > self.window_retention_s:
                raise ConfigError(f"REDLINE_MONITOR_WINDOWS: {text} is longer than REDLINE_WINDOW_RETENTION_S="
                                  f"{self.window_retention_s} s keeps scores and labels; keep at least twice the "
                                  "longest window (drift compares a window with the span before it)")
            if window.count is not None and window.count > self.window_max_entries:
                raise ConfigError(f"REDLINE_MONITOR_WINDOWS: {text} can never fill: a window keeps at most "
                                  f"REDLINE_WINDOW_MAX_ENTRIES={self.window_max_entries} labeled outputs")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """REDLINE_* variables that match no field: almost always a typo worth a warning."""
    env = os.environ if environ is None else environ
    known = {"REDLINE_" + f.name.upper() for f in dataclasses.fields(Settings)}
    return sorted(k for k in env if k.startswith("REDLINE_") and k not in known)


def _parse(name: str, type_: object, raw: str) -> object:
    text = str(type_)
    try:
        if text == "int":
            return int(raw)
        if text == "float":
            value = float(raw)
            if not math.isfinite(value):  # every comparison with nan is false: checks below would pass it
                raise ValueError(raw)
            return value
        if text == "tuple[int, ...]":
            return tuple(int(p) for p in raw.split(",") if p.strip())
        if text == "Path":
            return Path(raw).expanduser()
        if text == "tuple[Path, ...]":
            return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())
        if text.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw
    except ValueError:
        what = "finite number" if text == "float" else text
        raise ConfigError(f"REDLINE_{name.upper()}={raw!r} is not a valid {what}") from None
