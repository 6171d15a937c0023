"""Raw onnxruntime speed of the shipped detectors' shared graph as a worker loads it (all heads in one
pass): on CPU the graph model.json names (and both CPU graphs, fp32 and int8), on a GPU the fp16 graph.

    python -m bench.model_speed [--tokens 128] [--batch 32] [--seconds 10] [--record]

`--record` writes models/minilm/speed.json (CPU) or, where the CUDA provider runs the graph,
speed_gpu.json; the model cards quote both (`python -m models.cards`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models import assemble, variants
from models.variants import digest
from service.detector_config import load_configs
from service.settings import Settings
from workers.detector import OnnxModel, load_detectors
from workers.providers import gpu_name

from .common import machine

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    variants.ensure()  # the shipped graphs are built from committed files, not committed
    detectors = load_detectors(load_configs([ROOT / "models"]), Settings().providers)
    served = next(iter(detectors.values())).model
    on_gpu = served.providers[0] == "CUDAExecutionProvider"
    result = {"machine": machine(), "providers": served.providers, "graph": served.path.name,
              "graph_sha256": digest(served.path),  # the cards quote it only while the graph is unchanged
              "tokens": args.tokens, "batch": args.batch, "detectors": sorted(detectors),
              "command": f"python -m bench.model_speed --tokens {args.tokens} --batch {args.batch}"}
    if on_gpu:
        result["gpu"] = gpu_name()
    result["outputs_per_s"] = measure(served, args)
    if not on_gpu:  # both CPU graphs, so the card can say what int8 gains over the graph it comes from
        for key, path in (("fp32", assemble.ENCODER), ("int8", variants.paths()["int8"])):
            result[f"{key}_outputs_per_s"] = result["outputs_per_s"] if path == served.path else measure(
                OnnxModel(path, served.path.parent / "tokenizer.json", 256, True, list(Settings().providers)), args)
    print(json.dumps(result))
    if args.record:
        name = "speed_gpu.json" if on_gpu else "speed.json"
        (ROOT / "models" / "minilm" / name).write_text(json.dumps(result, indent=2) + "\n")


def measure(model: OnnxModel, args: argparse.Namespace) -> float:
    # Build a text of exactly `tokens` tokens (with [CLS] and [SEP]) from a real sentence.
    base = "the patient said the results were fine but the doctor wanted more tests before surgery "
    text = base * 20
    ids = model.tokenizer.encode(text).ids[1:args.tokens - 1]
    text = model.tokenizer.decode(ids)
    assert len(model.tokenizer.encode(text).ids) == args.tokens
    items = [("", text)] * args.batch
    model.run(items)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        model.run(items)
        done += args.batch
    return round(done / (time.perf_counter() - start), 1)


if __name__ == "__main__":
    main()
