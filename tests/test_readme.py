"""The README is the front door: keep its configuration table and commands true."""

import dataclasses
import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"REDLINE_{f.name.upper()}" for f in dataclasses.fields(Settings)
               if f"REDLINE_{f.name.upper()}" not in README]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "```bash\n./tests/run\n```" in README
    assert "exec ./tests/run" in ci
    script = (ROOT / "tests" / "run").read_text()
    assert "apt-get install" in script and "requirements-dev.txt" in script
    assert "exec .venv/bin/python -m pytest" in script


def _as_documented(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_as_documented(v) for v in value)
    if isinstance(value, Path):  # defaults are folders of the checkout, documented relative to it
        return str(value.relative_to(ROOT))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_documented_defaults_are_the_real_ones() -> None:
    # Rows like "| `REDLINE_A` / `REDLINE_B` | `1` / `2` | ..." or "(empty)" for an empty default.
    rows = re.findall(r"^\| ((?:`REDLINE_\w+`(?: / )?)+) \| (.+?) \|", README, re.MULTILINE)
    documented: dict[str, str] = {}
    for names, defaults in rows:
        for name, default in zip(re.findall(r"`REDLINE_(\w+)`", names), defaults.split(" / "), strict=True):
            quoted = re.search(r"`([^`]*)`", default)
            documented[name.lower()] = quoted.group(1) if quoted else ("" if default == "(empty)" else default)
    real = {f.name: _as_documented(getattr(Settings(), f.name)) for f in dataclasses.fields(Settings)}
    assert set(documented) == set(real)
    assert {k: v for k, v in documented.items() if v != real[k]} == {}


def test_every_test_the_readme_names_exists() -> None:
    # The guarantees table names the test that proves each row: a renamed or moved test must not leave
    # the README pointing at nothing. `::name` refers to the file named last before it in the same cell,
    # a bare `test_name` to any test file.
    defined = {path.name: set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
               for path in (ROOT / "tests").glob("test_*.py")}
    everywhere = set().union(*defined.values())
    missing, named = [], 0
    for cell in (c for line in README.splitlines() if line.startswith("|") for c in line.split("|")):
        current = None
        for file, name, bare in re.findall(r"`(?:tests/(test_\w+\.py))?(?:::(test_\w+))?`|`(test_\w+)`", cell):
            if file:
                current = file
                if file not in defined:
                    missing.append(file)
            if name:
                named += 1
                if current is None or name not in defined.get(current, set()):
                    missing.append(f"{current}::{name}")
            if bare:
                named += 1
                if bare not in everywhere:
                    missing.append(bare)
    assert named > 30 and not missing, missing
