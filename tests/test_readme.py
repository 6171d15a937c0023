"""The README is the front door: keep its configuration table and commands true."""

import dataclasses
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
