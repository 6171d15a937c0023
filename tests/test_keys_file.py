"""The API keys file (service.auth.KeyStore) and the `redline keys` commands: a strict format, keys
created, listed and revoked, and taken up by a running API without a restart; no keys only on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from redis import Redis

from service.app import create_app
from service.auth import KeyStore, create_key
from service.errors import ConfigError, Unauthorized
from service.settings import Settings

from .procs import redline_env, start_api, wait_for


def test_keys_file_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    digest = hashlib.sha256(b"k").hexdigest()
    for line, fragment in [("nonsense", "expected"), (f"{digest} Bad_Tenant read", "tenant"),
                           (f"{digest} team admin", "unknown scope")]:
        path.write_text(f"# comment\n{line}\n")
        with pytest.raises(ConfigError, match=f"{path}:2: .*{fragment}"):
            KeyStore.load(path)
    path.write_text(f"{digest} team read  # the reporting job\n")
    assert KeyStore.load(path).authenticate("Bearer k").tenant == "team"


def test_the_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    # RFC 7235: "bearer k" from a client or proxy that lowercases the scheme was refused as no key.
    path = tmp_path / "keys"
    key = create_key(path, "team", ["read"])
    store = KeyStore.load(path)
    for header in (f"Bearer {key}", f"bearer {key}", f"BEARER  {key} "):
        assert store.authenticate(header).tenant == "team", header
    for header in (None, "", "Bearer", "Bearer   ", f"Basic {key}", key):
        with pytest.raises(Unauthorized, match="send an API key as 'Authorization: Bearer <key>'"):
            store.authenticate(header)


def test_a_keys_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Edited in a Windows editor, the first line began with a BOM and was refused as malformed.
    path = tmp_path / "keys"
    key = create_key(path, "team", ["read"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert KeyStore.load(path).authenticate(f"Bearer {key}").tenant == "team"


def test_a_tenant_name_ending_in_a_newline_is_refused_and_the_keys_file_untouched(tmp_path: Path) -> None:
    # `$` in a pattern also matches before a final newline: "team\n" passed, and its key line split
    # in two, a keys file the API then refused at its next start.
    path = tmp_path / "keys"
    create_key(path, "team", ["read"])
    before = path.read_text()
    with pytest.raises(ConfigError, match=r"tenant 'team\\n' must match"):
        create_key(path, "team\n", ["read"])
    assert path.read_text() == before and len(KeyStore.load(path).entries) == 1


def test_keys_create_command_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "ops", "--scopes",
                        "read,labels:write", "--file", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("rl_") and key not in path.read_text()
    entry, comment = path.read_text().split("#")
    digest, tenant, scopes = entry.split()
    assert digest == hashlib.sha256(key.encode()).hexdigest() and tenant == "ops" and scopes == "labels:write,read"
    assert path.stat().st_mode & 0o777 == 0o600
    # The comment names the key by its first characters, so a person can tell which line is whose.
    assert comment.startswith(f" key {key[:7]}..., created 20") and key[:12] not in comment


def test_keys_are_listed_and_revoked_by_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "keys"

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "keys", *args, "--file", str(path)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    ops = create_key(path, "ops", ["read"], note="grafana reader")
    search = create_key(path, "search", ["outputs:write", "read"])
    listed = cli("list")
    assert listed.returncode == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["ops", "read"], ["search", "outputs:write,read"]]
    assert rows[0][2].startswith(f"key {ops[:7]}...") and rows[0][2].endswith(": grafana reader")
    assert hashlib.sha256(ops.encode()).hexdigest() not in listed.stdout
    revoked = cli("revoke", ops)
    assert revoked.returncode == 0 and "1 line(s) removed" in revoked.stderr
    assert set(KeyStore.load(path).entries.values()) == {KeyStore.load(path).authenticate(f"Bearer {search}")}
    with pytest.raises(Unauthorized):
        KeyStore.load(path).authenticate(f"Bearer {ops}")
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_text()
    again = cli("revoke", "-", stdin=ops + "\n")  # gone already: said so, and the file is left alone
    assert again.returncode == 2 and "no such key" in again.stderr and path.read_text() == before
    with pytest.raises(ConfigError, match="one line"):
        create_key(path, "ops", ["read"], note="two\nlines")


def test_keys_are_added_and_revoked_without_a_restart_and_a_broken_file_changes_nothing(
        redis_url: str, synthetic_models: Path, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "keys"

    def new_key(tenant: str) -> str:  # as an operator does it, with the CLI
        r = subprocess.run([sys.executable, "-m", "service.cli", "keys", "create", "--tenant", tenant,
                            "--file", str(path)], capture_output=True, text=True, timeout=60, check=True)
        return r.stdout.strip()

    first = new_key("ops")
    env = redline_env(redis_url, synthetic_models, prefix, api_keys_file=path, log_level="INFO")
    api, base = start_api(env, tmp_path / "api.log")

    def answers(key: str) -> set[int]:
        # Several requests, so that every gunicorn process (each keeps its own copy) has answered.
        headers = {"Authorization": f"Bearer {key}"}
        return {requests.get(base + "/v1/detectors", headers=headers, timeout=10).status_code for _ in range(12)}

    try:
        assert answers(first) == {200}
        second = new_key("search")
        wait_for(lambda: answers(second) == {200}, timeout=15)
        assert "WARNING service.auth: keys file" in (tmp_path / "api.log").read_text()  # with time and source
        # Revoke the first key with the CLI, the key on stdin: its line goes.
        subprocess.run([sys.executable, "-m", "service.cli", "keys", "revoke", "-", "--file", str(path)],
                       input=first + "\n", capture_output=True, text=True, timeout=60, check=True)
        assert "ops" not in path.read_text() and "search" in path.read_text()
        wait_for(lambda: answers(first) == {401}, timeout=15)
        assert answers(second) == {200}
        # A broken edit (a tenant the format forbids) is refused: the keys in force stay.
        path.write_text(path.read_text() + hashlib.sha256(b"x").hexdigest() + " Bad_Tenant read\n")
        refused = "ERROR service.auth: the keys file changed but is refused; keys in force stay (1)"
        log = tmp_path / "api.log"
        # Files are checked as requests arrive: keep asking until both processes have seen the edit.
        wait_for(lambda: answers(second) == {200} and log.read_text().count(refused) == 2, timeout=45)
        assert answers(first) == {401} and "Bad_Tenant" in log.read_text()
    finally:
        api.stop()


def test_refuses_public_address_without_keys(redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture,
                                             tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without API keys"):
        create_app(dataclasses.replace(settings, host="0.0.0.0"), redis)
    assert create_app(dataclasses.replace(settings, host="0.0.0.0", auth="off"), redis)
    with caplog.at_level(logging.WARNING):
        create_app(settings, redis)  # loopback, no keys: open, loudly
    assert "Redline API is OPEN" in caplog.text
    env = {"REDLINE_HOST": "0.0.0.0", "REDLINE_REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "service.cli", "api"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 2 and "refusing to serve on 0.0.0.0" in r.stderr
