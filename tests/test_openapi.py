"""/openapi.json matches the real API: every route is documented, and schemathesis fuzzes a running
service against it (no 5xx; status codes, content types and response bodies as documented; invalid
input rejected). A bounded number of examples here; the README gives the command for a larger run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service.app import create_app
from service.settings import Settings

from .procs import api_and_worker

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection")


def test_every_route_is_documented(redis: Redis, settings: Settings) -> None:
    app = create_app(settings, redis)
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0" and "securitySchemes" not in spec["components"]  # open mode: no auth
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    undocumented = {"/metrics", "/openapi.json"}  # Prometheus text and the document itself
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in undocumented:
            continue
        path = re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)
    limits = spec["components"]["schemas"]["SubmitRequest"]["properties"]["outputs"]
    assert limits["maxItems"] == settings.max_outputs_per_request


def test_security_is_declared_when_keys_are_required(redis: Redis, settings: Settings, tmp_path: Path) -> None:
    from service.auth import create_key

    create_key(tmp_path / "keys", "team", ["read"])
    app = create_app(Settings(**{**settings.__dict__, "api_keys_file": str(tmp_path / "keys")}), redis)
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/outputs"]["post"]["security"] == [{"bearer": []}]


@pytest.fixture(scope="module")
def service(redis_url: str, shipped_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_and_worker(redis_url, shipped_models, tmp_path_factory.mktemp("schemathesis"), "st" + uuid.uuid4().hex[:8],
                        sync_timeout_ms=200, max_sync_timeout_ms=2000) as base:
        yield base


def test_schemathesis_finds_no_failures(service: str, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st, "schemathesis (requirements-dev.txt) provides the st command"
    r = subprocess.run([st, "run", f"{service}/openapi.json", "-c", CHECKS, "-n", "10", "--seed", "1",
                        "--request-timeout", "30"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:]
    assert re.search(r"\d+ generated, \d+ passed", r.stdout)
