"""The shipped detectors, through the service's own detector code (no torch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models import assemble, recipe, release, variants
from models.calibration import FP16_BAR, INT8_BAR
from models.datasets import HELDOUT_SETS, load_injury_heldout
from models.release import GRAPH_FILES
from service import evaluation as ev
from service.detector_config import fingerprints, load_configs
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


SERVED = REPORT["injury"]["served"]  # the graph CPU workers serve (models.calibration.cpu_graph): fp32 or int8


def test_three_detectors_share_one_graph_and_are_calibrated_on_it(detectors: dict[str, OnnxDetector]) -> None:
    assert sorted(detectors) == ["deception", "injury", "sycophancy"]
    assert len({id(d.model) for d in detectors.values()}) == 1  # one forward pass for all three
    assert next(iter(detectors.values())).model.path.name == GRAPH_FILES[SERVED]
    targets = {"injury": 0.02, "deception": 0.10, "sycophancy": 0.10}
    for name, det in detectors.items():
        cfg = det.config
        assert REPORT[name]["served"] == SERVED
        assert cfg.target_fnr == targets[name] and 0 < cfg.threshold < 1 and cfg.input == "prompt_response"
        assert cfg.onnx_gpu_path == variants.paths()["fp16"]
        cal = cfg.calibration
        assert cal["validation_positives"] > 0 and cal["validation_fnr"] <= cfg.target_fnr
        assert cal["validation_misses"] <= cfg.target_fnr * cal["validation_positives"]
        assert cfg.threshold == pytest.approx(REPORT[name]["threshold"], abs=1e-6)
        assert (SHIPPED_MODELS / name / "README.md").read_text().count("ROC AUC") >= 2


def test_each_shipped_version_is_served_with_the_files_it_was_shipped_with() -> None:
    # Workers refuse a detector version whose files changed (tests/test_version_claims.py), so a
    # retrain, recalibration or hand-edited threshold under an old version would stop upgraded workers.
    ledger = release.shipped_fingerprints()
    configs = load_configs([SHIPPED_MODELS])
    prints = fingerprints(configs.values())
    for name in recipe.DETECTORS:
        assert configs[name].version == recipe.VERSION
        assert ledger[name][recipe.VERSION] == prints[name], f"{name} {recipe.VERSION}: files changed, version did not"


def test_the_pipeline_gives_changed_files_a_version_of_their_own_and_keeps_every_older_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"  # a copy: settle_versions rewrites model.json
    for name in recipe.DETECTORS:
        (models / name).mkdir(parents=True)
        config = json.loads((SHIPPED_MODELS / name / "model.json").read_text())
        rel = {k: str((SHIPPED_MODELS / name / config[k]).resolve()) for k in ("onnx", "onnx_gpu", "tokenizer")}
        (models / name / "model.json").write_text(json.dumps({**config, **rel}))
    monkeypatch.setattr(release, "HERE", models)
    shipped = release.shipped_fingerprints()
    ledger = tmp_path / "fingerprints.json"
    ledger.write_text(json.dumps(shipped))
    as_shipped = dict.fromkeys(recipe.DETECTORS, recipe.VERSION)
    assert release.settle_versions(recipe.VERSION, ledger) == as_shipped
    assert json.loads(ledger.read_text()) == shipped
    injury = models / "injury" / "model.json"  # recalibrated, as --calibrate-only on new data would
    injury.write_text(json.dumps({**json.loads(injury.read_text()), "threshold": 0.5}))
    settled = release.settle_versions(recipe.VERSION, ledger)
    moved = fingerprints(load_configs([models]).values())["injury"]
    assert settled == {**dict.fromkeys(recipe.DETECTORS, recipe.VERSION), "injury": f"{recipe.VERSION}+{moved[:8]}"}
    assert json.loads(injury.read_text())["version"] == settled["injury"]
    written = json.loads(ledger.read_text())
    assert written["injury"] == {**shipped["injury"], settled["injury"]: moved}  # the shipped one kept
    assert written["deception"] == shipped["deception"]
    assert release.settle_versions(recipe.VERSION, ledger) == settled  # the same files again: the same versions
    assert release.settle_versions("99.0.0", ledger)["injury"] == "99.0.0"  # a new VERSION is used as it is
    assert json.loads(injury.read_text())["version"] == "99.0.0"


def test_committed_model_files_stay_small() -> None:
    """The int8 and fp16 graphs are built at install and git-ignored; what is committed stays under
    60 MB. The fp32 graph is either committed whole (full fine-tune) or, after a LoRA retrain,
    assembled from committed files that are small, so such retrains do not grow the repository by
    45 MB each."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "*.onnx", "*.onnx.data", "*.npz", "*.bin",
                              "*.safetensors", "*.pt"], cwd=SHIPPED_MODELS, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    files = {SHIPPED_MODELS / f for f in tracked if f}
    assert sum(f.stat().st_size for f in files) <= 60 * 1024 * 1024
    if assemble.RECIPE.exists():
        assert files == {assemble.SKELETON, assemble.FACTORS}
        assert sum(f.stat().st_size for f in files) <= 3 * 1024 * 1024
    else:
        assert files == {assemble.ENCODER}


def test_built_graphs_are_the_ones_calibrated_and_measured() -> None:
    """The graphs here (fp32 committed or assembled; int8 and fp16 derived from it at install by
    `models.variants.ensure`) are, byte for byte, the ones the report measured and calibrated."""
    built = {"fp32": variants.digest(assemble.ENCODER),
             **{key: variants.digest(path) for key, path in variants.paths().items()}}
    for name in ("injury", "deception", "sycophancy"):
        assert REPORT[name]["graph_sha256"] == built
        assert {k: v["graph_sha256"] for k, v in REPORT[name]["variants"].items()} == built


