"""Request bodies through a real gunicorn (service.request_body, service.validation): what is refused, with
which 4xx, and that a refused body stores nothing."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from .stack import Stack, wait_scored


@pytest.mark.parametrize("body, status, code, fragment", [
    ({"outputs": []}, 422, "validation_failed", "empty"),
    ({"outputs": [{"model": "m"}]}, 422, "validation_failed", "outputs[0].response is required"),
    ({"outputs": [{"model": "m", "response": 3}]}, 422, "validation_failed", "must be a string"),
    ({"outputs": [{"model": "m", "response": "x", "detectors": ["nope"]}]}, 422, "unknown_detector", "nope"),
    ({"outputs": [{"model": "m", "response": "x"}] * 51}, 422, "too_large", "limit is 50"),
    ({"outputs": [{"model": "m", "response": "x" * 1001}]}, 422, "too_large", "limit is 1000"),
    ({"outputs": [{"response": "x" * 1000, "model": "m"}] * 50, "pad": "y" * 200_000}, 413, "request_entity_too_large",
     "exceeds 200000 bytes"),
    ([1, 2], 422, "validation_failed", "JSON object"),
])
def test_bad_input_gets_a_json_4xx_and_stores_nothing(stack: Stack, body: object, status: int, code: str,
                                                      fragment: str) -> None:
    before = stack.our_keys()
    for path in ("/v1/outputs", "/v1/score"):
        r = stack.post(path, body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and fragment in error["message"]
    assert stack.our_keys() == before


def test_not_json_is_400(stack: Stack) -> None:
    r = requests.post(stack.base + "/v1/outputs", data="{not json", headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(stack.base + "/v1/outputs", data="model=m", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


# Bodies Python's json module takes but JSON (or UTF-8, or Redis) does not: each was a 500, or, for
# NaN and overflowing numbers, stored and then served back as invalid JSON.
OUT = '{"outputs": [{"model": "m", "response": %s, "metadata": %s}]}'


NOT_JSON_BODIES = [
    (OUT % ('"ok"', '{"k": NaN}'), 400, "NaN is not a JSON value"),
    (OUT % ('"ok"', '{"k": -Infinity}'), 400, "-Infinity is not a JSON value"),
    (OUT % ('"ok"', '{"k": 1e400}'), 400, "out of range"),
    (OUT % ('"ok"', '{"k": 1%s}' % ("0" * 5000)), 400, "is not valid JSON"),
    (OUT % ('"ok"', '{"a": ' * 5000 + "1" + "}" * 5000), 400, "nests more than 32 levels"),
    (OUT % ('"ok"', '{"a": ' * 30 + "1" + "}" * 30), 400, "nests more than 32 levels (at outputs[0].metadata.a"),
    (OUT % ('"broken \\ud800 pair"', "{}"), 422, "outputs[0].response holds a lone UTF-16 surrogate"),
    (OUT % ('"ok"', '{"\\udfff": 1}'), 422, "outputs[0].metadata: a key holds a lone UTF-16 surrogate"),
    ('{"outputs": [{"model": "m", "response": "caf\xe9"}]}'.encode("latin-1"), 400, "not UTF-8"),
    ("", 400, "is not valid JSON"),
]


@pytest.mark.parametrize("path", ["/v1/outputs", "/v1/score"])
@pytest.mark.parametrize("body, status, fragment", NOT_JSON_BODIES)
def test_json_that_python_accepts_but_json_does_not_is_a_4xx_naming_it_and_stores_nothing(
        stack: Stack, path: str, body: str | bytes, status: int, fragment: str) -> None:
    before = stack.our_keys()
    r = requests.post(stack.base + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == ("invalid_json" if status == 400 else "validation_failed")
    assert fragment in error["message"], error
    assert stack.our_keys() == before


def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_content_length(stack: Stack) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: requests sends a generator chunked
        yield b'{"outputs": [{"model": "m", "response": "'
        yield from (b"x" * 10_000 for _ in range(30))  # 300 kB, the limit being 200 kB
        yield b'"}]}'

    before = stack.our_keys()
    r = requests.post(stack.base + "/v1/outputs", data=body(), headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413 and "exceeds 200000 bytes" in r.json()["error"]["message"], r.text
    small = [b'{"outputs": [{"model": "m", "response": "chunked and small"}]}']
    assert requests.post(stack.base + "/v1/outputs", data=iter(small), headers={"Content-Type": "application/json"},
                         timeout=30).status_code == 202
    assert stack.our_keys() == before + 1


def test_label_bodies_get_the_same_json_checks(stack: Stack) -> None:
    r = requests.put(stack.base + "/v1/outputs/x/labels", data='{"injury": NaN}',
                     headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    r = requests.post(stack.base + "/v1/labels", data='{"labels": ' + "[" * 40 + "]" * 40 + "}",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "nests more than 32" in r.json()["error"]["message"]


def test_deepest_allowed_metadata_and_surrogate_pairs_round_trip(stack: Stack) -> None:
    deep: object = "leaf \N{GRINNING FACE}"
    for _ in range(29):  # body > outputs > output > metadata: 29 more levels reach the limit of 32
        deep = {"a": deep}
    oid = "deep-" + uuid.uuid4().hex[:6]
    # ensure_ascii escapes the emoji as a surrogate pair, which is valid JSON and must stay accepted.
    body = json.dumps({"outputs": [{"id": oid, "model": "m", "response": "ok \N{GRINNING FACE}", "metadata": deep}]})
    assert "\\ud83d\\ude00" in body
    r = requests.post(stack.base + "/v1/outputs", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 202, r.text
    got = stack.get(f"/v1/outputs/{oid}").json()
    assert got["metadata"] == deep and got["response"] == "ok \N{GRINNING FACE}"


def test_gzip_request_bodies(stack: Stack) -> None:
    oid = "gz-" + uuid.uuid4().hex[:8]
    body = json.dumps({"outputs": [{"id": oid, "model": "m", "response": "hello there", "detectors": ["injury"]}]})
    sent = requests.post(stack.base + "/v1/outputs", data=gzip.compress(body.encode()), timeout=30,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert sent.status_code == 202, sent.text
    assert wait_scored(stack, oid)["response"] == "hello there"
    # Inflated, the body is held to REDLINE_MAX_BODY_BYTES (200,000 here) like any other, before anything is stored.
    big = json.dumps({"outputs": [{"model": "m", "response": "x" * 900} for _ in range(50)] * 5}).encode()
    before = stack.our_keys()
    for payload, encoding, status, fragment in [
        (gzip.compress(big), "gzip", 413, "once decompressed"),
        (b"\x1f\x8b not really", "gzip", 400, "not valid gzip"),
        (body.encode(), "br", 415, "Content-Encoding 'br' is not supported"),
    ]:
        r = requests.post(stack.base + "/v1/outputs", data=payload, timeout=30,
                          headers={"Content-Type": "application/json", "Content-Encoding": encoding})
        assert r.status_code == status and fragment in r.json()["error"]["message"], (encoding, r.text)
    assert stack.our_keys() == before


def test_a_wrong_method_is_a_405_that_says_what_is_allowed(stack: Stack) -> None:
    r = requests.delete(stack.base + "/v1/labels", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS", "POST"}
    assert r.json()["error"]["message"] == "DELETE is not allowed on /v1/labels; allowed: GET, HEAD, OPTIONS, POST"
