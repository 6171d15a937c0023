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
])
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        Settings.from_env(env)


def test_unknown_variables_are_reported() -> None:
    assert unknown_variables({"REDLINE_PORTT": "1", "REDLINE_PORT": "2", "OTHER": "3"}) == ["REDLINE_PORTT"]