def _served(detectors: dict[str, OnnxDetector], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in REFERENCE["examples"] if r["detector"] == name]
    items = [(r["prompt"], r["response"]) for r in rows]
    # Each text's own row, as torch scored it (truncated): parity is the graph's. A long text's windows
    # come after those rows (workers/windows.py), and its served score is the highest of them.
    outputs = detectors[name].model.run(items)
    scores = detectors[name].head({key: value[:len(items)] for key, value in outputs.items()})
    return scores, np.array([r["torch_score"] for r in rows]), np.array([r["label"] for r in rows])


# The parity bars against torch: int8 0.02, fp16 0.005; the fp32 graph (weights stored fp16) 0.005.
BARS = {"int8": INT8_BAR, "fp16": FP16_BAR, "fp32": FP16_BAR}


def _int8_from_torch(name: str) -> float:
    """int8's max |score - torch| over every validation row, as the report has it; for a graph never
    compared with torch (a recalibration), the bound |int8 - fp32| + |fp32 - torch|."""
    graphs = REPORT[name]["variants"]
    if "max_abs_diff_vs_torch" in graphs["int8"]:
        return graphs["int8"]["max_abs_diff_vs_torch"]
    between = graphs["int8" if SERVED == "fp32" else "fp32"]["max_abs_diff_vs_served"]
    return between + graphs["fp32"]["max_abs_diff_vs_torch"]


def test_cpu_serves_int8_exactly_when_it_is_within_its_bar_of_torch() -> None:
    """On the report's full-validation measurements (CI cannot score them with torch): CPU workers
    serve int8 exactly when every head's int8 scores are within 0.02 of torch; the served graph is
    within its bar; an int8 that is not served comes with a threshold of its own scores; fp16 (GPU) is
    within 0.005 (of torch where measured, else of the fp32 graph it is derived from)."""
    names = ("injury", "deception", "sycophancy")
    assert (SERVED == "int8") == all(_int8_from_torch(n) <= INT8_BAR for n in names)
    for name in names:
        graphs = REPORT[name]["variants"]
        assert all(record["rows"] == REPORT[name]["val_rows"] for record in graphs.values())
        assert graphs[SERVED]["max_abs_diff_vs_torch"] <= BARS[SERVED]
        assert SERVED == "int8" or "own_threshold" in graphs["int8"]
        assert graphs["fp16"].get("max_abs_diff_vs_torch", graphs["fp16"]["max_abs_diff_vs_served"]) <= FP16_BAR


@pytest.mark.parametrize("name", ["injury", "deception", "sycophancy"])
def test_served_graph_matches_torch_reference_scores(detectors: dict[str, OnnxDetector], name: str) -> None:
    served, reference, _ = _served(detectors, name)
    assert len(served) >= 40
    assert np.all((served >= 0) & (served <= 1))
    assert float(np.max(np.abs(served - reference))) <= BARS[SERVED]


def _on_graph(detectors: dict[str, OnnxDetector], graph: Path, name: str) -> np.ndarray:
    rows = [r for r in REFERENCE["examples"] if r["detector"] == name]
    logits = _on_cpu(graph).run([(r["prompt"], r["response"]) for r in rows])["logits"].astype(np.float64)
    return 1 / (1 + np.exp(-logits[:, detectors[name].config.output_index]))


@pytest.mark.parametrize("name", ["injury", "deception", "sycophancy"])
def test_fp16_graph_matches_torch_reference_scores(detectors: dict[str, OnnxDetector], name: str) -> None:
    """fp16 is for GPUs; on CPU kernels it still shows what fp16 rounding costs (tests/test_gpu.py checks
    the CUDA provider where there is one). It is no further from the CPU graph than the report says."""
    reference = np.array([r["torch_score"] for r in REFERENCE["examples"] if r["detector"] == name])
    scores = _on_graph(detectors, variants.paths()["fp16"], name)
    assert float(np.max(np.abs(scores - reference))) <= FP16_BAR
    served, _, _ = _served(detectors, name)
    assert float(np.max(np.abs(scores - served))) <= REPORT[name]["variants"]["fp16"]["max_abs_diff_vs_served"] + 1e-6


def test_int8_scores_do_not_depend_on_the_batch(detectors: dict[str, OnnxDetector]) -> None:
    int8 = _on_cpu(variants.paths()["int8"])
    items = [(r["prompt"], r["response"]) for r in REFERENCE["examples"]]
    batched = int8.run(items, 8192)["logits"]
    alone = np.concatenate([int8.run([item])["logits"] for item in items])
    assert float(np.max(np.abs(batched - alone))) < 1e-4  # stock dynamic int8: up to 0.3 in score
    for name, det in detectors.items():
        rows = [i for i, r in enumerate(REFERENCE["examples"]) if r["detector"] == name]
        scores = 1 / (1 + np.exp(-batched[rows, det.config.output_index].astype(np.float64)))
        served = det.predict([items[i] for i in rows])
        # No further from the CPU graph than the report (and the card) say, on validation rows.
        recorded = REPORT[name]["variants"]["int8"]["max_abs_diff_vs_served"]
        assert float(np.max(np.abs(scores - served))) <= recorded + 1e-6


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
# states, so a regression cannot pass unnoticed. Set 5 (datasets.RESERVED_SETS) is scored by nothing
# until the next model that is a candidate to ship.
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
