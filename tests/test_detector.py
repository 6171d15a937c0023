"""The ONNX detector on a synthetic model whose exact scores are known."""

from pathlib import Path

import numpy as np
import pytest

from models.synthetic import DEFAULT_HEADS, keyword_score
from service.detector_config import load_configs
from workers.detector import load_detectors
from workers.providers import usable_providers

TEXTS = [
    "hello world",
    "bleeding and a broken arm",
    "that is a lie and a hoax",
    "blood " * 40 + "the end",
    "",
]


@pytest.fixture(scope="module")
def detectors(synthetic_models: Path):  # type: ignore[no-untyped-def]
    return load_detectors(load_configs([synthetic_models]), ["CPUExecutionProvider"])


def test_scores_match_the_model_definition(detectors) -> None:  # type: ignore[no-untyped-def]
    items = [("", t) for t in TEXTS]
    for name, det in detectors.items():
        expected = [keyword_score(t, DEFAULT_HEADS[name]) for t in TEXTS]
        np.testing.assert_allclose(det.predict(items), expected, atol=1e-5)
    injury = detectors["injury"].predict(items)
    assert injury[1] > detectors["injury"].threshold > injury[0]


def test_detectors_sharing_a_graph_share_one_session(detectors) -> None:  # type: ignore[no-untyped-def]
    assert detectors["injury"].model is detectors["deception"].model


def test_token_budget_splits_sorted_batches_without_changing_scores(detectors) -> None:  # type: ignore[no-untyped-def]
    model = detectors["injury"].model
    items = [("", t) for t in TEXTS * 3]
    model.calls.clear()
    whole = model.run(items)["logits"]
    # On a CPU texts share a call only within 1.25x of each other's length: five lengths, three texts each.
    assert model.pad_ratio == 1.25 and model.calls == [3, 3, 3, 3, 3]
    model.calls.clear()
    model.pad_ratio = float("inf")  # as on a GPU: no budget, one call
    try:
        np.testing.assert_allclose(model.run(items)["logits"], whole, atol=1e-6)
        assert model.calls == [len(items)]
    finally:
        model.pad_ratio = 1.25
    model.calls.clear()
    # 12 tokens per call at most: the long text (41 tokens) alone, short ones grouped by length.
    split = model.run(items, max_batch_tokens=12)["logits"]
    np.testing.assert_allclose(split, whole, atol=1e-6)
    assert sum(model.calls) == len(items) and len(model.calls) > 1
    assert max(model.calls) > 1  # short texts still share calls


def test_truncates_to_max_length(detectors) -> None:  # type: ignore[no-untyped-def]
    model = detectors["injury"].model
    encodings = model.tokenize([("", "w1 " * 1000)])
    assert len(encodings[0].ids) == model.tokenizer.truncation["max_length"] == 256


def test_a_misspelled_provider_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Unavailable providers are skipped by design (a CPU host with the GPU default); a name onnxruntime
    # does not know at all is a typo, which used to fall back to CPU without a word.
    with caplog.at_level("WARNING", logger="workers.detector"):
        assert usable_providers(["CUDAExecutionProvidr", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "unknown onnxruntime provider(s) CUDAExecutionProvidr" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="workers.detector"):
        usable_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "unknown" not in caplog.text


@pytest.mark.parametrize("change, message", [
    ({"output": "probs"}, "has no output 'probs'"),
    ({"output_index": 7}, "index 7 is out of bounds"),
])
def test_a_head_configured_wrong_fails_at_load_naming_the_detector(tmp_path: Path, change: dict[str, object],
                                                                   message: str) -> None:
    # Found before only when outputs were scored: every one failed, each with the same error.
    import json

    from models import synthetic
    from service.errors import ConfigError

    synthetic.build(tmp_path)
    path = tmp_path / "injury" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=f"detector 'injury' .* failed its self-check on one text: .*{message}"):
        load_detectors(load_configs([tmp_path]), ["CPUExecutionProvider"])


def test_the_load_time_self_check_is_not_counted_as_a_batch(synthetic_models: Path) -> None:
    fresh = load_detectors(load_configs([synthetic_models]), ["CPUExecutionProvider"])
    model = fresh["injury"].model
    assert model.calls == []  # the self-check's session call was cleared
    fresh["injury"].predict([("", "hello")])
    assert model.calls == [1]
