"""The README's curl examples, run as written against a real service, in the order a reader meets them.

Each `curl` block of "Quick start" and "API" runs through bash against real gunicorn and a real
worker with the shipped detectors. Its answer must have the shape of the JSON the README shows for
it, and where that JSON follows the command directly (a real answer, not one from another run) its
values too: statuses, label results, thresholds, versions, and scores to the README's rounding. So
a changed response, a retrained detector or an example that stopped working fails here, not in a
reader's terminal.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .procs import ROOT, api_and_worker, wait_for

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text()
# Per-run values: timestamps, generated ids, which worker and batch.
PER_RUN_KEYS = {"created_at", "scored_at", "labeled_at", "leased_until", "batch"}
GENERATED = re.compile(r"(/v1/outputs/)?[0-9a-f]{16,32}")


def examples() -> list[tuple[str, Any, bool]]:
    """(command, the JSON shown for it or None, whether that JSON follows the command directly)."""
    text = README[README.index("## Quick start"):README.index("## `redline evaluate`")]
    blocks = list(re.finditer(r"```(bash|json)\n(.*?)```", text, re.S))
    found = []
    for n, block in enumerate(blocks):
        if block.group(1) != "bash" or not block.group(2).startswith("curl "):
            continue
        shown, direct = None, False
        following = blocks[n + 1] if n + 1 < len(blocks) else None
        if following is not None and following.group(1) == "json":
            shown = json.loads(following.group(2))
            direct = not text[block.end():following.start()].strip()
        found.append((block.group(2), shown, direct))
    return found


def test_the_readme_has_the_examples_this_test_runs() -> None:
    commands = [c.split("localhost:8080")[1].split()[0].strip("'") for c, _, _ in examples()]
    assert commands == ["/v1/score", "/v1/outputs", "/v1/outputs/conv-17-turn-3",
                        "/v1/outputs?id=conv-17-turn-3&id=no-such-output", "/v1/detectors",
                        "/v1/review?model=support-bot-v3&detector=injury", "/v1/review/leases",
                        "/v1/outputs/conv-17-turn-3/labels", "/v1/labels",
                        "/v1/labels?model=support-bot-v3&detector=injury",
                        "/v1/monitor?model=support-bot-v3&detector=injury&window=24h"]


def same_shape(shown: Any, got: Any, where: str = "") -> list[str]:
    """Where `got` lacks or adds keys against `shown`, or holds another kind of value."""
    if shown is None or got is None:  # the README's null stands for "absent here", and the reverse
        return []
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{where}: an object in the README, {type(got).__name__} here"]
        problems = [f"{where}: keys {sorted(set(shown) ^ set(got))} differ"] if set(shown) != set(got) else []
        return problems + [p for k in set(shown) & set(got) for p in same_shape(shown[k], got[k], f"{where}.{k}")]
    if isinstance(shown, list):
        if not isinstance(got, list):
            return [f"{where}: a list in the README, {type(got).__name__} here"]
        return [p for i, (a, b) in enumerate(zip(shown, got, strict=False)) for p in same_shape(a, b, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(shown, bool) or isinstance(got, bool):
        return [] if type(shown) is type(got) else [f"{where}: {shown!r} in the README, {got!r} here"]
    if isinstance(shown, numbers) and isinstance(got, numbers):
        return []
    return [] if type(shown) is type(got) else [f"{where}: {shown!r} in the README, {got!r} here"]


def same_values(shown: Any, got: Any, where: str = "") -> list[str]:
    """Where `got` differs from `shown`, numbers to the README's rounding (four places), per-run values aside."""
    if isinstance(shown, dict) and isinstance(got, dict):
        return [p for k in shown if k in got and k not in PER_RUN_KEYS
                for p in same_values(shown[k], got[k], f"{where}.{k}")]
    if isinstance(shown, list) and isinstance(got, list):
        if len(shown) != len(got):
            return [f"{where}: {len(shown)} items in the README, {len(got)} here"]
        return [p for i, (a, b) in enumerate(zip(shown, got, strict=True)) for p in same_values(a, b, f"{where}[{i}]")]
    if isinstance(shown, str) and GENERATED.fullmatch(shown):
        return []
    if isinstance(shown, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if abs(shown - got) <= 5e-5 + 1e-9 else [f"{where}: {shown} in the README, {got} here"]
    return [] if shown == got else [f"{where}: {shown!r} in the README, {got!r} here"]


@pytest.fixture(scope="module")
def base(redis_url: str, shipped_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_and_worker(redis_url, shipped_models, tmp_path_factory.mktemp("readme"),
                        "readme" + uuid.uuid4().hex[:8]) as url:
        yield url


def test_every_curl_example_works_as_the_readme_shows(base: str) -> None:
    for command, shown, direct in examples():
        if "/v1/outputs/conv-17-turn-3" in command and "-X" not in command:
            # A reader runs it a moment after submitting; here, once the worker has scored it.
            wait_for(lambda: requests.get(f"{base}/v1/outputs/conv-17-turn-3", timeout=10).json()["status"]
                     == "scored", timeout=60)
        run = subprocess.run(["bash", "-c", command.replace("localhost:8080", base.removeprefix("http://"))],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (command, run.stderr)
        got = json.loads(run.stdout)
        assert "error" not in got, (command, got)
        if shown is None:
            continue
        assert same_shape(shown, got) == [], command
        if direct:
            assert same_values(shown, got) == [], command
