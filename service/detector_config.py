"""Detectors are configuration: `<models dir>/<name>/model.json` describes one ONNX classifier head.

This module only parses and checks those files (no onnxruntime import), so the API process can
list and validate detectors without loading any model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import strict_json
from .errors import ConfigError
from .keys import ID_PATTERN

log = logging.getLogger(__name__)

ACTIVATIONS = ("sigmoid", "softmax", "none")
INPUTS = ("response", "prompt_response")
LONG_TEXT = ("truncate", "windows")  # what a response past max_length gets (workers/windows.py)
WINDOW_TOKENS = 96  # response tokens per window, unless model.json says otherwise (workers/windows.py says why)
# The fields model.json may hold (models/README.md documents each).
FIELDS = frozenset({"name", "version", "description", "onnx", "onnx_gpu", "tokenizer", "input", "max_length",
                    "long_text", "window_tokens", "output", "output_index", "activation", "threshold", "target_fnr",
                    "enabled", "calibration"})


@dataclass(frozen=True)
class DetectorConfig:
    """One detector as described by its model.json (see models/README.md for the format)."""

    name: str
    version: str
    threshold: float
    onnx_path: Path
    tokenizer_path: Path
    output: str
    description: str = ""
    output_index: int | None = None
    activation: str = "sigmoid"
    input: str = "response"
    max_length: int = 256
    long_text: str = "truncate"
    window_tokens: int = WINDOW_TOKENS
    target_fnr: float | None = None
    onnx_gpu_path: Path | None = None
    enabled: bool = True
    calibration: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def window_width(self) -> int:
        """Response tokens per window a long response is also read in; 0: it is truncated."""
        return self.window_tokens if self.long_text == "windows" else 0

    def describe(self) -> dict[str, Any]:
        """The public view served by GET /v1/detectors."""
        return {
            "name": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "target_fnr": self.target_fnr,
            "description": self.description,
            "input": self.input,
            "max_length": self.max_length,
            "long_text": self.long_text,
            "window_tokens": self.window_width or None,
        }


def parse_model_json(path: Path) -> DetectorConfig:
    """Read and check one model.json; every problem names the file and the field."""
    try:
        # -sig: an editor's byte-order mark is no JSON error. Strict: a NaN threshold would compare false
        # with every score (nothing flagged, ever), and of a repeated "threshold" which one counts?
        raw = strict_json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read model.json: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: model.json must hold a JSON object")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:  # a typo ("target_frn") would otherwise drop the field in silence
        log.warning("%s: unknown field(s) %s, ignored (known: %s)", path, ", ".join(unknown), ", ".join(sorted(FIELDS)))
    folder = path.parent

    def get(key: str, types: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in raw:
            if default is ...:
                raise ConfigError(f"{path}: missing required field {key!r}")
            return default
        value = raw[key]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            raise ConfigError(f"{path}: field {key!r} has the wrong type ({type(value).__name__})")
        return value

    def existing(rel: str, key: str) -> Path:
        resolved = (folder / rel).resolve()
        if not resolved.is_file():
            raise ConfigError(f"{path}: {key} file {resolved} does not exist")
        return resolved

    name = get("name", str, folder.name)
    if not re.fullmatch(ID_PATTERN, name):
        raise ConfigError(f"{path}: name {name!r} must match {ID_PATTERN}")
    try:  # strict_json refuses a float past the 64-bit range, but an integer of 400 digits is JSON
        threshold = float(get("threshold", (int, float)))
    except OverflowError:
        raise ConfigError(f"{path}: threshold is out of range for a 64-bit float") from None
    activation = get("activation", str, "sigmoid")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{path}: activation must be one of {ACTIVATIONS}")
    if activation != "none" and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{path}: threshold {threshold} is outside [0, 1]")
    input_ = get("input", str, "response")
    if input_ not in INPUTS:
        raise ConfigError(f"{path}: input must be one of {INPUTS}")
    max_length = get("max_length", int, 256)
    if max_length <= 0:
        raise ConfigError(f"{path}: max_length must be positive")
    long_text = get("long_text", str, "truncate")
    if long_text not in LONG_TEXT:
        raise ConfigError(f"{path}: long_text must be one of {LONG_TEXT}")
    window_tokens = get("window_tokens", int, WINDOW_TOKENS)
    # Narrower reads little; wider than half of max_length leaves no room for a prompt beside it.
    if long_text == "windows" and not 16 <= window_tokens <= max_length // 2:
        raise ConfigError(f"{path}: window_tokens {window_tokens} must be between 16 and half of max_length "
                          f"({max_length // 2})")
    target = get("target_fnr", (int, float, type(None)), None)
    if target is not None and not 0.0 < target < 1.0:
        # 2 meant as "2%" would hold the FNR alert to a rate it can never exceed.
        raise ConfigError(f"{path}: target_fnr {target} must be a rate between 0 and 1 (0.02 for 2%)")
    gpu = get("onnx_gpu", (str, type(None)), None)
    output_index = get("output_index", (int, type(None)), None)
    if activation == "softmax" and output_index is None:
        raise ConfigError(f"{path}: softmax needs output_index (the positive class column)")
    return DetectorConfig(
        name=name,
        version=str(get("version", (str, int, float))),
        threshold=threshold,
        onnx_path=existing(get("onnx", str), "onnx"),
        tokenizer_path=existing(get("tokenizer", str), "tokenizer"),
        output=get("output", str),
        description=get("description", str, ""),
        output_index=output_index,
        activation=activation,
        input=input_,
        max_length=max_length,
        long_text=long_text,
        window_tokens=window_tokens,
        target_fnr=None if target is None else float(target),
        onnx_gpu_path=_optional_variant(folder, gpu, path),
        enabled=get("enabled", bool, True),
        calibration=get("calibration", dict, {}),
    )


def load_configs(models_dirs: Iterable[Path]) -> dict[str, DetectorConfig]:
    """All enabled detectors under the given folders, by name; a duplicate name is an error."""
    configs: dict[str, DetectorConfig] = {}
    for folder in models_dirs:
        if not folder.is_dir():
            raise ConfigError(f"models folder {folder} does not exist")
        for model_json in sorted(folder.glob("*/model.json")):
            config = parse_model_json(model_json)
            if not config.enabled:
                continue
            if config.name in configs:
                raise ConfigError(f"detector {config.name!r} is defined twice (second in {model_json})")
            configs[config.name] = config
    return configs


def fingerprints(configs: Iterable[DetectorConfig]) -> dict[str, str]:
    """A sha256 per detector name of what makes its scores: the bytes of its graph (with its external
    data files, if any) and tokenizer and the fields that turn their output into a score and a flag.
    Windows and counters are kept per version, so the workers serving one version must agree on this,
    or one window would judge two models' scores as one model's (`VersionClaims.claim`); the API
    compares its own with theirs (`Fleet.files_match`).
    `onnx_gpu` is left out: it is derived from `onnx` (its card bounds the difference), and GPU and CPU
    workers serve one version together."""
    files: dict[Path, str] = {}
    graphs: dict[Path, str] = {}

    def file_sha256(path: Path) -> str:
        if path not in files:  # the shipped detectors share one graph: read it once
            try:
                with path.open("rb") as f:
                    files[path] = hashlib.file_digest(f, "sha256").hexdigest()
            except FileNotFoundError:  # loading the detector then fails with its own message
                files[path] = "missing"
        return files[path]

    def graph_sha256(path: Path) -> str:
        if path not in graphs:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # loading the detector then fails with its own message
                data = b""
            parts = [hashlib.sha256(data).hexdigest()]
            # A tensor stored outside names its file under the key "location": a graph without those
            # bytes has none, and is not parsed (importing onnx alone adds most of a second to a start).
            if b"location" in data:
                parts += [f"{rel}={file_sha256(path.parent / rel)}" for rel in _external_data(path)]
            graphs[path] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return graphs[path]

    out = {}
    for c in configs:
        body = {"onnx": graph_sha256(c.onnx_path), "tokenizer": file_sha256(c.tokenizer_path), "output": c.output,
                "output_index": c.output_index, "activation": c.activation, "input": c.input,
                "max_length": c.max_length, "threshold": repr(c.threshold)}
        if c.long_text != "truncate":  # added later: the fingerprints of detectors that truncate keep their value
            body["long_text"] = c.long_text
            if c.window_tokens != WINDOW_TOKENS:  # later still: so do those of 1.2.1's default windows
                body["window_tokens"] = c.window_tokens
        out[c.name] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return out


def _external_data(onnx_path: Path) -> list[str]:
    """The files, relative to the graph's folder, that hold its tensors stored outside it: models over
    2 GB, and exporters that write weights beside the graph. A retrain can change only those."""
    import onnx  # only for graphs that may hold external data: the import takes most of a second

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return []  # not a readable graph: loading it fails next, with onnxruntime's message
    found: set[str] = set()

    def tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(found)


def _optional_variant(folder: Path, rel: str | None, path: Path) -> Path | None:
    """The GPU variant is derived at build time (`python -m models.variants`); until then, use `onnx`."""
    if not rel:
        return None
    resolved = (folder / rel).resolve()
    if not resolved.is_file():
        log.info("%s: onnx_gpu %s not built; the GPU would use the onnx file", path, resolved)
        return None
    return resolved


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
