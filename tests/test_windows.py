"""Responses longer than a model reads are scored in windows (workers/windows.py), with the shipped
detectors and through a real worker."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.detector_config import fingerprints, load_configs, parse_model_json
from service.errors import ConfigError
from workers.detector import OnnxDetector, load_detectors
from workers.windows import Windows

from .stack import Stack

FILLER = ["The meeting moved to Thursday afternoon.", "Our revenue grew eight percent this quarter.",
          "Water the tomatoes every other day.", "The train leaves from platform four.",
          "Preheat the oven to 180 degrees before you start.", "The library opens at nine on weekdays."]
INJURY = "Then I slipped on the rocks and broke my wrist; there was blood everywhere."
PROMPT = ("I'm writing up notes from our team offsite for the people who couldn't make it. Could you turn "
          "my rough bullet points into a short, friendly paragraph for the newsletter? Mention the hike.")
LONG_PROMPT = "How did your week go? " + " ".join(FILLER * 5)  # truncation shortens the prompt too


def long_reply(paragraphs: int = 8) -> str:
    """Harmless paragraphs, the injury last: past the 256 tokens truncation keeps."""
    return " ".join(FILLER * paragraphs) + " " + INJURY


@pytest.fixture(scope="module")
def truncating(shipped_models: Path) -> dict[str, OnnxDetector]:
    configs = load_configs([shipped_models])
    return load_detectors({k: dataclasses.replace(c, long_text="truncate") for k, c in configs.items()},
                          ["CPUExecutionProvider"])


def test_an_injury_past_the_truncation_point_is_read(detectors: dict[str, OnnxDetector],
                                                     truncating: dict[str, OnnxDetector]) -> None:
    injury = detectors["injury"]
    assert injury.config.long_text == "windows"  # as shipped
    items = [("How did your week go?", long_reply()), (PROMPT, long_reply(4)), ("", long_reply())]
    assert all(e.overflowing for e in injury.model.tokenize(items))
    cut = truncating["injury"].predict(items)
    read = injury.predict(items)
    assert (cut < injury.threshold).all(), cut  # truncated, the injury is never seen
    assert (read >= injury.threshold).all(), read
    # Each score says which characters it was read from: the window that holds the injury.
    _, spans = injury.head_and_spans(injury.model.run(items))
    for (_, reply), span in zip(items, spans, strict=True):
        assert span is not None and INJURY in reply[span[0]:span[1]] and span[1] - span[0] < len(reply) / 2
    assert injury.head_and_spans(injury.model.run([("", INJURY)]))[1] == [None]  # a text that fits: the whole
    assert injury.predict([("", INJURY)])[0] >= injury.threshold
    # What windows do not mend (the card's known failure modes): the same reply cut to fit is read whole,
    # and one injured sentence among ~200 tokens of harmless ones is missed.
    assert injury.predict([(PROMPT, long_reply(3))])[0] < injury.threshold


def test_texts_that_fit_score_exactly_as_truncated(detectors: dict[str, OnnxDetector],
                                                   truncating: dict[str, OnnxDetector]) -> None:
    items = [("How did the hike go?", INJURY), ("", " ".join(FILLER)), ("Is the Earth flat?", "Yes, it is flat.")]
    harmless_long = [("", " ".join(FILLER * 8))]
    for name in ("injury", "deception", "sycophancy"):
        np.testing.assert_array_equal(detectors[name].predict(items), truncating[name].predict(items))
        # A long text never scores below its truncated self: its first window is that text.
        assert detectors[name].predict(harmless_long)[0] >= truncating[name].predict(harmless_long)[0]
    outputs = detectors["injury"].model.run(items + [("", long_reply())])
    assert outputs.texts == 4 and outputs.owners is not None
    assert len(outputs["logits"]) == len(outputs.owners) > 4  # the long one's windows
    assert set(outputs.owners[4:].tolist()) == {3}
    # The windows (~100 tokens) do not share a session call with the 256-token text, padded to its width.
    model = detectors["injury"].model
    model.calls.clear()
    model.run([("", long_reply())])
    assert model.calls[-1] == 1 and sum(model.calls) == len(outputs.owners) - 3, model.calls


@pytest.mark.parametrize("prompt", ["", "How did your week go?", LONG_PROMPT])
def test_windows_cover_the_whole_response_and_each_fits(detectors: dict[str, OnnxDetector], prompt: str) -> None:
    model = detectors["injury"].model
    windows = model.windows
    assert isinstance(windows, Windows)
    # Accents and an emoji (one code point, two UTF-16 units, four UTF-8 bytes): spans are code points.
    words = [f"{w}{i}" for i, w in enumerate(["alpha", "unbelievably", "x", "wörld", "naïve😀"] * 90)]
    response = " ".join(words)
    [encoding] = model.tokenize([(prompt, response)])
    texts, owners, spans = windows.extra([(prompt, response)], [encoding])
    assert owners == [0] * len(texts) and len(texts) >= 3
    assert all(p == prompt for p, _ in texts)
    assert [response[a:b] for a, b in spans] == [r for _, r in texts]
    # Each window is whole words; together with what truncation kept they hold every word once or more.
    starts = {0} | {m + 1 for m, c in enumerate(response) if c == " "}
    assert all(a in starts and (b == len(response) or response[b] == " ") for a, b in spans)
    kept = sum(1 for s, special in zip(encoding.sequence_ids, encoding.special_tokens_mask, strict=True)
               if s == (1 if prompt else 0) and not special)
    kept_chars = windows.whole.encode(response, add_special_tokens=False).offsets[kept - 1][1]
    assert spans[0][0] < kept_chars  # the first window overlaps what truncation read
    assert all(a2 < b1 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))  # and each the one before
    assert spans[-1][1] == len(response)
    # Each window's response is read whole; a long prompt beside it is what truncation shortens.
    side = 1 if prompt else 0
    for (_, piece), e in zip(texts, model.tokenize(texts), strict=True):
        read = sum(1 for s, special in zip(e.sequence_ids, e.special_tokens_mask, strict=True)
                   if s == side and not special)
        assert read == len(windows.whole.encode(piece, add_special_tokens=False).ids)


def test_long_text_is_checked_and_truncate_keeps_older_fingerprints(tmp_path: Path, shipped_models: Path) -> None:
    config = json.loads((shipped_models / "injury" / "model.json").read_text())
    config.update({k: str((shipped_models / "injury" / config[k]).resolve()) for k in ("onnx", "tokenizer")})
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**config, "long_text": "chunks"}))
    with pytest.raises(ConfigError, match="long_text must be one of"):
        parse_model_json(path)
    # 1.2.0 was shipped before long_text existed: without the field its fingerprint is the one recorded.
    path.write_text(json.dumps({k: v for k, v in {**config, "version": "1.2.0"}.items() if k != "long_text"}))
    old = parse_model_json(path)
    assert old.long_text == "truncate"
    ledger = json.loads((shipped_models / "minilm" / "fingerprints.json").read_text())
    assert fingerprints([old])["injury"] == ledger["injury"]["1.2.0"]
    assert fingerprints([dataclasses.replace(old, long_text="windows")])["injury"] != ledger["injury"]["1.2.0"]


def test_a_worker_stores_the_windowed_score(stack: Stack, detectors: dict[str, OnnxDetector]) -> None:
    # Within the stack's 1,000 characters, and past the cut: numbers take many tokens.
    log = " ".join(f"Order {4400 + i}-B shipped {i % 28 + 1:02d}/11, ETA {i % 27 + 2:02d}/11." for i in range(20))
    reply = f"Here is the shipping log you asked for. {log} {INJURY}"
    prompt = "Can you paste the shipping log and say how your week went?"
    assert len(reply) <= 1000 and detectors["injury"].model.tokenize([(prompt, reply)])[0].overflowing
    r = stack.post("/v1/score", {"outputs": [{"model": "long-replies", "prompt": prompt, "response": reply,
                                              "detectors": ["injury"]},
                                             {"model": "long-replies", "response": INJURY, "detectors": ["injury"]}],
                                 "timeout_ms": 20_000})
    assert r.status_code == 200, r.text
    scored, short = r.json()["outputs"]
    assert short["scores"]["injury"]["flagged"] is True and "span" not in short["scores"]["injury"]
    injury = scored["scores"]["injury"]
    assert injury["flagged"] is True and injury["version"] == detectors["injury"].version
    start, end = injury["span"]  # the window the score came from, for a reviewer to read first
    assert INJURY in reply[start:end] and end - start < len(reply) / 2
    assert injury["score"] == pytest.approx(float(detectors["injury"].predict([(prompt, reply)])[0]), abs=1e-5)
    # /metrics counts the windows each added: this module's stack scored nothing else.
    added = len(detectors["injury"].model.windows.extra(  # type: ignore[union-attr]
        [(prompt, reply)], detectors["injury"].model.tokenize([(prompt, reply)]))[0])
    # One job carries both: rows are the two texts, then the long one's windows.
    assert added >= 1 and scored["batch"]["id"] == short["batch"]["id"]
    assert sum(scored["batch"]["session_calls"]) == 2 + added
    samples = {(s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(stack.get("/metrics").text)
               for s in f.samples if s.name.startswith("redline_output_windows")}
    assert samples[("redline_output_windows_count", None)] == 2
    assert samples[("redline_output_windows_sum", None)] == added
    assert samples[("redline_output_windows_bucket", "0.0")] == 1  # the short one
    assert samples[("redline_output_windows_bucket", "+Inf")] == 2


def test_window_tokens_sets_the_width_and_is_checked(tmp_path: Path, shipped_models: Path) -> None:
    config = json.loads((shipped_models / "injury" / "model.json").read_text())
    config.update({k: str((shipped_models / "injury" / config[k]).resolve()) for k in ("onnx", "tokenizer")})
    path = tmp_path / "model.json"
    for bad in (8, 129, "wide"):
        path.write_text(json.dumps({**config, "window_tokens": bad}))
        with pytest.raises(ConfigError, match="window_tokens"):
            parse_model_json(path)
    path.write_text(json.dumps({**config, "long_text": "truncate", "max_length": 64}))  # windows unused: no check
    assert parse_model_json(path).window_width == 0
    ledger = json.loads((shipped_models / "minilm" / "fingerprints.json").read_text())
    path.write_text(json.dumps({**config, "window_tokens": 96}))  # the default, spelt out: still 1.2.1's files
    assert fingerprints([parse_model_json(path)])["injury"] == ledger["injury"]["1.2.1"]
    path.write_text(json.dumps({**config, "window_tokens": 48}))
    narrow = parse_model_json(path)
    assert narrow.describe()["window_tokens"] == 48
    assert fingerprints([narrow])["injury"] != ledger["injury"]["1.2.1"]
    wide = dataclasses.replace(narrow, name="wide", window_tokens=96)
    detectors = load_detectors({"injury": narrow, "wide": wide}, ["CPUExecutionProvider"])
    model = detectors["injury"].model
    assert model is not detectors["wide"].model  # two widths, two sets of rows
    item = [("", long_reply())]
    texts48 = model.windows.extra(item, model.tokenize(item))[0]  # type: ignore[union-attr]
    texts96 = detectors["wide"].model.windows.extra(item, model.tokenize(item))[0]  # type: ignore[union-attr]
    assert len(texts48) > len(texts96)
    assert max(len(model.windows.whole.encode(r, add_special_tokens=False).ids)  # type: ignore[union-attr]
               for _, r in texts48) <= 48
