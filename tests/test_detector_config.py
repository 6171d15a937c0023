import json
from pathlib import Path

import pytest

from service.detector_config import load_configs, parse_model_json
from service.errors import ConfigError


def test_synthetic_configs_load(synthetic_models: Path) -> None:
    configs = load_configs([synthetic_models])
    assert sorted(configs) == ["deception", "injury"]
    injury = configs["injury"]
    assert injury.output == "logits" and injury.output_index == 0 and injury.threshold == 0.5
    assert injury.onnx_path == configs["deception"].onnx_path  # one shared graph
    assert injury.describe()["version"] == "synthetic-1"


def _write(folder: Path, **fields: object) -> Path:
    (folder / "m").mkdir(parents=True, exist_ok=True)
    path = folder / "m" / "model.json"
    path.write_text(json.dumps(fields))
    return path


@pytest.mark.parametrize("change, message", [
    ({"threshold": None}, "missing required field 'threshold'"),
    ({"threshold": "high"}, "'threshold' has the wrong type"),
    ({"threshold": 1.5}, "outside \\[0, 1\\]"),
    ({"activation": "relu"}, "activation must be one of"),
    ({"onnx": "missing.onnx"}, "onnx file .* does not exist"),
    ({"activation": "softmax"}, "softmax needs output_index"),
    ({"name": "bad name"}, "must match"),
    ({"name": "injury\n"}, "must match"),  # `$` matches before a final newline: patterns are matched whole
    # Accepted before, and each one silenced the detector: a NaN threshold flags nothing, and a target
    # of 2 ("2%") is one the FNR alert can never see exceeded.
    ({"threshold": float("nan"), "activation": "none"}, "NaN is not a JSON value"),
    ({"threshold": float("inf"), "activation": "none"}, "Infinity is not a JSON value"),
    ({"target_fnr": 2}, "target_fnr 2 must be a rate between 0 and 1 \\(0.02 for 2%\\)"),
    ({"target_fnr": 0}, "target_fnr 0 must be a rate between 0 and 1"),
])
def test_bad_model_json_names_file_and_field(tmp_path: Path, synthetic_models: Path, change: dict[str, object],
                                             message: str) -> None:
    fields: dict[str, object] = {"version": "1", "threshold": 0.5, "output": "logits",
                                 "onnx": str(synthetic_models / "synthetic.onnx"),
                                 "tokenizer": str(synthetic_models / "tokenizer.json")}
    fields.update(change)
    fields = {k: v for k, v in fields.items() if v is not None}
    path = _write(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message) as info:
        parse_model_json(path)
    assert str(path) in info.value.message


def test_a_model_json_saved_with_a_byte_order_mark_loads(tmp_path: Path, synthetic_models: Path) -> None:
    # Windows editors save UTF-8 with a BOM, which json.loads refused ("Unexpected UTF-8 BOM").
    path = _write(tmp_path, version="1", threshold=0.5, output="logits",
                  onnx=str(synthetic_models / "synthetic.onnx"), tokenizer=str(synthetic_models / "tokenizer.json"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert parse_model_json(path).threshold == 0.5


def test_a_threshold_that_overflows_to_infinity_is_refused(tmp_path: Path, synthetic_models: Path) -> None:
    path = _write(tmp_path, version="1", threshold=0.5, output="logits", activation="none",
                  onnx=str(synthetic_models / "synthetic.onnx"), tokenizer=str(synthetic_models / "tokenizer.json"))
    path.write_text(path.read_text().replace('"threshold": 0.5', '"threshold": 1e400'))
    with pytest.raises(ConfigError, match="1e400 is out of range for a 64-bit float"):  # json.loads: inf
        parse_model_json(path)
    path.write_text(path.read_text().replace('"threshold": 1e400', '"threshold": 1' + "0" * 400))  # an integer
    with pytest.raises(ConfigError, match="threshold is out of range for a 64-bit float"):  # not OverflowError
        parse_model_json(path)


def test_unknown_fields_are_named_in_a_warning(tmp_path: Path, synthetic_models: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # "target_frn" was dropped in silence: the detector then had no target and no FNR alert.
    path = _write(tmp_path, version="1", threshold=0.5, output="logits", target_frn=0.02,
                  onnx=str(synthetic_models / "synthetic.onnx"), tokenizer=str(synthetic_models / "tokenizer.json"))
    with caplog.at_level("WARNING", logger="service.detector_config"):
        assert parse_model_json(path).target_fnr is None
    assert f"{path}: unknown field(s) target_frn, ignored" in caplog.text


def test_the_shipped_model_json_files_hold_only_known_fields(shipped_models: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="service.detector_config"):
        assert sorted(load_configs([shipped_models])) == ["deception", "injury", "sycophancy"]
    assert "unknown field" not in caplog.text


def test_duplicate_names_rejected(tmp_path: Path, synthetic_models: Path) -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        load_configs([synthetic_models, synthetic_models])


def test_disabled_detector_is_skipped(tmp_path: Path, synthetic_models: Path) -> None:
    _write(tmp_path, version="1", threshold=0.5, output="logits", enabled=False,
           onnx=str(synthetic_models / "synthetic.onnx"), tokenizer=str(synthetic_models / "tokenizer.json"))
    assert load_configs([tmp_path]) == {}


def test_a_model_json_that_repeats_a_key_is_refused(tmp_path: Path, synthetic_models: Path) -> None:
    path = _write(tmp_path)
    onnx, tokenizer = json.dumps(str(synthetic_models / "synthetic.onnx")), json.dumps(
        str(synthetic_models / "tokenizer.json"))
    path.write_text(f'{{"version": "1", "output": "logits", "activation": "none", "onnx": {onnx}, '
                    f'"tokenizer": {tokenizer}, "threshold": 0.9, "threshold": 0.1}}')
    # json.loads keeps the last of two thresholds; an editor's eye, or another tool, reads the first.
    with pytest.raises(ConfigError, match="key 'threshold' is repeated in one object") as info:
        parse_model_json(path)
    assert str(path) in info.value.message
