"""How the injury filter reads long replies: each of `models/data/injury_long_text.jsonl`'s 40 injured
and 40 unhurt hand-written replies (paired by topic; written on 2026-12-03 after v1.2.0 was trained,
never trained on) is put after harmless paragraphs drawn from the unhurt ones, and scored truncated,
with the shipped windows (`workers/windows.py`), and as it is.

    python -m bench.long_text [--paragraphs 16] [--seed 0] [--window-tokens 96]

16 paragraphs put the reply past the 256 tokens the encoder reads at once; 6 keep it within them
(dilution, which windows do not change). It also times both ways on those texts (outputs/s, one
process, batches of 16), since a long response costs a row per window. `--window-tokens` tries
another width (model.json `window_tokens`) before you set one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np

from models import assemble
from service.detector_config import WINDOW_TOKENS, load_configs
from service.settings import Settings
from workers.detector import load_detectors

from .common import machine

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ROOT / "models" / "data" / "injury_long_text.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paragraphs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-tokens", type=int, default=WINDOW_TOKENS)
    args = parser.parse_args()
    assemble.ensure()
    rows = [json.loads(line) for line in TEXTS.read_text().splitlines() if line.strip()]
    filler = [r["text"] for r in rows if r["label"] == 0]
    rng = random.Random(args.seed)
    items = []
    for r in rows:  # the reply's own text is last; a filler paragraph may repeat an unhurt reply
        items.append((r["prompt"], " ".join(rng.sample([f for f in filler if f != r["text"]], args.paragraphs))
                      + " " + r["text"]))
    labels = np.array([r["label"] for r in rows])
    configs = load_configs([ROOT / "models"])
    result = {"machine": machine(), "paragraphs": args.paragraphs, "texts": len(rows),
              "window_tokens": args.window_tokens}
    for mode in ("truncate", "windows"):
        injury = load_detectors({k: dataclasses.replace(c, long_text=mode, window_tokens=args.window_tokens)
                                 for k, c in configs.items()}, ["CPUExecutionProvider"])["injury"]
        for name, batch in ((f"{mode}, long", items), (f"{mode}, alone", [(r["prompt"], r["text"]) for r in rows])):
            flagged = injury.predict(batch) >= injury.threshold
            result[name] = {"missed": int((~flagged & (labels == 1)).sum()), "positives": int(labels.sum()),
                            "flagged": int((flagged & (labels == 0)).sum()), "negatives": int((labels == 0).sum())}
        started = time.perf_counter()
        for i in range(0, len(items), 16):
            injury.model.run(items[i:i + 16], Settings.max_batch_tokens)  # as a worker runs them
        result[f"{mode}, long, outputs_per_s"] = round(len(items) / (time.perf_counter() - started), 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
