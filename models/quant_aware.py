"""Quantization-aware fine-tuning: train the encoder so its int8 variant scores what the float model does.

The int8 variant (`models.variants`) is SmoothQuant plus W8A8 with one activation scale per token and
one weight scale per output column. On an encoder fine-tuned the plain way, quantizing any single
layer moved some validation scores by 0.1 (weights-only int8: 0.13; all of it: 0.24, measured
2026-12-01), while the bar is 0.02: fine-tuning leaves the model steep where a few texts lie near
a head's boundary, and no post-training recipe removes that. So training sees the int8 arithmetic
too: `FakeInt8` makes every Linear of the encoder's layers compute what the exported int8 graph
computes (rounding passed straight through for the gradient), and the loss asks the int8 path to
agree with the float path (`Consistency`), on every head, not only the task's own, because in
production every detector scores every text.

`FakeInt8` smooths as the variant does: Linears that read one input (query, key and value) share one
power-of-two factor, from the largest |x| over the calibration texts' real tokens (`calibrate`) and
the largest |w| of the group. From the same input, each Linear then gives the int8 graph's MatMul
output to float precision (tests/test_quant_aware.py). Until 2026-12-01 each Linear had its own
factor from a running range over training batches: on the pretrained encoder with random heads its
logits were as far from the int8 graph's as the float model's are (median |difference| 0.027 against
0.024; now 0.007), and on v1.2.0's deception rows its scores were 0.38 away. Whole-model agreement
is not exact: where torch's and onnxruntime's float kernels differ in a last bit, a rounding flips,
and the difference grows layer by layer (v1.2.0: up to 0.07 in score).

The float model stays the one that is exported, served on GPU (fp16) and compared with torch; the
int8 graph is derived from it afterwards, as before, and measured on every validation row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .int8 import SMOOTHING_ALPHA

# The Linears of one BERT self-attention that read the same hidden states (models.int8.smooth
# groups MatMuls by their input, which gives the same groups).
SHARED_INPUT = (".query", ".key", ".value")
# Training steps between two measurements of the activation ranges: they move as the encoder trains,
# and the variant takes them from the final encoder. About 15 s each on 2 cores, against ~2 s a step.
RECALIBRATE_EVERY = 200


class FakeInt8:
    """Per-token W8A8 fake quantization of each Linear in `encoder.encoder` (the 36 MatMuls the int8
    variant quantizes), switched on only inside `active()`, after `calibrate` has measured the
    activation ranges. LoRA deltas, if any, are merged into the weight first, exactly as
    `models.assemble` merges them before the variant is derived."""

    def __init__(self, encoder: Any, deltas: dict[str, Any], lora_scale: float, levels: int = 127) -> None:
        import torch

        self.on = False
        self.encoder = encoder
        self.levels = levels  # 127: the variant's int8; fewer: a coarser grid, to train for a margin
        self.lora_scale = lora_scale
        self.mask: Any = None  # the attention mask of the batch `calibrate` is running
        self.calibrated_at: int | None = None  # the training step of the last `calibrate`
        groups: dict[str, list[tuple[Any, Any]]] = {}
        for name, module in encoder.encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
                delta = deltas.get(f"encoder.{name}")
                groups.setdefault(name.rsplit(".", 1)[0] if name.endswith(SHARED_INPUT) else name, []
                                  ).append((module, delta))
                if delta is not None:
                    delta.skip = lambda: self.on  # merged into the weight while fake-quantized
        self.groups = list(groups.values())
        self.x_range: list[Any] = [None] * len(self.groups)
        for g, members in enumerate(self.groups):
            for module, delta in members:
                module.forward = self._forward(g, module, delta)

    @contextmanager
    def active(self) -> Iterator[None]:
        if any(r is None for r in self.x_range):
            raise RuntimeError("FakeInt8.calibrate() must measure the activation ranges first")
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def due(self, step: int) -> bool:
        """Whether the ranges should be measured (again) before training step `step`."""
        return self.calibrated_at is None or step - self.calibrated_at >= RECALIBRATE_EVERY

    def calibrate(self, batches: Iterable[dict[str, Any]], step: int = 0) -> None:
        """The variant's activation ranges (`models.int8.activation_ranges`): per input channel,
        the largest |x| over the real (unpadded) tokens of `batches`, float path, dropout off. They
        move as the encoder trains, so training calls this again every few hundred steps."""
        import torch

        seen: list[Any] = [None] * len(self.groups)

        def hook(g: int) -> Any:
            def record(_module: Any, args: tuple[Any, ...]) -> None:
                x = args[0][self.mask].abs().amax(0)
                seen[g] = x if seen[g] is None else torch.maximum(seen[g], x)
            return record

        handles = [members[0][0].register_forward_pre_hook(hook(g)) for g, members in enumerate(self.groups)]
        training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                for feeds in batches:
                    self.mask = feeds["attention_mask"].bool()
                    self.encoder(**feeds)
        finally:
            self.mask = None
            self.encoder.train(training)
            for handle in handles:
                handle.remove()
        self.x_range, self.calibrated_at = seen, step

    def _weight(self, module: Any, delta: Any) -> Any:
        return module.weight if delta is None else module.weight + self.lora_scale * (delta.B @ delta.A)

    def _forward(self, g: int, module: Any, delta: Any) -> Any:
        import torch
        from torch.nn import functional as F  # noqa: N812

        plain = torch.nn.Linear.forward.__get__(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self.on:
                return plain(x)
            weight = self._weight(module, delta)
            with torch.no_grad():
                w_range = torch.stack([self._weight(m, d).abs().amax(0) for m, d in self.groups[g]]).amax(0)
                s = (self.x_range[g] ** SMOOTHING_ALPHA / w_range.clamp(min=1e-5) ** (1 - SMOOTHING_ALPHA)
                     ).clamp(1e-3, 1e3)
                s = torch.exp2(torch.round(torch.log2(s)))  # as models.int8.power_of_two
            return F.linear(per_token_int8(x / s, self.levels), per_channel_int8(weight * s, self.levels), module.bias)

        return forward


def _straight_through(x: Any, quantized: Any) -> Any:
    return x + (quantized - x).detach()


def per_token_int8(x: Any, levels: int = 127) -> Any:
    """Symmetric int8 with one scale per row (token): max|x| / 127, as the variant's ReduceMax/Round."""
    scale = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-8) / levels
    return _straight_through(x, (x / scale).round() * scale)


