"""Produces the README's GET /v1/monitor example from a real service run.

    .venv/bin/python docs/examples/monitor_walkthrough.py

Starts Redis, the API and a worker (shipped detectors), submits 600 validation texts of the
injury set (550 validation rows, generated and hand-written, and the 50 validation-only sentences),
labels the first 200 of its review queue (GET /v1/review: every flagged output plus the 30% audit
sample of the rest, oldest first) through POST /v1/labels as a reviewer would, then prints GET
/v1/monitor for 24h.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import LocalRedline  # noqa: E402
from models.datasets import load_injury, load_injury_natural  # noqa: E402

rows = [r for r in load_injury() if r.validation]
random.Random(1).shuffle(rows)
rows = rows[:550] + load_injury_natural()
random.Random(2).shuffle(rows)
with tempfile.TemporaryDirectory() as tmp:
    service = LocalRedline(Path(tmp), ROOT / "models", workers=1, audit_rate=0.3)
    try:
        s = requests.Session()
        ids = []
        for start in range(0, len(rows), 100):
            batch = [{"model": "support-bot-v3", "prompt": r.prompt, "response": r.response,
                      "detectors": ["injury"]} for r in rows[start:start + 100]]
            ids += [o["id"] for o in s.post(service.base + "/v1/outputs", json={"outputs": batch}).json()["outputs"]]
        for i in ids:
            while s.get(f"{service.base}/v1/outputs/{i}").json()["status"] == "queued":
                time.sleep(0.05)
        time.sleep(1)
        truth = {i: r.label for i, r in zip(ids, rows, strict=True)}
        queue = s.get(service.base + "/v1/review", params={"model": "support-bot-v3", "detector": "injury",
                                                           "limit": 200}).json()
        labels = [{"id": o["id"], "detector": "injury", "label": truth[o["id"]]} for o in queue["outputs"]]
        s.post(service.base + "/v1/labels", json={"labels": labels}).raise_for_status()
        out = s.get(service.base + "/v1/monitor", params={"model": "support-bot-v3", "detector": "injury",
                                                          "window": "24h"}).json()
        print(json.dumps(out, indent=1))
    finally:
        service.stop()
