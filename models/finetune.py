"""Multi-task fine-tuning of the shared encoder (torch, training only), and reloading what it saved."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from .encoder import Featurizer
from .heads import training_rows
from .lora import LoRA
from .recipe import (
    CONSISTENCY_WEIGHT,
    DETECTORS,
    FEATURE_NORM_FLOOR,
    FINETUNED,
    QUANT_AWARE_LEVELS,
    QUANT_AWARE_RAMP,
    QUANT_AWARE_SHARE,
    SMALL_TASK_SHARE,
)
from .splits import Split, calibration_rows


def finetune(featurizer: Featurizer, splits: dict[str, Split], epochs: float, minutes: float, lora: bool = False,
             quant_aware: bool = False, lr: float | None = None, batch: int = 16) -> dict[str, Any]:
    """Multi-task fine-tuning of the shared encoder, all of it or (`lora`) LoRA factors plus LayerNorm
    and biases: one binary cross-entropy head per detector, batches drawn task by task (each task's
    data once per epoch, small tasks repeated to about SMALL_TASK_SHARE of the largest),
    class-balanced. Stops after `epochs` or `minutes`, whichever comes first. LoRA factors are rounded
    to fp16 at the end, as committed.

    `quant_aware` (models.quant_aware): over the last QUANT_AWARE_SHARE of the steps the loss adds
    CONSISTENCY_WEIGHT times the relative difference between the int8 variant's arithmetic and the
    float model, on all heads; the heads trained here are the ones exported (a refit would pick
    directions the training never made robust), so the injury task sees the cross-task negatives here."""
    import torch
    from torch import nn

    from .quant_aware import Consistency, FakeInt8

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lr = lr if lr is not None else (5e-4 if lora else 3e-5)
    deltas = LoRA.attach(featurizer.encoder) if lora else {}
    fake = FakeInt8(featurizer.encoder, deltas, LoRA.ALPHA / LoRA.RANK, QUANT_AWARE_LEVELS) if quant_aware else None
    if quant_aware:
        featurizer.use_norm_floor(FEATURE_NORM_FLOOR)
    train_rows = {n: training_rows(n, splits) if quant_aware else splits[n].train for n in DETECTORS}
    calibration = [e for _, e in calibration_rows(splits)]
    consistency = Consistency()
    encoder = featurizer.encoder.train()
    heads = nn.Linear(3 * 384, len(DETECTORS))
    trained = [p for p in encoder.parameters() if p.requires_grad]  # all, or LayerNorm and biases
    params = [p for d in deltas.values() for p in d.parameters()] + trained + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    largest = max(len(train_rows[n]) for n in DETECTORS)
    plan: list[tuple[int, list[int]]] = []
    for task, name in enumerate(DETECTORS):
        rows = train_rows[name]
        order = np.concatenate([rng.permutation(len(rows)) for _ in range(max(1, round(largest * SMALL_TASK_SHARE
                                                                                         / len(rows))))])
        plan += [(task, order[i:i + batch].tolist()) for i in range(0, len(order), batch)]
    steps = int(len(plan) * epochs)
    schedule = [plan[i] for i in np.concatenate([rng.permutation(len(plan)) for _ in range(int(np.ceil(epochs)))])]
    schedule = schedule[:steps]
    pos_weight = {t: (len(train_rows[n]) - sum(e.label for e in train_rows[n])) /
                  max(1, sum(e.label for e in train_rows[n])) for t, n in enumerate(DETECTORS)}
    started, done, losses = time.time(), 0, []
    for task, idx in schedule:
        if time.time() - started > minutes * 60:
            break
        rows = [train_rows[DETECTORS[task]][i] for i in idx]
        feeds = featurizer.feeds(rows)
        extra = torch.zeros(())
        weight = 0.0 if fake is None else consistency_weight(done, len(schedule))
        if not weight:
            logits = heads(featurizer.module.features(**feeds))[:, task]
        else:
            if fake.due(done):  # type: ignore[union-attr]
                fake.calibrate(featurizer.batches(calibration), done)  # type: ignore[union-attr]
            # Both passes under one dropout mask, so the consistency term measures int8 arithmetic only.
            seed = int(torch.randint(0, 2 ** 31, (1,)))
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                every_head = heads(featurizer.module.features(**feeds))
            with fake.active(), torch.random.fork_rng():  # type: ignore[union-attr]
                torch.manual_seed(seed)
                quantized = heads(featurizer.module.features(**feeds))
            logits = every_head[:, task]
            extra = weight * consistency(quantized, every_head)
        target = torch.tensor([float(e.label) for e in rows])
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.tensor(pos_weight[task])) + extra
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        done += 1
        if done % 100 == 0:
            print(f"  fine-tune step {done}/{len(schedule)} loss {np.mean(losses[-100:]):.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
    encoder.eval()
    procedure: dict[str, Any] = {"encoder": "fine-tuned", "steps": done, "planned_steps": len(schedule),
                                 "minutes": round((time.time() - started) / 60, 1), "lr": lr, "batch": batch}
    FINETUNED.mkdir(parents=True, exist_ok=True)
    if fake is not None:
        procedure.update(quant_aware=True, consistency_weight=CONSISTENCY_WEIGHT, quant_aware_share=QUANT_AWARE_SHARE,
                         quant_aware_levels=QUANT_AWARE_LEVELS, feature_norm_floor=FEATURE_NORM_FLOOR)
        featurizer.heads = (heads.weight.detach().numpy().T.copy(), heads.bias.detach().numpy().copy())
        np.savez(FINETUNED / "heads.npz", allow_pickle=False, weights=featurizer.heads[0], bias=featurizer.heads[1])
    # The feature cache is keyed by this tag: two runs of one length but other settings must not share it.
    trained_bytes = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in params)).hexdigest()[:12]
    if lora:
        factors = LoRA.factors(deltas)
        LoRA.load(deltas, factors)
        featurizer.deltas = deltas
        featurizer.tag = f"lora-{done}-steps-{trained_bytes}"
        procedure.update(encoder="LoRA fine-tuned", also_trained="LayerNorm and bias parameters",
                         rank=LoRA.RANK, alpha=LoRA.ALPHA)
        np.savez(FINETUNED / "lora.npz", allow_pickle=False, **factors)
        np.savez(FINETUNED / "tuned.npz", allow_pickle=False, **LoRA.tuned(encoder))
    else:
        featurizer.tag = f"finetuned-{done}-steps-{trained_bytes}"
        torch.save(encoder.state_dict(), FINETUNED / "encoder.pt")
    (FINETUNED / "procedure.json").write_text(json.dumps({"tag": featurizer.tag, "procedure": procedure}))
    return procedure


def reuse_finetuned(featurizer: Featurizer) -> dict[str, Any]:
    """Load what the last fine-tune saved (``--reuse-finetuned``): the encoder, or its LoRA factors and
    tuned LayerNorm/biases, so heads, export and calibration can be rerun without the expensive part."""
    import torch

    saved = json.loads((FINETUNED / "procedure.json").read_text())
    if saved["procedure"]["encoder"] == "LoRA fine-tuned":
        featurizer.deltas = LoRA.attach(featurizer.encoder)
        with np.load(FINETUNED / "lora.npz") as factors:
            LoRA.load(featurizer.deltas, dict(factors))
        with np.load(FINETUNED / "tuned.npz") as tuned:
            featurizer.encoder.load_state_dict({k: torch.from_numpy(v) for k, v in tuned.items()}, strict=False)
    else:
        featurizer.encoder.load_state_dict(torch.load(FINETUNED / "encoder.pt"))
    if saved["procedure"].get("quant_aware"):
        featurizer.use_norm_floor(saved["procedure"]["feature_norm_floor"])
        with np.load(FINETUNED / "heads.npz") as heads:
            featurizer.heads = (heads["weights"], heads["bias"])
    featurizer.encoder.eval()
    featurizer.tag = saved["tag"]
    return dict(saved["procedure"])


def rebuild_command(procedure: dict[str, Any]) -> str:
    """The command that retrains a model made by `procedure` (quoted by its card)."""
    flags = " --finetune-epochs 1" if procedure.get("encoder", "frozen") != "frozen" else ""
    flags += " --lora" if procedure.get("encoder") == "LoRA fine-tuned" else ""
    flags += " --quant-aware" if procedure.get("quant_aware") else ""
    return f"python -m models.train --data-dir ../shared/data{flags}"


def consistency_weight(step: int, steps: int) -> float:
    """Quant-aware schedule: plain training first (a consistency term from the first step made the
    model collapse to one constant score, which satisfies it trivially), then the weight ramps up
    over QUANT_AWARE_RAMP of the remaining steps and stays at CONSISTENCY_WEIGHT."""
    start = int(steps * (1 - QUANT_AWARE_SHARE))
    if step < start:
        return 0.0
    ramp = max(1, int((steps - start) * QUANT_AWARE_RAMP))
    return CONSISTENCY_WEIGHT * min(1.0, (step - start + 1) / ramp)
