"""The house style is enforced, not hoped for: ruff and mypy clean (DESIGN.md, Style)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "service", "workers", "models", "bench"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


# Modules of at most 300 lines (DESIGN.md, Style). These were longer when this test came in: each
# may shrink, never grow, and leaves the list once it fits. (The style's floor of 50 lines is not
# held: a jobs module or a package's __init__ is short by nature.)
LONGER_THAN_300 = {
    "service/store.py": 304,
    "models/cards.py": 318,
}


def test_modules_stay_within_300_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for folder in ("service", "workers", "models", "bench") for p in (ROOT / folder).glob("*.py")}
    assert set(LONGER_THAN_300) <= set(sizes), "a listed module is gone: drop it from the list"
    over = {name: n for name, n in sizes.items() if n > LONGER_THAN_300.get(name, 300)}
    assert not over, f"modules over their limit (300 lines, or their listed size): {over}"
    fits = sorted(name for name, cap in LONGER_THAN_300.items() if sizes[name] <= 300)
    assert not fits, f"now within 300 lines, so drop them from LONGER_THAN_300: {fits}"
