"""Build small synthetic ONNX detectors with `onnx.helper`: for tests, smoke runs and benchmarks.

The model is a word-level keyword classifier with one head per detector:
`score_h = sigmoid(scale * (share of tokens that are keywords of h) - bias)`, so tests can
predict scores exactly. `encoder_layers > 0` adds a per-token MLP stack of MiniLM-like width
whose result barely moves the scores but costs MiniLM-like compute, for benchmarks.

    python -m models.synthetic OUT_DIR [--layers 6]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

SCALE, BIAS = 8.0, 2.0
FILLER = [f"w{i}" for i in range(200)] + ["the", "a", "is", "and", "of", "to", "in", "was", "it", "hello", "world"]
DEFAULT_HEADS = {
    "injury": ["blood", "bleeding", "broken", "wound", "hurt", "injured", "fracture", "stabbed"],
    "deception": ["false", "lie", "fake", "wrong", "myth", "hoax"],
}


def keyword_score(text: str, keywords: Sequence[str]) -> float:
    """The exact score the synthetic model gives `text` for a head with these keywords."""
    words = Whitespace().pre_tokenize_str(text)
    if not words:
        return float(1 / (1 + np.exp(BIAS)))
    share = sum(w.lower() in set(keywords) for w, _ in words) / len(words)
    return float(1 / (1 + np.exp(-(SCALE * share - BIAS))))


def build(out_dir: Path, heads: Mapping[str, Sequence[str]] = DEFAULT_HEADS, encoder_layers: int = 0,
          threshold: float = 0.5, max_length: int = 256, onnx_name: str = "synthetic.onnx",
          version: str = "synthetic-1") -> list[Path]:
    """Write one shared ONNX graph + tokenizer into `out_dir`, and one `<head>/model.json` per head.
    Returns the model.json paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(heads)
    vocab_words = list(dict.fromkeys([w.lower() for ws in heads.values() for w in ws] + FILLER))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(vocab_words)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    from tokenizers.normalizers import Lowercase

    tokenizer.normalizer = Lowercase()
    tokenizer.save(str(out_dir / "tokenizer.json"))

    emb = np.zeros((len(vocab), len(names)), dtype=np.float32)
    for h, name in enumerate(names):
        for word in heads[name]:
            emb[vocab[word.lower()], h] = 1.0
    onnx.save(_graph(emb, encoder_layers), str(out_dir / onnx_name))
    paths = []
    for h, name in enumerate(names):
        folder = out_dir / name
        folder.mkdir(exist_ok=True)
        config = {
            "name": name, "version": version, "description": f"synthetic keyword detector ({name})",
            "onnx": f"../{onnx_name}", "tokenizer": "../tokenizer.json", "output": "logits",
            "output_index": h, "activation": "sigmoid", "threshold": threshold, "input": "response",
            "max_length": max_length,
        }
        (folder / "model.json").write_text(json.dumps(config, indent=2) + "\n")
        paths.append(folder / "model.json")
    return paths


def _graph(emb: np.ndarray, encoder_layers: int) -> onnx.ModelProto:
    heads = emb.shape[1]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),  # [B,T,H]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [B,T,1]
        helper.make_node("Mul", ["tok", "mask3"], ["tok_masked"]),
        helper.make_node("ReduceSum", ["tok_masked", "axis1"], ["summed"], keepdims=0),  # [B,H]
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count0"], keepdims=0),  # [B,1]
        helper.make_node("Max", ["count0", "one"], ["count"]),  # an empty text shares 0, not NaN
        helper.make_node("Div", ["summed", "count"], ["share"]),
        helper.make_node("Mul", ["share", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "bias"], ["logits_kw"]),
    ]
    inits = [
        numpy_helper.from_array(emb, "emb"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(SCALE, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(BIAS, dtype=np.float32), "bias"),
    ]
    last = "logits_kw"
    if encoder_layers:
        # MiniLM-like per-token compute (hidden 384, FFN 1536) on a side branch, added with a tiny weight.
        rng = np.random.default_rng(0)
        vocab = emb.shape[0]
        inits.append(numpy_helper.from_array(rng.normal(0, 0.02, (vocab, 384)).astype(np.float32), "wemb"))
        nodes.append(helper.make_node("Gather", ["wemb", "input_ids"], ["h0"]))
        for i in range(encoder_layers):
            inits += [numpy_helper.from_array(rng.normal(0, 0.02, (384, 1536)).astype(np.float32), f"up{i}"),
                      numpy_helper.from_array(rng.normal(0, 0.02, (1536, 384)).astype(np.float32), f"down{i}")]
            nodes += [helper.make_node("MatMul", [f"h{i}", f"up{i}"], [f"u{i}"]),
                      helper.make_node("Relu", [f"u{i}"], [f"r{i}"]),
                      helper.make_node("MatMul", [f"r{i}", f"down{i}"], [f"d{i}"]),
                      helper.make_node("Add", [f"h{i}", f"d{i}"], [f"h{i + 1}"])]
        inits += [numpy_helper.from_array(np.full((384, heads), 1e-6, dtype=np.float32), "proj")]
        nodes += [helper.make_node("Mul", [f"h{encoder_layers}", "mask3"], ["hm"]),
                  helper.make_node("ReduceSum", ["hm", "axis1"], ["hs"], keepdims=0),
                  helper.make_node("MatMul", ["hs", "proj"], ["side"]),
                  helper.make_node("Add", ["logits_kw", "side"], ["logits_side"])]
        last = "logits_side"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes, "redline-synthetic",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", heads])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=0, help="MiniLM-width MLP layers to add (compute only)")
    args = parser.parse_args(argv)
    for path in build(args.out_dir, encoder_layers=args.layers):
        print(path)


if __name__ == "__main__":
    main()