def per_channel_int8(weight: Any, levels: int = 127) -> Any:
    """Symmetric int8 with one scale per output channel (a torch Linear's row, the ONNX MatMul's column)."""
    scale = weight.detach().abs().amax(1, keepdim=True).clamp(min=1e-12) / levels
    return _straight_through(weight, (weight / scale).round().clamp(-levels, levels) * scale)


class Consistency:
    """Mean squared int8-vs-float logit difference per head, divided by the head's running logit
    variance, averaged over heads. Relative, because the plain version was satisfied by shrinking
    a head's logits (a weak head went nearly constant: logit SD 0.06, AUC 0.64, measured 2026-12-01);
    in logits, not scores, because a score difference only shows near a head's boundary, so most
    training texts taught no robustness and held-out texts near the boundary moved 5x more than
    training ones. The gradient flows through both paths, lowering the model's sensitivity to the
    rounding rather than pulling one path towards a fixed target."""

    DECAY = 0.99
    FLOOR = 0.1  # logit variance below which a head is not rewarded for being flatter

    def __init__(self) -> None:
        self.variance: Any = None

    def __call__(self, quantized_logits: Any, float_logits: Any) -> Any:
        import torch

        with torch.no_grad():
            seen = float_logits.var(0)
            self.variance = seen if self.variance is None else self.DECAY * self.variance + (1 - self.DECAY) * seen
        squared = ((quantized_logits - float_logits) ** 2).mean(0)
        return (squared / self.variance.clamp(min=self.FLOOR)).mean()
