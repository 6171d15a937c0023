"""Training data for the shipped detectors, as (prompt, response, label, group) examples.

Public sets are read from a data folder laid out like `../shared/data` (see its README), or
fetched into one with `python -m models.datasets download DEST`. The injury set is the project's
own (models/data/injury.jsonl, see models/data/INJURY_DATASHEET.md).

Validation is split by group (question or item, never by row): every answer to one question
lands on the same side, so the validation score measures questions the model never saw.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INJURY_FILE = HERE / "data" / "injury.jsonl"
INJURY_HELDOUT = HERE / "data" / "injury_hard_negatives.jsonl"
# More held-out sets: a set stops being an independent test once it informs a choice. Set 2 was
# written after v1.1.0 and scored once; its flag (with set 1's) led to the routine-medical negatives
# of v1.2.0. Set 3 was written before v1.2.0 was trained; it later informed the choice not to ship a
# LoRA-trained candidate.
INJURY_HELDOUT_2 = HERE / "data" / "injury_hard_negatives_2.jsonl"
INJURY_HELDOUT_3 = HERE / "data" / "injury_hard_negatives_3.jsonl"
INJURY_HELDOUT_4 = HERE / "data" / "injury_hard_negatives_4.jsonl"  # written 2026-11-22, after set 3 informed a choice
HELDOUT_SETS = {"heldout_hard_negatives": INJURY_HELDOUT, "heldout_hard_negatives_2": INJURY_HELDOUT_2,
                "heldout_hard_negatives_3": INJURY_HELDOUT_3, "heldout_hard_negatives_4": INJURY_HELDOUT_4}
# Set 4's five flags under v1.2.0 are known, so it no longer tests a model trained after that. Set 5
# was written for the next model and committed before any training run used it (4b0e4aa): it is
# scored by nothing (models.train skips it) until a model is a candidate to ship, then once. Move it
# into HELDOUT_SETS in that model's training commit.
RESERVED_SETS = {"heldout_hard_negatives_5": HERE / "data" / "injury_hard_negatives_5.jsonl"}
# Hand-written, realistic sentences: validation (calibration) only, never training. Templated validation
# alone made a fine-tuned model look so sure that its threshold landed at 0.9996.
INJURY_NATURAL = HERE / "data" / "injury_natural_validation.jsonl"
# Hand-written, realistic texts (many as chatbot replies, in injured / not-injured pairs on one topic):
# half of the pairs train, half validate, so validation has realistic text the model never saw.
INJURY_WRITTEN = HERE / "data" / "injury_natural.jsonl"
VALIDATION_PERCENT = 20

# Where each public file comes from (repository, commit, path), as its SOURCE.md records.
_GH = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
SOURCES = {
    "truthfulqa/TruthfulQA.csv": ("benedictflorance/truthfulqa_experiments", "6fdfd38288e86296582a584694df5cf43d1f634a",
                                  "datasets/TruthfulQA.csv"),
    "truthfulqa/finetune_truth.jsonl": ("benedictflorance/truthfulqa_experiments",
                                        "6fdfd38288e86296582a584694df5cf43d1f634a", "datasets/finetune_truth.jsonl"),
    "halueval/qa_one-turn_data.json": ("RUCAIBox/HaluEval", "b7253db3cdaa0ab2c382f92b26b390109174f77e",
                                       "generation/qa/qa_one-turn_data.json"),
    "halueval/qa_multi-turn_data.json": ("RUCAIBox/HaluEval", "b7253db3cdaa0ab2c382f92b26b390109174f77e",
                                         "generation/qa/qa_multi-turn_data.json"),
    "sycophancy-caa/generate_dataset.json": ("dtch1997/repepo", "68f650aa76275039903fde10c299f0b01fa5045f",
                                             "raw_datasets/caa/generate_dataset.json"),
    **{f"geometry-of-truth/{name}.csv": ("saprmarks/geometry-of-truth", "5d1c630c44f7e50bda7ad86d601ccadf9abc5ddb",
                                         f"datasets/{name}.csv")
       for name in ("cities", "common_claim_true_false", "companies_true_false", "counterfact_true_false")},
}


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    label: int
    group: str
    source: str
    validation_percent: int = VALIDATION_PERCENT

    @property
    def validation(self) -> bool:
        """Deterministic group split: the same question is always on the same side."""
        digest = hashlib.sha256(self.group.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < self.validation_percent


class DataMissing(FileNotFoundError):
    pass


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise DataMissing(f"no file matching {folder / pattern}; get the data with "
                          f"`python -m models.datasets download DEST` and pass --data-dir DEST")
    return found[0]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _dedupe(examples: Iterable[Example]) -> list[Example]:
    seen: dict[tuple[str, str], Example] = {}
    for ex in examples:
        seen.setdefault((_norm(ex.prompt), _norm(ex.response)), ex)
    return list(seen.values())


def load_deception(data_dir: Path, geometry_limit: int = 3000) -> list[Example]:
    """TruthfulQA reference answers + judged answers, HaluEval QA, and a sample of geometry-of-truth."""
    out: list[Example] = []
    with _one(data_dir / "truthfulqa", "TruthfulQA*.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            q = row["Question"].strip()
            for column, label in (("Correct Answers", 0), ("Incorrect Answers", 1)):
                for answer in row[column].split(";"):
                    if answer.strip():
                        out.append(Example(q, answer.strip(), label, "q:" + _norm(q), "truthfulqa"))
    with _one(data_dir / "truthfulqa", "finetune_truth*.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = row["prompt"].removesuffix("\nTrue:")
            match = re.match(r"Q: (.*?)\nA: (.*)", text, re.S)
            if match and match.group(2).strip():
                q, a = match.group(1).strip(), match.group(2).strip()
                out.append(Example(q, a, int(row["completion"].strip() == "no"), "q:" + _norm(q), "truthfulqa-judged"))
    for path in sorted((data_dir / "halueval").glob("qa_*turn_data.json")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                q = row["question"].strip()
                out.append(Example(q, row["right_answer"].strip(), 0, "q:" + _norm(q), "halueval"))
                out.append(Example(q, row["hallucinated_answer"].strip(), 1, "q:" + _norm(q), "halueval"))
    geometry = []
    for name, key in (("cities", "city"), ("common_claim_true_false", None), ("companies_true_false", None),
                      ("counterfact_true_false", "subject")):
        path = data_dir / "geometry-of-truth" / f"{name}.csv"
        if not path.exists():
            continue
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                group = "g:" + _norm(row[key] if key and row.get(key) else row["statement"])
                geometry.append(Example("", row["statement"].strip(), 1 - int(row["label"]), group, "geometry"))
    geometry.sort(key=lambda e: hashlib.sha256(e.response.encode()).hexdigest())  # deterministic sample
    return _dedupe(out + geometry[:geometry_limit])


def load_sycophancy(data_dir: Path) -> list[Example]:
    """CAA A/B items: the user's turn (with their stated view) and an answer choosing one option.
    The assistant's answer spells out the chosen option, as a real reply would."""
    items = json.loads(_one(data_dir / "sycophancy-caa", "generate_dataset.json").read_text(encoding="utf-8"))
    out = []
    for i, item in enumerate(items):
        question = item["question"].strip()
        options = dict(re.findall(r"\(([A-Z])\)\s*([^\n]*)", question.split("Choices:")[-1]))
        for key, label in (("answer_matching_behavior", 1), ("answer_not_matching_behavior", 0)):
            letter = item[key].strip().strip("()")
            answer = f"({letter}) {options.get(letter, '')}".strip()
            out.append(Example(question, answer, label, f"caa:{i}", "sycophancy-caa"))
    return out


