"""Score validation through the service's own detector code on every graph, choose the graph CPU
workers serve, set each threshold for its target FNR, and record parity and the injury checks."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service import evaluation as ev
from service.detector_config import load_configs

from . import assemble, int8, variants
from .datasets import HELDOUT_SETS, Example, load_injury_heldout
from .heads import tfidf_baseline
from .recipe import DETECTORS, HERE, SHARED, TARGET_FNR, VERSION
from .release import settle_versions, write_model_json
from .splits import Split, calibration_rows


def load_served(onnx: Path | None = None) -> dict[str, Any]:
    """The exported detectors as the service loads them (one session for the shared graph), or the
    same detectors on another graph of the same heads (`onnx`, e.g. the fp32 graph)."""
    from workers.detector import load_detectors

    configs = {n: c for n, c in load_configs([HERE]).items() if n in DETECTORS}
    if onnx is not None:
        configs = {n: replace(c, onnx_path=onnx, onnx_gpu_path=None) for n, c in configs.items()}
    return load_detectors(configs, ["CPUExecutionProvider"])


def served_scores(detector: Any, examples: list[Example]) -> np.ndarray:
    """One detector's scores through the service's own detector code, in session calls of at most the
    worker's default padded tokens: one call per 256 texts padded to the longest made onnxruntime's
    arenas grow to about 14 GB over three graphs (scores do not depend on the batch)."""
    from service.settings import Settings

    items = [(e.prompt, e.response) for e in examples]
    return detector.head(detector.model.run(items, max_batch_tokens=Settings.max_batch_tokens))


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "positives": int(labels.sum()), "negatives": int((1 - labels).sum()),
        "roc_auc": ev.roc_auc(scores, labels), "n_auc_5": ev.nm_auc(scores, labels, 5),
        "n_auc_20": ev.nm_auc(scores, labels, 20),
        "fnr": ev.fnr_at(scores, labels, threshold).to_dict(), "fpr": ev.fpr_at(scores, labels, threshold).to_dict(),
    }


def write_calibration_texts(splits: dict[str, Split]) -> None:
    """Committed, so that deriving the int8 variant needs no dataset and never sees validation rows."""
    rows = [{"detector": name, "prompt": e.prompt, "response": e.response} for name, e in calibration_rows(splits)]
    int8.CALIBRATION_TEXTS.write_text(json.dumps(rows, indent=0, ensure_ascii=False) + "\n")


# The parity bars: what a CPU worker serves is int8 only while every head's int8 scores are
# within INT8_BAR of torch on every validation row; until then it serves the fp32 graph and int8 is an
# opt-in with its own threshold. fp16 (GPU) must be within FP16_BAR.
INT8_BAR, FP16_BAR = 0.02, 0.005


def calibrate(splits: dict[str, Split], report: dict[str, Any], torch_val: dict[str, np.ndarray] | None) -> None:
    """Derive the variants, score validation with every graph through the service's own code, choose
    the graph CPU workers serve (`cpu_graph`), set each threshold on it (highest with validation FNR
    <= target), write model.json and the report. The other graphs are measured against it and at
    its threshold (a GPU worker uses the same one); int8, when not served, also gets its own
    threshold. With `torch_val` (after training) also record parity with torch and the CI
    reference scores."""
    write_calibration_texts(splits)
    graphs = {"fp32": assemble.ENCODER, **variants.ensure()}
    digests = {key: variants.digest(path) for key, path in graphs.items()}  # which graphs the records are of
    for i, name in enumerate(DETECTORS):  # placeholder thresholds so the configs load
        if not (HERE / name / "model.json").exists():
            write_model_json(name, i, 0.5, {}, "fp32")
    # Thresholds do not change scores: each graph is loaded once for all three heads.
    loaded = {key: load_served(path) for key, path in graphs.items()}
    scores = {name: {key: served_scores(detectors[name], splits[name].val) for key, detectors in loaded.items()}
              for name in DETECTORS}
    torch_parity = {name: {key: parity_with_torch(scores[name][key], None if torch_val is None else torch_val[name],
                                                  report[name], key, digests[key]) for key in graphs}
                    for name in DETECTORS}
    served_key = cpu_graph(torch_parity, scores)
    references: dict[str, Any] = {"version": VERSION, "examples": []}
    for i, name in enumerate(DETECTORS):
        split = splits[name]
        labels = np.array([e.label for e in split.val])
        served = scores[name][served_key]
        threshold = ev.threshold_for_fnr(served, labels, TARGET_FNR[name])
        assert threshold is not None
        m = metrics(served, labels, threshold)
        calibration = {"method": f"highest threshold with validation FNR <= {TARGET_FNR[name]}, "
                                 f"{graphs[served_key].name} on CPU",
                       "validation_positives": m["positives"], "validation_negatives": m["negatives"],
                       "validation_misses": m["fnr"]["k"], "validation_fnr": m["fnr"]["value"],
                       "validation_fpr": m["fpr"]["value"]}
        write_model_json(name, i, threshold, calibration, served_key)
        report[name] = {"procedure": report[name]["procedure"], **m, "threshold": threshold, "served": served_key,
                        "graph_sha256": digests, "train_rows": len(split.train), "val_rows": len(split.val),
                        "train_positives": sum(e.label for e in split.train),
                        "baseline_tfidf_auc": tfidf_baseline(split),
                        "sources": sorted({e.source for e in split.train}), "variants": {},
                        "exported_rows": dict(sorted(Counter(e.source for e in split.train
                                                             if e.source.startswith("exported:")).items()))}
        for key, graph_scores in scores[name].items():
            record: dict[str, Any] = {"rows": len(split.val), "graph_sha256": digests[key],
                                      "max_abs_diff_vs_served": float(np.max(np.abs(graph_scores - served))),
                                      **torch_parity[name][key]}
            if key != served_key:
                record.update(roc_auc=ev.roc_auc(graph_scores, labels),
                              fnr=ev.fnr_at(graph_scores, labels, threshold).to_dict(),
                              fpr=ev.fpr_at(graph_scores, labels, threshold).to_dict(),
                              flags_differ=int(np.sum((graph_scores >= threshold) != (served >= threshold))))
            if key == "int8" and key != served_key:  # an opt-in needs a threshold of its own scores
                own = ev.threshold_for_fnr(graph_scores, labels, TARGET_FNR[name])
                assert own is not None
                record["own_threshold"] = {"threshold": own, **metrics(graph_scores, labels, own)}
            report[name]["variants"][key] = record
        if name == "injury":
            report[name].update(injury_checks(loaded[served_key]["injury"], split, served, threshold))
        if torch_val is not None:  # reference scores for CI: a stratified sample (no torch needed to compare)
            references["examples"] += reference_examples(name, split, labels, torch_val[name])
    if torch_val is not None:
        (SHARED / "reference_scores.json").write_text(json.dumps(references, indent=1) + "\n")
    (SHARED / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    settle_versions(VERSION)


def parity_with_torch(scores: np.ndarray, torch_scores: np.ndarray | None, previous: dict[str, Any], key: str,
                      digest: str) -> dict[str, float]:
    """Max |score - torch| over the validation rows; on a recalibration (no torch) the value the
    training run measured on this very graph, if it did."""
    if torch_scores is not None:
        return {"max_abs_diff_vs_torch": float(np.max(np.abs(scores - torch_scores)))}
    kept = previous.get("variants", {}).get(key, {})
    if not kept and key == "fp32" and previous.get("served_graph_sha256") == digest:  # report of v1.2 and before
        kept = {"graph_sha256": digest, "max_abs_diff_vs_torch": previous.get("served_max_abs_diff")}
    if kept.get("graph_sha256") == digest and kept.get("max_abs_diff_vs_torch") is not None:
        return {"max_abs_diff_vs_torch": kept["max_abs_diff_vs_torch"]}
    return {}


def cpu_graph(torch_parity: dict[str, dict[str, dict[str, float]]], scores: dict[str, dict[str, np.ndarray]]) -> str:
    """"int8" when every head's int8 scores are within INT8_BAR of torch on every validation row,
    else "fp32". Without torch (a recalibration of a graph never compared with it), |int8 - fp32| +
    |fp32 - torch| bounds |int8 - torch|."""
    for name, by_graph in torch_parity.items():
        fp32 = by_graph["fp32"].get("max_abs_diff_vs_torch")
        bound = by_graph["int8"].get("max_abs_diff_vs_torch")
        if bound is None and fp32 is not None:
            bound = float(np.max(np.abs(scores[name]["int8"] - scores[name]["fp32"]))) + fp32
        if bound is None or bound > INT8_BAR:
            return "fp32"
    return "int8"


def reference_examples(name: str, split: Split, labels: np.ndarray, torch_scores: np.ndarray) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        for j in rng.choice(idx, size=min(30, idx.size), replace=False):
            e = split.val[int(j)]
            out.append({"detector": name, "prompt": e.prompt, "response": e.response, "label": e.label,
                        "torch_score": float(torch_scores[j])})
    return out


def injury_checks(detector: Any, split: Split, served: np.ndarray, threshold: float) -> dict[str, Any]:
    """The injury filter on its realistic hand-written validation texts and on each held-out set of
    hard negatives (never trained on), as served."""
    natural = [(e, v) for e, v in zip(split.val, served, strict=True) if e.source.endswith("natural")]
    ys = np.array([e.label for e, _ in natural])
    vs = np.array([v for _, v in natural])
    out: dict[str, Any] = {"natural_validation": {
        "positives": int(ys.sum()), "negatives": int((1 - ys).sum()), "roc_auc": ev.roc_auc(vs, ys),
        "baseline_tfidf_auc": tfidf_baseline(split, lambda e: e.source.endswith("natural")),
        "missed": int(np.sum((ys == 1) & (vs < threshold))),
        "false_flags": int(np.sum((ys == 0) & (vs >= threshold))),
        # Named in the card: concrete misses tell a user more than a rate over 89 texts.
        "missed_examples": [{"score": float(v), "prompt": e.prompt, "response": e.response}
                            for e, v in natural if e.label == 1 and v < threshold]}}
    for key, path in HELDOUT_SETS.items():
        held = [Example("", t, 0, "", "") for t in load_injury_heldout(path)]
        held_scores = served_scores(detector, held)
        top = int(np.argmax(held_scores))
        out[key] = {"rows": len(held), "flagged": int(np.sum(held_scores >= threshold)),
                    "max_score": float(held_scores[top]), "max_text": held[top].response,
                    "flagged_texts": [t.response for t, v in zip(held, held_scores, strict=True) if v >= threshold]}
    return out
