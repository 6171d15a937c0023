"""What a training run releases: each detector's model.json, and the version ledger that gives
changed files a version of their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.detector_config import fingerprints, load_configs

from . import assemble, variants
from .recipe import DESCRIPTIONS, DETECTORS, FINGERPRINTS, HERE, LONG_TEXT, MAX_LENGTH, TARGET_FNR, VERSION

# File names of the graphs, from their owners (assemble: the fp32 graph; variants: what it derives).
GRAPH_FILES = {"fp32": assemble.ENCODER.name, **{key: path.name for key, path in variants.paths().items()}}


def write_model_json(name: str, index: int, threshold: float, calibration: dict[str, Any], cpu: str) -> None:
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    config = {
        "name": name, "version": VERSION, "description": DESCRIPTIONS[name],
        # On CPU the graph the threshold was calibrated on (`cpu_graph`); on a GPU the fp16 graph. The
        # variants are built at install from the committed files (`models.variants.ensure`).
        "onnx": f"../minilm/{GRAPH_FILES[cpu]}", "onnx_gpu": f"../minilm/{GRAPH_FILES['fp16']}",
        "tokenizer": "../minilm/tokenizer.json",
        "input": "prompt_response", "max_length": MAX_LENGTH, "long_text": LONG_TEXT, "output": "logits",
        "output_index": index,
        "activation": "sigmoid", "threshold": round(threshold, 6), "target_fnr": TARGET_FNR[name],
        "calibration": calibration,
    }
    (folder / "model.json").write_text(json.dumps(config, indent=2) + "\n")


def shipped_fingerprints(path: Path = FINGERPRINTS) -> dict[str, dict[str, str]]:
    """By detector, then version: the fingerprint of every version this pipeline has written."""
    return json.loads(path.read_text()) if path.exists() else {}


def settle_versions(version: str, path: Path = FINGERPRINTS) -> dict[str, str]:
    """The version each detector's files (just written) are served under, recorded in the ledger with
    every older one: `version`, unless the ledger holds it with other files (a retrain or recalibration
    under an unchanged VERSION); then `version+<the fingerprint's first 8 hex digits>`, written into
    its model.json. Windows and alerts are kept per version, and a worker whose files differ from those
    its version was first served with refuses to start (`VersionClaims.claim`), so reusing the
    version would stop every upgraded worker where the old files run."""
    prints = fingerprints(load_configs([HERE]).values())
    ledger = shipped_fingerprints(path)
    settled = {}
    for name in DETECTORS:
        versions = ledger.setdefault(name, {})
        chosen = version if versions.get(version, prints[name]) == prints[name] else f"{version}+{prints[name][:8]}"
        versions[chosen] = prints[name]
        config_path = HERE / name / "model.json"
        config = json.loads(config_path.read_text())
        if config["version"] != chosen:
            config_path.write_text(json.dumps({**config, "version": chosen}, indent=2) + "\n")
        if chosen != version:
            print(f"models.train: {name}'s files differ from its version {version} ({path.name}); written as "
                  f"{chosen}. Raise VERSION in models/recipe.py to release them under a name of your own.")
        settled[name] = chosen
    path.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    return settled
