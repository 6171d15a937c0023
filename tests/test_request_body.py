"""Request bodies: gzip within the limit, strict JSON, depth and surrogates (service.request_body)."""

import gzip

import pytest

from service.errors import BadRequest, BodyTooLarge, UnsupportedEncoding, ValidationFailed
from service.request_body import MAX_JSON_DEPTH, decompress_body, parse_json_body, require_object


def test_body_must_be_a_json_object() -> None:
    with pytest.raises(BadRequest):
        require_object(None)
    with pytest.raises(ValidationFailed):
        require_object([1])


def test_json_body_depth_limit_is_exact_and_counts_the_body_itself() -> None:
    def nested(levels: int) -> bytes:  # `levels` containers, the body object being the first
        return b'{"a": ' * levels + b"1" + b"}" * levels

    assert parse_json_body(nested(MAX_JSON_DEPTH), True)
    with pytest.raises(BadRequest, match=f"nests more than {MAX_JSON_DEPTH} levels"):
        parse_json_body(nested(MAX_JSON_DEPTH + 1), True)


def test_json_body_keeps_surrogate_pairs_and_refuses_lone_ones() -> None:
    assert parse_json_body(b'{"r": "\\ud83d\\ude00"}', True) == {"r": "\N{GRINNING FACE}"}
    with pytest.raises(ValidationFailed, match=r"^r\[1\] holds a lone"):
        parse_json_body(b'{"r": ["ok", "\\ude00\\ud83d"]}', True)  # a pair in the wrong order is two lone halves


def test_json_body_refuses_a_key_repeated_in_one_object() -> None:
    # Python keeps the last value, other parsers the first: {"injury": 1, "injury": 0} must not be read either way.
    with pytest.raises(BadRequest, match="repeats key 'injury' in one object"):
        parse_json_body(b'{"outputs": [{"model": "m", "labels": {"injury": 1, "injury": 0}}]}', True)
    with pytest.raises(BadRequest, match="repeats key 'outputs'"):
        parse_json_body(b'{"outputs": [], "outputs": []}', True)
    assert parse_json_body(b'{"a": {"k": 1}, "b": {"k": 2}}', True) == {"a": {"k": 1}, "b": {"k": 2}}


def test_json_body_needs_a_json_content_type_and_an_object() -> None:
    with pytest.raises(BadRequest, match="Content-Type: application/json"):
        parse_json_body(b"{}", False)
    with pytest.raises(ValidationFailed, match="JSON object"):
        parse_json_body(b"[1]", True)


def test_gzip_bodies_are_inflated_up_to_the_limit_and_no_further() -> None:
    body = b'{"outputs": []}'
    assert decompress_body(gzip.compress(body), "gzip", 100) == body
    assert decompress_body(gzip.compress(body), " GZIP ", 100) == body
    assert decompress_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "x-gzip", 100) == b"abcd"  # two members
    assert decompress_body(body, None, 100) == body and decompress_body(body, "identity", 100) == body
    exact = b"x" * 100
    assert decompress_body(gzip.compress(exact), "gzip", 100) == exact
    with pytest.raises(BodyTooLarge, match="exceeds 100 bytes .*once decompressed"):
        decompress_body(gzip.compress(exact + b"x"), "gzip", 100)
    with pytest.raises(BodyTooLarge, match="exceeds 100 bytes"):
        decompress_body(gzip.compress(b"ab") + gzip.compress(exact), "gzip", 100)  # the limit covers all members
    bomb = gzip.compress(b"\0" * 50_000_000)  # 49 KB that would inflate to 50 MB
    with pytest.raises(BodyTooLarge):
        decompress_body(bomb, "gzip", 1_000_000)


def test_bad_or_unknown_encodings_are_named() -> None:
    with pytest.raises(BadRequest, match="not valid gzip"):
        decompress_body(b"not gzip at all", "gzip", 100)
    with pytest.raises(BadRequest, match="truncated gzip"):
        decompress_body(gzip.compress(b"x" * 50)[:-12], "gzip", 100)
    for encoding in ("br", "deflate", "zstd"):
        with pytest.raises(UnsupportedEncoding, match=f"Content-Encoding '{encoding}' is not supported"):
            decompress_body(b"{}", encoding, 100)
