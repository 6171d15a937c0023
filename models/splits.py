"""Training and validation rows per detector: the shipped splits, reviewers' exported labels
(`--labeled`), and the fixed sample of training rows that sets the int8 activation ranges."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import LOADERS, Example, load_injury_natural
from .recipe import DETECTORS


@dataclass
class Split:
    train: list[Example]
    val: list[Example]


def load_splits(data_dir: Path, labeled: dict[str, list[Path]] | None = None) -> dict[str, Split]:
    out = {}
    for name in DETECTORS:
        rows = LOADERS[name](data_dir)
        out[name] = Split([r for r in rows if not r.validation], [r for r in rows if r.validation])
    out["injury"].val += load_injury_natural()  # realistic text in calibration, never in training
    for name, paths in (labeled or {}).items():
        out[name].train += load_labeled(paths, out[name].val)
    return out


def load_labeled(paths: list[Path], validation: list[Example]) -> list[Example]:
    """Reviewers' labels from production (`redline export` JSON Lines: prompt, response, label), for
    training only: validation stays the shipped split, so that versions are compared on the same rows
    and thresholds calibrated on rows no version trained on. Texts already in validation are left out."""
    held = {(e.prompt, e.response) for e in validation}
    rows = []
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    pair, label = (row.get("prompt") or "", row["response"]), row["label"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise SystemExit(f"models.train: {path}:{n}: expected a JSON object with 'response' and "
                                     "'label' (as `redline export` writes)") from None
                if label not in (0, 1) or isinstance(label, bool) or not isinstance(pair[1], str):
                    raise SystemExit(f"models.train: {path}:{n}: 'label' must be 0 or 1 and 'response' a string")
                if pair not in held:
                    rows.append(Example(*pair, label, f"exported:{path.name}:{n}", f"exported:{path.name}"))
    return rows


def labeled_files(specs: list[str]) -> dict[str, list[Path]]:
    """`--labeled injury=labeled.jsonl` (repeatable) -> {detector: [files]}."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, _, file = spec.partition("=")
        if name not in DETECTORS or not file:
            raise SystemExit(f"models.train: --labeled takes DETECTOR=FILE with a detector among "
                             f"{', '.join(DETECTORS)}, got {spec!r}")
        if not Path(file).is_file():
            raise SystemExit(f"models.train: --labeled {spec}: no such file")
        out.setdefault(name, []).append(Path(file))
    return out


def calibration_rows(splits: dict[str, Split], per_detector: int = 200) -> list[tuple[str, Example]]:
    """A fixed sample of training rows, as (detector, row): the int8 variant's activation ranges come
    from these (`models.variants`), and so do quant-aware training's (`quant_aware.FakeInt8`)."""
    rng = np.random.default_rng(0)
    rows = []
    for name in DETECTORS:
        train = splits[name].train
        rows += [(name, train[int(i)])
                 for i in sorted(rng.choice(len(train), size=min(per_detector, len(train)), replace=False))]
    return rows
