"""Quantization-aware fine-tuning: train the encoder so its int8 variant scores what the float model does.

The int8 variant (`models.variants`) is SmoothQuant plus W8A8 with one activation scale per token and
one weight scale per output column. On an encoder fine-tuned the plain way, quantizing any single
layer moved some validation scores by 0.1 (weights-only int8: 0.13; all of it: 0.24, measured
2026-12-01), while the bar is 0.02: fine-tuning leaves the model steep where a few texts lie near
a head's boundary, and no post-training recipe removes that. So training sees the int8 arithmetic
too: `FakeInt8` makes every Linear of the encoder's layers compute nearly what the exported int8
graph computes (rounding passed straight through for the gradient), and the loss asks the int8 path
to agree with the float path (`Consistency`), on every head, not only the task's own, because in
production every detector scores every text.

Nearly, not exactly: `FakeInt8` smooths each Linear with its own factor from a running range, where
the variant gives query, key and value one shared factor from the calibration texts' maxima. On
v1.2.0 that left it 0.38 from the int8 graph on deception's validation rows, against 0.07 for a copy
of the variant's own smoothing (measured 2026-12-01). Match the variant before the next run.

The float model stays the one that is exported, served on GPU (fp16) and compared with torch; the
int8 graph is derived from it afterwards, as before, and measured on every validation row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .variants import SMOOTHING_ALPHA

RANGE_DECAY = 0.9  # running per-channel max |x|: follows the encoder as it trains


class FakeInt8:
    """Per-token W8A8 fake quantization of each Linear in `encoder.encoder` (the 36 MatMuls the int8
    variant quantizes), switched on only inside `active()`. LoRA deltas, if any, are merged into the
    weight first, exactly as `models.assemble` merges them before the variant is derived."""

    def __init__(self, encoder: Any, deltas: dict[str, Any], lora_scale: float, levels: int = 127) -> None:
        import torch

        self.on = False
        self.levels = levels  # 127: the variant's int8; fewer: a coarser grid, to train for a margin
        for name, module in encoder.encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
                delta = deltas.get(f"encoder.{name}")
                module.register_buffer("x_range", torch.zeros(module.in_features), persistent=False)
                module.forward = self._forward(module, delta, lora_scale)
                if delta is not None:
                    delta.skip = lambda: self.on  # merged into the weight while fake-quantized

    @contextmanager
    def active(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def _forward(self, module: Any, delta: Any, lora_scale: float) -> Any:
        import torch
        from torch.nn import functional as F  # noqa: N812

        plain = torch.nn.Linear.forward.__get__(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self.on:
                return plain(x)
            weight = module.weight if delta is None else module.weight + lora_scale * (delta.B @ delta.A)
            with torch.no_grad():
                seen = x.abs().amax(dim=tuple(range(x.dim() - 1)))
                module.x_range.copy_(torch.where(module.x_range > 0,
                                                 torch.maximum(RANGE_DECAY * module.x_range, seen), seen))
                w_range = weight.abs().amax(0).clamp(min=1e-5)
                s = (module.x_range ** SMOOTHING_ALPHA / w_range ** (1 - SMOOTHING_ALPHA)).clamp(1e-3, 1e3)
                s = torch.exp2(torch.round(torch.log2(s)))  # as models.variants.power_of_two
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
