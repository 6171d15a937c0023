"""`redline evaluate FILE`: the monitoring metrics on a file of (score, label) rows, no service needed.

FILE is CSV with a header naming `score` and `label` columns, or JSON Lines with those keys.
Scores are any finite reals (probabilities or raw logits); labels are 0 or 1.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from itertools import product
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import evaluation as ev

PROGRESS_MIN_BYTES = 1024 * 1024


class BadRow(ValueError):
    """A row that cannot be read; `line` is 1-based, as an editor shows it."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


# N and M reported when the command line gives none.
DEFAULT_NS, DEFAULT_MS = (1, 5, 20), (1,)


def read_file(path: Path, progress: TextIO | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels from CSV or JSON Lines (by extension; `.csv` is CSV, anything else JSON Lines)."""
    size = path.stat().st_size
    bar = _Progress(size, progress) if progress is not None and size >= PROGRESS_MIN_BYTES else None
    scores: list[float] = []
    labels: list[int] = []
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which utf-8 reads into the first
    # column's name ("\ufeffscore": a header that seemed to lack `score`).
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        rows = _csv_rows(f, bar) if path.suffix.lower() == ".csv" else _jsonl_rows(f, bar)
        for line, raw_score, raw_label in rows:
            scores.append(_score(raw_score, line))
            labels.append(_label(raw_label, line))
    if bar:
        bar.done()
    if not scores:
        raise BadRow(1, "no rows: expected columns 'score' and 'label'")
    return np.array(scores, dtype=np.float64), np.array(labels, dtype=np.int8)


def _csv_rows(f: TextIO, bar: _Progress | None) -> Iterator[tuple[int, Any, Any]]:
    reader = csv.reader(_counting(f, bar))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    missing = [c for c in ("score", "label") if c not in header]
    if missing:
        raise BadRow(1, f"header lacks column(s) {', '.join(missing)} (found: {', '.join(header) or 'nothing'})")
    si, li = header.index("score"), header.index("label")
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(si, li):
            raise BadRow(line, f"expected {len(header)} fields, found {len(row)}")
        yield line, row[si], row[li]


def _jsonl_rows(f: TextIO, bar: _Progress | None) -> Iterator[tuple[int, Any, Any]]:
    for line, text in enumerate(_counting(f, bar), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRow(line, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "score" not in obj or "label" not in obj:
            raise BadRow(line, "expected an object with keys 'score' and 'label'")
        yield line, obj["score"], obj["label"]


def _score(raw: Any, line: int) -> float:
    if isinstance(raw, bool):
        raise BadRow(line, f"score {raw!r} is not a number")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise BadRow(line, f"score {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRow(line, f"score {raw!r} is not finite")
    return value


def _label(raw: Any, line: int) -> int:
    text = raw.strip() if isinstance(raw, str) else raw
    # "1.0": pandas writes an integer column with a missing value in it as floats, and JSON's 1.0 is 1.
    if text in (0, 1, "0", "1", "0.0", "1.0") and not isinstance(text, bool):
        return int(float(text))
    raise BadRow(line, f"label {raw!r} must be 0 or 1")


def report(scores: np.ndarray, labels: np.ndarray, ns: Sequence[int] = DEFAULT_NS, ms: Sequence[int] = DEFAULT_MS,
           threshold: float | None = None, target_fnr: float | None = None) -> dict[str, Any]:
    """The JSON report of `redline evaluate` (see README)."""
    groups = ev.tie_groups(scores, labels)
    out: dict[str, Any] = {
        "positives": int(np.sum(labels == 1)),
        "negatives": int(np.sum(labels == 0)),
        "auc": ev.nm_auc_from_groups(groups, 1, 1),
        "aucs": [{"n": n, "m": m, "value": ev.nm_auc_from_groups(groups, n, m)}
                 for n, m in product(sorted(set(ns)), sorted(set(ms)))],
    }
    if threshold is not None:
        out["threshold"] = threshold
        out["fnr"] = _rate_json(ev.fnr_at(scores, labels, threshold))
        out["fpr"] = _rate_json(ev.fpr_at(scores, labels, threshold))
    if target_fnr is not None:
        out["target_fnr"] = target_fnr
        out["threshold_for_target_fnr"] = ev.threshold_for_fnr(scores, labels, target_fnr)
    return out


def _rate_json(r: ev.Rate) -> dict[str, Any]:
    return {"value": r.value, "wilson": list(r.wilson) if r.wilson else None,
            "clopper_pearson": list(r.clopper_pearson) if r.clopper_pearson else None, "k": r.k, "n": r.n}


def as_text(rep: dict[str, Any]) -> str:
    def num(v: float | None) -> str:
        return "n/a (needs both classes)" if v is None else f"{v:.6f}"

    lines = [f"positives {rep['positives']}, negatives {rep['negatives']}", f"ROC AUC        {num(rep['auc'])}"]
    lines += [f"({a['n']},{a['m']})-AUC".ljust(15) + num(a["value"]) for a in rep["aucs"]]
    for key in ("fnr", "fpr"):
        if key in rep:
            r = rep[key]
            if r["value"] is None:
                missing = "positives" if key == "fnr" else "negatives"
                lines.append(f"{key.upper()} at {rep['threshold']}: n/a (no {missing})")
            else:
                lines.append(f"{key.upper()} at {rep['threshold']}: {r['value']:.6f} ({r['k']}/{r['n']}); "
                             f"95% Wilson [{r['wilson'][0]:.4f}, {r['wilson'][1]:.4f}], "
                             f"Clopper-Pearson [{r['clopper_pearson'][0]:.4f}, {r['clopper_pearson'][1]:.4f}]")
    if "threshold_for_target_fnr" in rep:
        lines.append(f"threshold for FNR <= {rep['target_fnr']}: {rep['threshold_for_target_fnr']}")
    return "\n".join(lines)


def plot(scores: np.ndarray, labels: np.ndarray, n: int, out: Path, sensitivity: float) -> None:
    """ROC curve with the high-sensitivity region (TPR >= `sensitivity`) shaded and ROC(x)^N, whose
    area is the N-AUC, drawn under it: the N-AUC weights the curve where recall is high."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    g = ev.tie_groups(scores, labels)
    if g.P == 0 or g.Q == 0:
        raise SystemExit("--plot needs both classes in the file")
    fpr = np.concatenate([[0.0], np.cumsum(g.d) / g.Q])
    tpr = np.concatenate([[0.0], np.cumsum(g.c) / g.P])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.axhspan(sensitivity, 1.0, color="tab:red", alpha=0.12, label=f"high sensitivity (TPR >= {sensitivity:g})")
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"ROC (AUC {ev.nm_auc_from_groups(g, 1, 1):.3f})")
    ax.fill_between(fpr, tpr ** n, color="tab:orange", alpha=0.35,
                    label=f"ROC(x)^{n}: area = {n}-AUC {ev.nm_auc_from_groups(g, n, 1):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate (1 - FNR)",
           title=f"{int(g.P)} positives, {int(g.Q)} negatives")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(args: Any) -> int:
    """Entry point for `redline evaluate` (parsed arguments); exit code 2 on bad input."""
    try:
        scores, labels = read_file(Path(args.file), progress=sys.stderr)
    except BadRow as exc:
        print(f"redline evaluate: {args.file}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"redline evaluate: {exc}", file=sys.stderr)
        return 2
    rep = report(scores, labels, args.n or DEFAULT_NS, args.m or DEFAULT_MS, args.threshold, args.target_fnr)
    print(json.dumps(rep, indent=2) if args.format == "json" else as_text(rep))
    if args.plot:
        sensitivity = 1 - (args.target_fnr if args.target_fnr is not None else 0.1)
        plot(scores, labels, max(args.n or (5,)), Path(args.plot), sensitivity)
    return 0


class _Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.seen, self.shown = total, stream, 0, -1

    def advance(self, nbytes: int) -> None:
        self.seen += nbytes
        pct = min(100, self.seen * 100 // max(1, self.total))
        if pct != self.shown:
            self.shown = pct
            filled = pct * 30 // 100
            self.stream.write(f"\rreading [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%")
            self.stream.flush()

    def done(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _counting(f: io.TextIOBase | TextIO, bar: _Progress | None) -> Iterator[str]:
    for text in f:
        if bar:
            bar.advance(len(text.encode("utf-8")))
        yield text
