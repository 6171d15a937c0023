"""The `Detector` interface and its one implementation on onnxruntime.

Detectors that share an ONNX file (one encoder, one head per detector) share one `OnnxModel`,
so scoring all of them costs one forward pass. Only onnxruntime, tokenizers and numpy are needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from service.detector_config import DetectorConfig
from service.errors import ConfigError

from . import int8_kernels
from .providers import usable_providers
from .windows import Windows, highest

log = logging.getLogger(__name__)

# (prompt, response): every detector receives both; its config says whether it reads the prompt.
TextPair = tuple[str, str]


class Detector(Protocol):
    name: str
    version: str
    threshold: float

    def predict(self, items: Sequence[TextPair]) -> np.ndarray:
        """Scores in [0, 1] (or raw, for activation "none"), one per item, higher = more positive."""
        ...


class OnnxModel:
    """One onnxruntime session plus its tokenizer; runs a padded batch and returns every output."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_length: int, pair_input: bool,
                 providers: Sequence[str], intra_op_threads: int = 0, window_tokens: int = 0) -> None:
        chosen = usable_providers(providers)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=chosen)
        self.providers = self.session.get_providers()
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.tokenizer, self.pad_id = load_tokenizer(tokenizer_path, max_length)
        self.pair_input = pair_input
        self.windows = Windows(self.tokenizer, max_length, pair_input, window_tokens) if window_tokens else None
        self.path = onnx_path
        # A GPU keeps the token budget alone: there a call's overhead weighs more, padding less (unmeasured).
        self.pad_ratio = _PAD_RATIO if self.providers[0] == "CPUExecutionProvider" else float("inf")
        self.calls: list[int] = []  # batch size of each session call, drained by the scorer for metrics
        threads = self.session.get_session_options().intra_op_num_threads
        log.info("loaded %s on %s, intra-op threads: %s", onnx_path.name, ",".join(self.providers),
                 threads or "onnxruntime's default")
        if self.providers[0] == "CPUExecutionProvider":
            int8_kernels.warn_if_they_may_saturate(onnx_path)

    def tokenize(self, items: Sequence[TextPair]) -> list[Encoding]:
        """Unpadded encodings, truncated to the model's max length."""
        if self.pair_input:
            return self.tokenizer.encode_batch([(p, r) if p else r for p, r in items])
        return self.tokenizer.encode_batch([r for _, r in items])

    def run(self, items: Sequence[TextPair], max_batch_tokens: int = 1 << 30) -> Outputs:
        """Score a batch; returns every output by name, rows in the order of `items`, then the rows of
        the long texts' extra windows (`Outputs.owners`; `OnnxDetector.head` takes each item's highest).

        Items are sorted by token length and cut into session calls of at most `max_batch_tokens`
        padded tokens, and on a CPU where a text is over `_PAD_RATIO` times the call's shortest, so one
        long text does not make every short one pay for its padding.
        """
        encodings = self.tokenize(items)
        owners: np.ndarray | None = None
        spans: list[tuple[int, int]] = []
        if self.windows is not None:
            extra, of, spans = self.windows.extra(items, encodings)
            if extra:
                encodings = encodings + self.tokenize(extra)
                owners = np.concatenate([np.arange(len(items)), np.asarray(of, dtype=np.int64)])
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        while start < len(order):
            stop = start + 1
            # Sorted ascending, so the chunk's padded width is its last member's length.
            widest = self.pad_ratio * max(1, len(encodings[order[start]].ids))  # an empty text: no 0 * inf
            while stop < len(order) and (stop - start + 1) * len(encodings[order[stop]].ids) <= max_batch_tokens \
                    and len(encodings[order[stop]].ids) <= widest:
                stop += 1
            parts.append(self._call([encodings[i] for i in order[start:stop]]))
            start = stop
        merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        restore = np.empty(len(order), dtype=np.int64)
        restore[np.array(order)] = np.arange(len(order))
        return Outputs({name: value[restore] for name, value in merged.items()}, owners, len(items), spans)

    def _call(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        feeds = pad_batch(encodings, self.pad_id)
        values = self.session.run(self.output_names, {k: v for k, v in feeds.items() if k in self.input_names})
        self.calls.append(len(encodings))
        return dict(zip(self.output_names, values, strict=True))


# A session call pads every text to its longest, and on a CPU a padded token costs about what a real
# one does while a call's own overhead is small: 16 long responses (16 texts of 256 tokens and their 49
# windows of up to 107) took 3.25 s when the token budget alone cut the calls (one padded 49 windows
# and 15 texts to 256) and 1.02 s cut by this ratio too (2026-12-03). Texts within it share a call.
_PAD_RATIO = 1.25


class Outputs(dict[str, np.ndarray]):
    """A model's outputs by name for a batch of `texts` texts; with `owners`, they hold more rows than
    texts: row r belongs to text owners[r] (a long text's windows, `workers.windows`), and row `texts + k`
    reads characters spans[k] of its text's response."""

    def __init__(self, values: dict[str, np.ndarray], owners: np.ndarray | None = None, texts: int = 0,
                 spans: list[tuple[int, int]] | None = None) -> None:
        super().__init__(values)
        self.owners = owners
        self.texts = texts
        self.spans = spans or []

    def windows_per_text(self) -> list[int]:
        """How many window rows each text added (0 for one that fit)."""
        owners = np.arange(self.texts) if self.owners is None else self.owners
        return (np.bincount(owners, minlength=self.texts) - 1).tolist()


def pad_batch(encodings: Sequence[Encoding], pad_id: int) -> dict[str, np.ndarray]:
    """int64 input_ids / attention_mask / token_type_ids, padded to the longest encoding.
    Training uses this too, so the exported model sees exactly what it was trained on."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@dataclass
class OnnxDetector:
    """A detector = one head (output, column, activation) of a shared `OnnxModel`."""

    config: DetectorConfig
    model: OnnxModel

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def predict(self, items: Sequence[TextPair]) -> np.ndarray:
        return self.head(self.model.run(items))

    def head(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """This detector's scores out of one shared forward pass, one per text: a long text's highest
        over its windows."""
        return self.head_and_spans(outputs)[0]

    def head_and_spans(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
        """The scores, and for each text the characters of its response the score was read from: None
        for the text as a whole (as truncation reads it), a window's span where that scored higher."""
        scores = self._rows(outputs)
        if not isinstance(outputs, Outputs) or outputs.owners is None:
            return scores, [None] * len(scores)
        best, rows = highest(scores, outputs.owners, outputs.texts)
        return best, [None if row < outputs.texts else outputs.spans[row - outputs.texts] for row in rows.tolist()]

    def _rows(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        try:
            raw = np.asarray(outputs[self.config.output], dtype=np.float64)
        except KeyError:
            raise ValueError(f"{self.model.path.name} has no output {self.config.output!r}") from None
        cfg = self.config
        if cfg.activation == "softmax":
            shifted = raw - raw.max(axis=-1, keepdims=True)
            probs = np.exp(shifted)
            probs /= probs.sum(axis=-1, keepdims=True)
            return probs[:, cfg.output_index]
        column = raw[:, cfg.output_index] if cfg.output_index is not None else raw.reshape(len(raw), -1)[:, 0]
        if cfg.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-column))
        return column


