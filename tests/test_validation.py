
import pytest

from service.errors import TooLarge, ValidationFailed
from service.settings import Settings
from service.validation import (
    parse_label_batch,
    parse_outputs,
    parse_review_lease,
    parse_timeout_ms,
)

S = Settings(max_outputs_per_request=3, max_text_chars=10, max_metadata_bytes=20)
DETS = {"injury", "deception"}


def ok(**fields: object) -> dict[str, object]:
    return {"model": "m", "response": "text", **fields}


def test_defaults_fill_in() -> None:
    [out] = parse_outputs({"outputs": [ok()]}, S, DETS)
    assert out.detectors == ["deception", "injury"] and len(out.id) == 32 and out.prompt == ""


@pytest.mark.parametrize("body, error, fragment", [
    ({"outputs": []}, ValidationFailed, "empty"),
    ({"outputs": "x"}, ValidationFailed, "must be a list"),
    ({}, ValidationFailed, "must be a list"),
    ({"outputs": [ok()] * 4}, TooLarge, "limit is 3"),
    ({"outputs": [{"model": "m"}]}, ValidationFailed, r"outputs\[0\].response is required"),
    ({"outputs": [ok(response=5)]}, ValidationFailed, "must be a string, not int"),
    ({"outputs": [ok(response="   ")]}, ValidationFailed, "must not be empty"),
    ({"outputs": [ok(response="x" * 11)]}, TooLarge, "limit is 10"),
    ({"outputs": [ok(prompt="x" * 11)]}, TooLarge, r"outputs\[0\].prompt"),
    ({"outputs": [ok(detectors=["nope"])]}, ValidationFailed, "unknown detector"),
    ({"outputs": [ok(detectors=[])]}, ValidationFailed, "non-empty list"),
    ({"outputs": [ok(metadata=[1])]}, ValidationFailed, "metadata must be an object"),
    ({"outputs": [ok(metadata={"k": "v" * 30})]}, TooLarge, "limit is 20"),
    ({"outputs": [ok(id="a b")]}, ValidationFailed, r"outputs\[0\].id"),
    ({"outputs": [ok(id="a"), ok(id="a")]}, ValidationFailed, "appears twice"),
    ({"outputs": [ok(model="bad|name")]}, ValidationFailed, r"outputs\[0\].model"),
    # `$` also matches before a final newline: a pattern must match the whole value.
    ({"outputs": [ok(model="bot\n")]}, ValidationFailed, r"outputs\[0\].model"),
    ({"outputs": [ok(id="x1\n")]}, ValidationFailed, r"outputs\[0\].id"),
    ({"outputs": [ok(respnse="typo")]}, ValidationFailed, "unknown field.*respnse"),
    ({"outputs": [ok()], "extra": 1}, ValidationFailed, "unknown field.*extra"),
    ({"outputs": [5]}, ValidationFailed, r"outputs\[0\] must be an object"),
    # A real detector, just not this output's: said so, instead of "unknown detector".
    ({"outputs": [ok(detectors=["injury"], labels={"deception": 1})]}, ValidationFailed,
     r"outputs\[0\].labels: detector 'deception' is not among this output's detectors \(injury\): "
     r"add it to outputs\[0\].detectors or drop the label"),
    ({"outputs": [ok(detectors=["injury"], labels={"nope": 1})]}, ValidationFailed, "unknown detector 'nope'"),
])
def test_bad_input_is_named(body: dict[str, object], error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        parse_outputs(body, S, DETS)


@pytest.mark.parametrize("value", [0, -1, "100", True, 10**9, 100.5, float("nan")])
def test_timeout_bounds(value: object) -> None:
    with pytest.raises(ValidationFailed, match="timeout_ms"):
        parse_timeout_ms({"timeout_ms": value}, S)


def test_timeout_default() -> None:
    assert parse_timeout_ms({}, S) == S.sync_timeout_ms


def test_integer_fields_take_json_integers_written_with_a_fraction_of_zero() -> None:
    # JSON Schema's "integer", the OpenAPI document's, admits 900.0: a fuzzer's valid request was refused.
    assert parse_timeout_ms({"timeout_ms": 100.0}, S) == 100
    body = {"model": "m", "detector": "injury", "limit": 2.0, "lease_s": 900.0}
    assert parse_review_lease(body, S) == ("m", "injury", 2, 900)
    with pytest.raises(ValidationFailed, match="'lease_s' must be an integer"):
        parse_review_lease({**body, "lease_s": 900.5}, S)
    with pytest.raises(ValidationFailed, match="'limit' must be an integer"):
        parse_review_lease({**body, "limit": True}, S)


def test_a_label_id_ending_in_a_newline_is_refused() -> None:
    with pytest.raises(ValidationFailed, match=r"labels\[0\].id must be an output id"):
        parse_label_batch({"labels": [{"id": "x1\n", "detector": "injury", "label": 1}]}, S, DETS)


def test_a_label_batch_that_contradicts_itself_is_refused() -> None:
    def item(i: str, detector: str, label: int) -> dict[str, object]:
        return {"id": i, "detector": detector, "label": label}
    contradiction = r"labels\[2\] labels output 'a' 0 for injury, but labels\[0\] labels it 1"
    with pytest.raises(ValidationFailed, match=contradiction):
        parse_label_batch({"labels": [item("a", "injury", 1), item("b", "injury", 0), item("a", "injury", 0)]},
                          S, DETS)
    # The same label twice, or one output's two detectors, is no contradiction.
    same = [item("a", "injury", 1), item("a", "injury", 1), item("a", "deception", 0)]
    assert parse_label_batch({"labels": same}, S, DETS) == [("a", "injury", 1), ("a", "injury", 1),
                                                            ("a", "deception", 0)]


def test_label_detector_of_any_json_type_is_a_422_not_a_crash() -> None:
    # Found by schemathesis: an object as detector raised TypeError (unhashable) -> 500.
    for detector in ({}, [], 3, None):
        with pytest.raises(ValidationFailed, match="unknown detector"):
            parse_label_batch({"labels": [{"id": "a", "detector": detector, "label": 1}]}, S, DETS)
