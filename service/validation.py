"""Request bodies -> validated values. Every error names the offending field and the limit."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from typing import Any

from .errors import TooLarge, ValidationFailed
from .keys import ID_PATTERN
from .settings import Settings
from .store import NewOutput

# Model names become Redis key parts and Prometheus label values: no '|', no whitespace.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
OUTPUT_FIELDS = frozenset({"id", "model", "prompt", "response", "detectors", "metadata", "labels"})


def parse_outputs(body: dict[str, Any], settings: Settings, detectors: Collection[str],
                  extra_fields: Collection[str] = ()) -> list[NewOutput]:
    """Validate `{"outputs": [...]}`; `detectors` are the names a client may ask for."""
    unknown = set(body) - {"outputs", *extra_fields}
    if unknown:
        raise ValidationFailed(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    items = body.get("outputs")
    if not isinstance(items, list):
        raise ValidationFailed("'outputs' must be a list of output objects")
    if not items:
        raise ValidationFailed("'outputs' is empty: send at least one output")
    if len(items) > settings.max_outputs_per_request:
        raise TooLarge(f"'outputs' has {len(items)} items; the limit is {settings.max_outputs_per_request} "
                       "per request (REDLINE_MAX_OUTPUTS_PER_REQUEST)")
    if not detectors:
        raise ValidationFailed("no detectors are configured on this server", code="no_detectors")
    parsed = [_parse_one(item, f"outputs[{n}]", settings, detectors) for n, item in enumerate(items)]
    seen: set[str] = set()
    for n, out in enumerate(parsed):
        if out.id in seen:
            raise ValidationFailed(f"outputs[{n}].id: {out.id!r} appears twice in this request")
        seen.add(out.id)
    return parsed


def whole_number(value: Any) -> int | None:
    """A JSON integer as int, or None. JSON has one number type, and JSON Schema's "integer" (the
    OpenAPI document's) admits 900.0 as it admits 900, as the labels' 0 and 1 always did; true and
    false are not numbers here, though Python counts them as ints."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_timeout_ms(body: dict[str, Any], settings: Settings) -> int:
    """`timeout_ms` for sync scoring: an integer in [1, REDLINE_MAX_SYNC_TIMEOUT_MS]."""
    value = body.get("timeout_ms")
    if value is None:
        value = settings.sync_timeout_ms
    value = whole_number(value)
    if value is None:
        raise ValidationFailed("'timeout_ms' must be an integer number of milliseconds")
    if not 1 <= value <= settings.max_sync_timeout_ms:
        raise ValidationFailed(f"'timeout_ms' must be between 1 and {settings.max_sync_timeout_ms}")
    return value