def load_detectors(configs: dict[str, DetectorConfig], providers: Sequence[str],
                   intra_op_threads: int = 0) -> dict[str, OnnxDetector]:
    """Build detectors, opening each distinct (ONNX file, tokenizer, input, windows) once."""
    use_gpu = "CUDAExecutionProvider" in usable_providers(providers)
    models: dict[tuple[Path, Path, int, str, int], OnnxModel] = {}
    detectors: dict[str, OnnxDetector] = {}
    for name, cfg in configs.items():
        path = cfg.onnx_gpu_path if use_gpu and cfg.onnx_gpu_path else cfg.onnx_path
        key = (path, cfg.tokenizer_path, cfg.max_length, cfg.input, cfg.window_width)
        if key not in models:
            models[key] = OnnxModel(path, cfg.tokenizer_path, cfg.max_length, cfg.input == "prompt_response",
                                    providers, intra_op_threads, cfg.window_width)
        detectors[name] = OnnxDetector(cfg, models[key])
    self_check(detectors)
    return detectors


# Run through every session once at load: it proves each head reads its model, and it pays onnxruntime's
# first-call allocations here rather than in the first real batch.
_CHECK_TEXT: TextPair = ("Is this a self-check?", "Yes: Redline scores this text once when a worker starts.")


def self_check(detectors: dict[str, OnnxDetector]) -> None:
    """One short text through each distinct model, then every head: each must give one finite score.
    A head configured wrong (an output the graph lacks, a column past its width) was found only when
    outputs were scored, each failing with the same error; it is a ConfigError at start instead."""
    outputs: dict[OnnxModel, dict[str, np.ndarray]] = {}
    for name, det in detectors.items():
        where = f"detector {name!r} ({det.config.onnx_path})"
        try:
            if det.model not in outputs:
                outputs[det.model] = det.model.run([_CHECK_TEXT])
            scores = np.asarray(det.head(outputs[det.model]))
        except Exception as exc:  # onnxruntime and numpy raise many kinds; each is a broken configuration here
            raise ConfigError(f"{where} failed its self-check on one text: {exc}") from None
        if scores.shape != (1,) or not np.isfinite(scores).all():
            raise ConfigError(f"{where} failed its self-check: one text gave scores of shape {scores.shape} "
                              f"({scores.ravel()[:4].tolist()}), not one finite score; check output "
                              f"{det.config.output!r} and output_index {det.config.output_index}")
    for det in detectors.values():
        det.model.calls.clear()  # the check is no batch: its call must not appear in the first one's metrics


def load_tokenizer(path: Path, max_length: int) -> tuple[Tokenizer, int]:
    """A tokenizer that truncates at `max_length` and does not pad, plus its pad id."""
    tokenizer = Tokenizer.from_file(str(path))
    # Packaged tokenizers often pad to a fixed length (128 for MiniLM); we pad each call to its
    # longest member ourselves, and truncate at the model's real limit.
    padding = tokenizer.padding or {}
    pad_id: int | None = padding.get("pad_id")
    if pad_id is None:
        pad_id = next((tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), 0)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer, int(pad_id or 0)
