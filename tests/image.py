"""What the Redline Docker image holds, read from the Dockerfile and `.dockerignore` as Docker reads
them, for the tests that check the image and the compose stack without a Docker engine."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from .procs import ROOT


def _pattern(line: str) -> re.Pattern[str]:
    """One `.dockerignore` line as Docker reads it: relative to the context root, `**` spans folders,
    `*` and `?` stay within one name."""
    out, i, pat = "", 0, os.path.normpath(line).lstrip("/")
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(pat[i], re.escape(pat[i])), i + 1
    return re.compile(out + r"\Z")


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a path is left out when it or a folder above it matches; the last matching line
    wins, and `!` lines bring paths back."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for keep, rule in rules:
        if any(rule.match(p) for p in prefixes):
            verdict = not keep
    return verdict


def image_files(root: Path = ROOT) -> dict[str, Path]:
    """Path in the image's /app -> file in this checkout, for a build from a clean clone of it."""
    lines = [ln.strip() for ln in (root / ".dockerignore").read_text().splitlines()]
    rules = [(ln.startswith("!"), _pattern(ln.lstrip("!"))) for ln in lines if ln and not ln.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    context = [f for f in tracked.decode().split("\0") if f and (root / f).is_file() and not _ignored(f, rules)]
    placed: dict[str, Path] = {}
    for line in (root / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = shlex.split(line)[1:]
        for src in (s.rstrip("/") for s in sources):
            for f in context:
                if f == src:  # a file: into the folder `dest/`, or as `dest`
                    placed[os.path.normpath(dest + Path(f).name if dest.endswith("/") else dest)] = root / f
                elif f.startswith(src + "/"):  # a folder: its contents into dest
                    placed[os.path.normpath(os.path.join(dest, f[len(src) + 1:]))] = root / f
    return placed


def image_env(root: Path = ROOT) -> dict[str, str]:
    """The Dockerfile's ENV lines: what the Redline containers start with."""
    text = (root / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = [w for line in text.splitlines() if line.startswith("ENV ") for w in shlex.split(line)[1:]]
    return dict(p.split("=", 1) for p in pairs)