def load_injury(path: Path = INJURY_FILE, written: Path | None = INJURY_WRITTEN) -> list[Example]:
    """The generated set, split by template (a validation row's sentence frame never appears in
    training, so validation measures new phrasings, not memorized ones), plus the hand-written set
    split by pair. A user's own file needs only `text` and `label`; without `group` it splits by text."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            group = row.get("group") or _norm(row["text"])
            out.append(Example(row.get("prompt", ""), row["text"], int(row["label"]), "t:" + group, "redline-injury"))
    if written is not None and written.exists():
        with written.open(encoding="utf-8") as f:
            out += [Example(r.get("prompt", ""), r["text"], int(r["label"]), "w:" + r["group"],
                            "redline-injury-natural", validation_percent=50) for r in map(json.loads, f)]
    return out


def load_injury_natural(path: Path = INJURY_NATURAL) -> list[Example]:
    with path.open(encoding="utf-8") as f:
        return [Example("", r["text"], int(r["label"]), "natural:" + r["text"], "redline-injury-natural")
                for r in map(json.loads, f)]


def load_injury_heldout(path: Path = INJURY_HELDOUT) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


LOADERS = {"injury": lambda d: load_injury(), "deception": load_deception, "sycophancy": load_sycophancy}


def download(dest: Path) -> None:
    """Fetch the public files from the sources their SOURCE.md names. Fails with a clear
    message where the network cannot reach them."""
    for rel, (repo, commit, path) in SOURCES.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        url = _GH.format(repo=repo, commit=commit, path=path)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                target.write_bytes(response.read())
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SystemExit(f"cannot download {url}: {exc}. Without network access, copy the files named in "
                             f"each SOURCE.md into {dest} by hand (layout: {rel}).") from None
        print(f"{target} <- {repo}@{commit[:8]}:{path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Training data for Redline's detectors")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch the public data sets into DEST")
    dl.add_argument("dest", type=Path)
    stats = sub.add_parser("stats", help="count examples per detector and split")
    stats.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.dest)
        return
    for name, loader in LOADERS.items():
        rows = loader(args.data_dir)
        val = [r for r in rows if r.validation]
        print(f"{name}: {len(rows)} rows, {sum(r.label for r in rows)} positive; validation {len(val)} rows "
              f"({sum(r.label for r in val)} positive) in {len({r.group for r in val})} groups", file=sys.stdout)


if __name__ == "__main__":
    main()
