"""Training-data loaders on the real files (skipped, saying why, when ../shared/data is absent)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from models import datasets
from models.injury_data import generate

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (public training data not here)")


def _split_is_by_group(rows: list[datasets.Example]) -> None:
    sides: dict[str, set[bool]] = defaultdict(set)
    for r in rows:
        sides[r.group].add(r.validation)
    assert all(len(s) == 1 for s in sides.values())
    val = [r for r in rows if r.validation]
    assert 0.1 < len(val) / len(rows) < 0.3


@needs_data
def test_deception_loader() -> None:
    rows = datasets.load_deception(DATA, geometry_limit=200)
    sources = {r.source for r in rows}
    assert sources == {"truthfulqa", "truthfulqa-judged", "halueval", "geometry"}
    assert {r.label for r in rows} == {0, 1}
    halu = [r for r in rows if r.source == "halueval"]
    assert len(halu) >= 1400 and all(r.prompt for r in halu)
    judged = next(r for r in rows if r.source == "truthfulqa-judged")
    assert "\nA:" not in judged.prompt and not judged.response.endswith("True:")
    _split_is_by_group([r for r in rows if r.source != "geometry"])


@needs_data
def test_sycophancy_loader_keeps_the_prompt() -> None:
    rows = datasets.load_sycophancy(DATA)
    assert len(rows) == 2160 and sum(r.label for r in rows) == 1080
    first = [r for r in rows if r.group == "caa:0"]
    assert {r.label for r in first} == {0, 1} and all("Choices" in r.prompt for r in first)
    assert all(r.response.startswith("(") and len(r.response) > 4 for r in first)  # option spelled out
    _split_is_by_group(rows)


def test_injury_data_is_reproducible_sized_and_disjoint_from_heldout() -> None:
    path = datasets.INJURY_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [dict(r) for r in generate()]  # the committed file is what the generator makes
    assert len(rows) >= 3000
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6
    written = [json.loads(line) for line in datasets.INJURY_WRITTEN.read_text().splitlines()]
    assert len(written) >= 200 and 0.4 < sum(r["label"] for r in written) / len(written) < 0.6
    held = {t for path in [*datasets.HELDOUT_SETS.values(), *datasets.RESERVED_SETS.values()]
            for t in datasets.load_injury_heldout(path)}
    natural_validation = {e.response for e in datasets.load_injury_natural()}
    assert len(held) >= 290 and not held & {r["text"] for r in rows + written}
    # The reserved set shares no sentence with any set a model has been scored on (sets 1 and 4 share one).
    reserved = {t for path in datasets.RESERVED_SETS.values() for t in datasets.load_injury_heldout(path)}
    assert len(reserved) >= 60 and not reserved & {t for path in datasets.HELDOUT_SETS.values()
                                                    for t in datasets.load_injury_heldout(path)}
    assert not natural_validation & {r["text"] for r in rows + written}  # validation-only stays so
    loaded = datasets.load_injury()
    _split_is_by_group(loaded)
    # Generated rows split by sentence frame: no validation frame is ever seen in training.
    frames = {side: {e.group for e in loaded if e.source == "redline-injury" and e.validation == side}
              for side in (True, False)}
    assert frames[True] and frames[False] and not frames[True] & frames[False]
    assert any(g.startswith("t:news:") for g in frames[True])
    # The hand-written pairs are split half and half, each pair on one side.
    pairs = {e.group: e.validation for e in loaded if e.source == "redline-injury-natural"}
    assert 0.3 < sum(pairs.values()) / len(pairs) < 0.7


def test_download_fails_clearly_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(SystemExit, match="cannot download .*copy the files named in each SOURCE.md"):
        datasets.download(tmp_path)


def test_exported_labels_join_training_only_and_never_a_validation_text(tmp_path: Path) -> None:
    from models import cards, splits

    held = datasets.Example("", "He fell off the ladder and broke his hip.", 1, "g", "redline-injury")
    path = tmp_path / "labeled.jsonl"
    rows = [{"id": "a", "label": 1, "score": 0.2, "prompt": "How was work?", "response": "I cut my hand badly."},
            {"id": "b", "label": 0, "score": 0.7, "prompt": None, "response": "The stock market crashed."},
            {"id": "c", "label": 1, "score": 0.9, "prompt": "", "response": held.response}]  # a validation text
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = splits.load_labeled([path], [held])
    assert [(e.prompt, e.response, e.label) for e in got] == [("How was work?", "I cut my hand badly.", 1),
                                                             ("", "The stock market crashed.", 0)]
    assert {e.source for e in got} == {"exported:labeled.jsonl"}
    card = cards._exported({"exported_rows": {"exported:labeled.jsonl": 2}})
    assert "2 from `labeled.jsonl`" in card and "training only" in card
    for bad, why in (({"label": 1}, "expected a JSON object with 'response'"),
                     ({"response": "x", "label": 2}, "0 or 1"), ({"response": "x", "label": True}, "0 or 1"),
                     ("not json", "expected a JSON object")):
        broken = tmp_path / "broken.jsonl"
        broken.write_text(json.dumps(rows[0]) + "\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
        with pytest.raises(SystemExit, match=f"broken.jsonl:2: .*{why}"):
            splits.load_labeled([broken], [])
    assert splits.labeled_files([f"injury={path}", f"injury={path}"]) == {"injury": [path, path]}
    for spec, why in ((f"toxicity={path}", "a detector among"), ("injury=", "a detector among"),
                      (f"injury={tmp_path / 'none.jsonl'}", "no such file")):
        with pytest.raises(SystemExit, match=why):
            splits.labeled_files([spec])
