import re
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import Settings, unknown_variables


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "" and s.host == "127.0.0.1" and s.port == 8080 and s.workers == 1


def test_reads_typed_values() -> None:
    s = Settings.from_env({"REDLINE_PORT": "9001", "REDLINE_WORKERS": "3", "REDLINE_MODELS_DIRS": "/a:/b",
                           "REDLINE_PROVIDERS": "CPUExecutionProvider", "REDLINE_REDIS_URL": "redis://x:1/2"})
    assert s.port == 9001 and s.workers == 3
    assert s.models_dirs == (Path("/a"), Path("/b"))
    assert s.providers == ("CPUExecutionProvider",)
    assert s.redis_url == "redis://x:1/2"


@pytest.mark.parametrize("env, fragment", [
    ({"REDLINE_PORT": "eighty"}, "REDLINE_PORT='eighty'"),
    ({"REDLINE_WORKERS": "0"}, "REDLINE_WORKERS must be positive"),
    ({"REDLINE_SYNC_TIMEOUT_MS": "60000"}, "exceeds REDLINE_MAX_SYNC_TIMEOUT_MS"),
    ({"REDLINE_QUEUE_PREFIX": "a:b"}, "REDLINE_QUEUE_PREFIX"),
    ({"REDLINE_TENANT_FAIR_SHARE": "-1"}, "REDLINE_TENANT_FAIR_SHARE must be >= 0 (0: no bulk lane)"),
    # Each of these was accepted, then failed far from its cause: gunicorn's bind, logging's setup at
    # start (a traceback), every /v1/monitor request and scrape (422/500), or leases lapsing between
    # heartbeats (live workers' jobs requeued).
    ({"REDLINE_PORT": "70000"}, "REDLINE_PORT must be a TCP port (1-65535), got 70000"),
    ({"REDLINE_LOG_LEVEL": "LOUD"}, "REDLINE_LOG_LEVEL must be one of DEBUG, INFO"),
    ({"REDLINE_MONITOR_WINDOWS": "1h,1y"}, "REDLINE_MONITOR_WINDOWS: window '1y' must be"),
    ({"REDLINE_WORKER_TTL_S": "3"}, "REDLINE_WORKER_TTL_S must be at least 4"),
    # Windows Redis never holds in full: a 30d window over 15 days of data, a count past the cap.
    ({"REDLINE_MONITOR_WINDOWS": "24h,30d"}, "30d is longer than REDLINE_WINDOW_RETENTION_S=1296000 s"),
    ({"REDLINE_MONITOR_WINDOWS": "1h", "REDLINE_WINDOW_RETENTION_S": "1800"}, "1h is longer than"),
    ({"REDLINE_MONITOR_WINDOWS": "count:200000"}, "count:200000 can never fill"),
    ({"REDLINE_MONITOR_WINDOWS": "24h,1h,24h"}, "REDLINE_MONITOR_WINDOWS lists 24h more than once"),
    ({"REDLINE_MONITOR_NS": "1,5,5"}, "REDLINE_MONITOR_NS lists 5 more than once"),
    ({"REDLINE_MONITOR_NM": "5:2,5:2"}, "REDLINE_MONITOR_NM lists 5:2 more than once"),
    # Accepted, then: nan compares false with everything, so the gauges were never refreshed; "²" passed
    # str.isdigit() and int() raised a bare ValueError at start.
    ({"REDLINE_METRICS_REFRESH_S": "nan"}, "REDLINE_METRICS_REFRESH_S='nan' is not a valid finite number"),
    ({"REDLINE_MONITOR_CACHE_S": "inf"}, "REDLINE_MONITOR_CACHE_S='inf' is not a valid finite number"),
    ({"REDLINE_MONITOR_NM": "5:\u00b2"}, "REDLINE_MONITOR_NM entry '5:\u00b2' must look like N:M"),
    # redis-py refused it inside every gunicorn worker ("Worker failed to boot"); the password stays unsaid.
    ({"REDLINE_REDIS_URL": "http://user:secret@cache:6379"},
     "REDLINE_REDIS_URL must start with redis://, rediss:// or unix:// (it has 'http')"),
    ({"REDLINE_REDIS_URL": "cache:6379"}, "(it has 'no scheme')"),
    ({"REDLINE_MONITOR_NM": "1999:2"}, "REDLINE_MONITOR_NM entry '1999:2': with M > 1, N + M must be at most 2000"),
])
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Settings.from_env(env)


def test_unknown_variables_are_reported() -> None:
    assert unknown_variables({"REDLINE_PORTT": "1", "REDLINE_PORT": "2", "OTHER": "3"}) == ["REDLINE_PORTT"]


def test_log_level_is_read_in_any_case() -> None:
    assert Settings.from_env({"REDLINE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