def _parse_one(item: Any, where: str, settings: Settings, detectors: Collection[str]) -> NewOutput:
    if not isinstance(item, dict):
        raise ValidationFailed(f"{where} must be an object")
    unknown = set(item) - OUTPUT_FIELDS
    if unknown:
        raise ValidationFailed(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    model = _string(item, "model", where, required=True, pattern=MODEL_PATTERN)
    response = _string(item, "response", where, required=True, limit=settings.max_text_chars)
    prompt = _string(item, "prompt", where, limit=settings.max_text_chars)
    output_id = _string(item, "id", where, pattern=ID_PATTERN) or uuid.uuid4().hex
    wanted = item.get("detectors")
    if wanted is None:
        wanted = sorted(detectors)
    elif not isinstance(wanted, list) or not wanted or not all(isinstance(d, str) for d in wanted):
        raise ValidationFailed(f"{where}.detectors must be a non-empty list of detector names")
    else:
        missing = [d for d in wanted if d not in detectors]
        if missing:
            raise ValidationFailed(f"{where}.detectors: unknown detector(s) {', '.join(missing)}; "
                                   f"available: {', '.join(sorted(detectors))}", code="unknown_detector")
        wanted = sorted(set(wanted))
    metadata = item.get("metadata")
    if metadata is None:  # absent or explicit null: no metadata
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValidationFailed(f"{where}.metadata must be an object")
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > settings.max_metadata_bytes:
        raise TooLarge(f"{where}.metadata is {size} bytes as JSON; the limit is {settings.max_metadata_bytes} "
                       "(REDLINE_MAX_METADATA_BYTES)")
    given = item.get("labels")
    if isinstance(given, dict):
        # A real detector this output is not scored with: "unknown detector" would send the client hunting.
        unscored = sorted(d for d in given if isinstance(d, str) and d in detectors and d not in wanted)
        if unscored:
            raise ValidationFailed(f"{where}.labels: detector {unscored[0]!r} is not among this output's detectors "
                                   f"({', '.join(wanted)}): add it to {where}.detectors or drop the label")
    labels = parse_label_map(given, f"{where}.labels", wanted) if given is not None else {}
    return NewOutput(id=output_id, model=model, response=response, prompt=prompt, detectors=wanted,
                     metadata=metadata, labels=labels)


def _string(item: dict[str, Any], key: str, where: str, *, required: bool = False, limit: int | None = None,
            pattern: str | None = None) -> str:
    if key not in item or item[key] is None:
        if required:
            raise ValidationFailed(f"{where}.{key} is required")
        return ""
    value = item[key]
    if not isinstance(value, str):
        raise ValidationFailed(f"{where}.{key} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise ValidationFailed(f"{where}.{key} must not be empty")
    if limit is not None and len(value) > limit:
        raise TooLarge(f"{where}.{key} has {len(value)} characters; the limit is {limit} (REDLINE_MAX_TEXT_CHARS)")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ValidationFailed(f"{where}.{key} {value[:40]!r} must match {pattern}")
    return value


def parse_label_map(body: Any, where: str, detectors: Collection[str]) -> dict[str, int]:
    """`{"injury": 1, "deception": 0}`: detector -> 0/1."""
    if not isinstance(body, dict) or not body:
        raise ValidationFailed(f"{where} must be a non-empty object of detector: 0|1")
    for detector, label in body.items():
        _check_label(detector, label, where, detectors)
    return {d: int(v) for d, v in body.items()}


def single_query_value(values: list[str], name: str) -> str | None:
    """A query parameter that takes one value (`request.args.getlist(name)`): absent -> None; given twice
    it is refused, since keeping the first or the last silently answers a question nobody asked."""
    if len(values) > 1:
        raise ValidationFailed(f"query parameter {name!r} is given {len(values)} times; give it once")
    return values[0] if values else None


def query_pair(args: Any, what: str) -> tuple[str, str]:
    """The required `?model=<m>&detector=<d>` of a per-pair read (each given once); `what` names the read."""
    model = single_query_value(args.getlist("model"), "model")
    detector = single_query_value(args.getlist("detector"), "detector")
    if not model or not detector:
        raise ValidationFailed(f"give the {what} to read as ?model=<deployed model>&detector=<detector>")
    return model, detector


def query_limit(values: list[str], default: int, most: int, setting: str = "") -> int:
    """`?limit=` (`request.args.getlist("limit")`): an integer from 1 to `most`, `default` when absent.
    `limit=` (empty) is a bad value, not an absent one; only ASCII digits, since str.isdigit() accepts
    "²", which int() then refuses (a 500)."""
    given = single_query_value(values, "limit")
    raw = str(default) if given is None else given
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= most:
        raise ValidationFailed(f"'limit' must be an integer from 1 to {most}" + (f" ({setting})" if setting else ""))
    return int(raw)


def parse_id_list(ids: list[str], settings: Settings) -> list[str]:
    """`?id=a&id=b` -> [a, b], in order, repeats dropped; at most REDLINE_MAX_OUTPUTS_PER_REQUEST given
    (counted as sent, repeats included, as the OpenAPI document's maxItems counts them)."""
    if not ids:
        raise ValidationFailed("give the outputs to read as id parameters: ?id=<id>&id=<id>")
    if len(ids) > settings.max_outputs_per_request:
        raise TooLarge(f"{len(ids)} ids; the limit is {settings.max_outputs_per_request} "
                       "(REDLINE_MAX_OUTPUTS_PER_REQUEST)")
    unique = list(dict.fromkeys(ids))
    for i in unique:
        if not re.fullmatch(ID_PATTERN, i):
            raise ValidationFailed(f"id {i[:40]!r} must match {ID_PATTERN}")
    return unique


def parse_retry(body: dict[str, Any], settings: Settings) -> list[str]:
    """`{"ids": [...]}` of POST /v1/dead-letters/retry -> the ids, in order, repeats dropped."""
    unknown = set(body) - {"ids"}
    if unknown:
        raise ValidationFailed(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValidationFailed("'ids' must be a list of output ids (strings)")
    if not ids:
        raise ValidationFailed("'ids' is empty: name the failed outputs to score again")
    return parse_id_list(ids, settings)


REVIEW_LEASE_S, MAX_REVIEW_LEASE_S = 900, 86400


def _body_pair(body: dict[str, Any], other_fields: set[str], what: str) -> tuple[str, str]:
    """The required `model` and `detector` of a request body about one review queue; any field beyond
    those and `other_fields` is refused by name."""
    unknown = set(body) - {"model", "detector"} - other_fields
    if unknown:
        raise ValidationFailed(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    model, detector = body.get("model"), body.get("detector")
    if not isinstance(model, str) or not model or not isinstance(detector, str) or not detector:
        raise ValidationFailed(f"give {what} as 'model' (a deployed model) and 'detector' (strings)")
    return model, detector


def parse_review_lease(body: dict[str, Any], settings: Settings) -> tuple[str, str, int, int]:
    """`{"model", "detector", "limit"?, "lease_s"?}` of POST /v1/review/leases -> those four."""
    model, detector = _body_pair(body, {"limit", "lease_s"}, "the queue to lease from")
    most = settings.max_outputs_per_request
    numbers = {}
    for name, default, top, setting in (("limit", 50, most, " (REDLINE_MAX_OUTPUTS_PER_REQUEST)"),
                                        ("lease_s", REVIEW_LEASE_S, MAX_REVIEW_LEASE_S, " seconds")):
        value = whole_number(body.get(name, default))
        if value is None or not 1 <= value <= top:
            raise ValidationFailed(f"'{name}' must be an integer from 1 to {top}{setting}")
        numbers[name] = value
    return model, detector, numbers["limit"], numbers["lease_s"]


def parse_review_release(body: dict[str, Any], settings: Settings) -> tuple[str, str, list[str]]:
    """`{"model", "detector", "ids"}` of POST /v1/review/leases/release -> those three."""
    model, detector = _body_pair(body, {"ids"}, "the queue whose leases to end")
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValidationFailed("'ids' must be a non-empty list of output ids (strings)")
    return model, detector, parse_id_list(ids, settings)


def parse_label_batch(body: dict[str, Any], settings: Settings,
                      detectors: Collection[str]) -> list[tuple[str, str, int]]:
    """`{"labels": [{"id", "detector", "label"}, ...]}` -> [(id, detector, label)]."""
    unknown = set(body) - {"labels"}
    if unknown:
        raise ValidationFailed(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    items = body.get("labels")
    if not isinstance(items, list) or not items:
        raise ValidationFailed("'labels' must be a non-empty list of {id, detector, label}")
    if len(items) > settings.max_labels_per_request:
        raise TooLarge(f"'labels' has {len(items)} items; the limit is {settings.max_labels_per_request} "
                       "(REDLINE_MAX_LABELS_PER_REQUEST)")
    out = []
    first: dict[tuple[str, str], tuple[int, int]] = {}  # (id, detector) -> (its first item, label)
    for n, item in enumerate(items):
        where = f"labels[{n}]"
        if not isinstance(item, dict) or set(item) != {"id", "detector", "label"}:
            raise ValidationFailed(f"{where} must be an object with exactly id, detector and label")
        if not isinstance(item["id"], str) or not re.fullmatch(ID_PATTERN, item["id"]):
            raise ValidationFailed(f"{where}.id must be an output id")
        _check_label(item["detector"], item["label"], where, detectors)
        label = int(item["label"])
        earlier = first.setdefault((item["id"], item["detector"]), (n, label))
        if earlier[1] != label:
            # Applied in order, the last would win silently: a batch that contradicts itself is a
            # client's bug, refused whole like any other invalid batch.
            raise ValidationFailed(f"{where} labels output {item['id']!r} {label} for {item['detector']}, but "
                                   f"labels[{earlier[0]}] labels it {earlier[1]}")
        out.append((item["id"], item["detector"], label))
    return out


def _check_label(detector: Any, label: Any, where: str, detectors: Collection[str]) -> None:
    if not isinstance(detector, str) or detector not in detectors:
        raise ValidationFailed(f"{where}: unknown detector {detector!r}; available: {', '.join(sorted(detectors))}",
                               code="unknown_detector")
    if isinstance(label, bool) or label not in (0, 1):
        raise ValidationFailed(f"{where}: label for {detector} must be 0 or 1, not {label!r}")
