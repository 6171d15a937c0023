"""Request and response models of the HTTP API, the source of /openapi.json.

Validation itself is in `validation.py` (it names every problem precisely); these models describe
the same contract, and schemathesis checks the running API against the document built from them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .keys import ID_PATTERN
from .validation import MAX_REVIEW_LEASE_S, MODEL_PATTERN, REVIEW_LEASE_S

Label = Literal[0, 1]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputIn(Strict):
    id: str | None = Field(None, pattern=ID_PATTERN, description="Client id; generated when absent")
    model: str = Field(pattern=MODEL_PATTERN, description="The deployed model that produced the output")
    response: str = Field(min_length=1, pattern=r"\S", description="The text to score")
    prompt: str | None = Field(None, description="Context the detectors may use (sycophancy needs it)")
    detectors: list[str] | None = Field(None, min_length=1, description="Default: every detector")
    metadata: dict[str, Any] | None = None
    labels: dict[str, Label] | None = Field(None, min_length=1, description="Ground truth known at submit time")


class SubmitRequest(Strict):
    outputs: list[OutputIn] = Field(min_length=1)


class ScoreRequest(SubmitRequest):
    timeout_ms: int | None = Field(None, ge=1, description="How long to wait for scores")


class Queued(BaseModel):
    id: str
    status: Literal["queued", "scored", "failed"]
    url: str


class SubmitResponse(BaseModel):
    outputs: list[Queued]


class DetectorScore(BaseModel):
    score: float
    flagged: bool
    threshold: float
    version: str
    span: list[int] | None = Field(None, min_length=2, max_length=2, description=(
        "Only for a response past the detector's max_length whose score came from one of its windows: "
        "[start, end) characters (code points) of the response that window read"))


class Batch(BaseModel):
    id: str
    size: int
    worker: str
    session_calls: list[int]


class OutputRecord(BaseModel):
    id: str
    model: str
    status: Literal["queued", "scored", "failed"]
    scores: dict[str, DetectorScore]
    created_at: str | None
    scored_at: str | None
    detectors: list[str]
    prompt: str
    response: str
    metadata: dict[str, Any]
    labels: dict[str, Label]
    labeled_by: dict[str, str] = Field(description="By detector, the key id (`redline keys list`) that gave the "
                                                   "label in force; empty without API keys")
    audit: bool
    error: str | None = None
    batch: Batch | None = None


class OutputList(BaseModel):
    outputs: list[OutputRecord] = Field(description="The outputs found, in the order asked")
    missing: list[str] = Field(description="Ids asked for that are not (or no longer) stored")


class ReviewItem(OutputRecord):
    reason: Literal["flagged", "audit"] = Field(description="Flagged by this detector, or picked for the audit "
                                                            "sample of what no detector flagged")
    leased_until: str | None = Field(description="When a reviewer's lease on it ends (POST /v1/review/leases); "
                                                 "null if nobody holds it")
    leased_by: str | None = Field(description="The key id (`redline keys list`) whose lease holds it; null if "
                                              "nobody holds it, or without API keys")


class ReviewQueue(BaseModel):
    model: str
    detector: str
    waiting: int = Field(description="Outputs awaiting this detector's label in all (this page included)")
    outputs: list[ReviewItem] = Field(description="The oldest waiting, oldest first")


class ReviewLeaseRequest(Strict):
    model: str = Field(min_length=1, description="The deployed model whose queue to lease from")
    detector: str
    limit: int = Field(50, ge=1, description="At most this many outputs")
    lease_s: int = Field(REVIEW_LEASE_S, ge=1, le=MAX_REVIEW_LEASE_S,
                         description="Seconds until unlabeled outputs return to the queue")


class ReviewLease(ReviewQueue):
    lease_s: int
    leased_until: str | None = Field(description="When these outputs return to the queue if still unlabeled")
    outputs: list[ReviewItem] = Field(description="The oldest waiting outputs no other lease holds, now leased to "
                                                  "the caller; fewer than `limit` (or none) when others hold the rest")


class ReviewReleaseRequest(Strict):
    model: str = Field(min_length=1)
    detector: str
    ids: list[str] = Field(min_length=1, description="Leased outputs to hand out again (repeats count once)")


class ReviewRelease(BaseModel):
    released: list[str] = Field(description="Ids whose lease ended: the next lease hands them out")
    not_leased: list[str] = Field(description="Ids no lease held (lapsed, labeled, never leased, or not found)")


class Deleted(BaseModel):
    id: str
    deleted: Literal[True]

class ScoreResponse(BaseModel):
    outputs: list[OutputRecord]
    pending: list[Queued] | None = None


class LabelItem(Strict):
    id: str = Field(pattern=ID_PATTERN)
    detector: str
    label: Label


class LabelBatch(Strict):
    labels: list[LabelItem] = Field(min_length=1)


class LabelResult(BaseModel):
    id: str
    detector: str
    label: Label
    result: Literal["new", "changed", "unchanged"]


class LabelBatchResponse(BaseModel):
    labels: list[LabelResult]
    new: int
    changed: int
    unchanged: int


class LabeledOutput(BaseModel):
    id: str
    label: Label
    score: float
    flagged: bool | None = Field(description="As stored with the score (null if the record has expired)")
    weight: float = Field(description="Audit design weight: 1 flagged, 1/audit rate audit-sampled, 0 neither")
    created_at: str | None
    labeled_at: str | None
    labeled_by: str | None = Field(description="The key id (`redline keys list`) that gave this label; null "
                                               "without API keys, or if the record has expired")
    prompt: str | None
    response: str | None
    metadata: dict[str, Any] | None


class LabeledPage(BaseModel):
    model: str
    detector: str
    version: str
    window: str | None
    outputs: list[LabeledOutput] = Field(description="Oldest first")
    next: str | None = Field(description="Cursor of the next page (pass as `cursor`); null on the last page")

class LabelState(BaseModel):
    label: Label
    result: Literal["new", "changed", "unchanged"]


class PutLabelsResponse(BaseModel):
    id: str
    labels: dict[str, LabelState]


class Detector(BaseModel):
    name: str
    version: str
    threshold: float
    target_fnr: float | None
    description: str
    input: Literal["response", "prompt_response"]
    max_length: int
    long_text: Literal["truncate", "windows"] = Field(
        description="What a response past max_length gets: truncated, or also scored in windows (the highest counts)")
    window_tokens: int | None = Field(description="Response tokens per window with long_text windows; null: truncated")
    workers: dict[str, int] = Field(description="Live scoring workers that have this detector loaded, by the "
                                                "version they serve; empty: outputs asking for it fail")
    files_match: bool | None = Field(description="Whether this API's files for the version are those workers "
                                                 "score it with (null: no worker has claimed it yet)")
    worker_files: dict[str, dict[str, int]] = Field(
        description="By version, then the first 16 hex digits of the files' fingerprint, how many live workers "
                    "score it with those files; two under one version mix two models' scores")


class DetectorsResponse(BaseModel):
    detectors: list[Detector]


class DeadOutput(BaseModel):
    id: str
    model: str
    status: str | None
    error: str | None
    failed_at: str | None


class DeadJob(BaseModel):
    id: str
    queue: str
    error: str | None
    output_ids: list[str]
    failed_at: str | None


class DeadLetters(BaseModel):
    outputs: list[DeadOutput]
    next: str | None
    jobs: list[DeadJob]


class RetryRequest(Strict):
    ids: list[str] = Field(min_length=1, description="Failed outputs to score again (repeats count once)")


class RetrySkipped(BaseModel):
    id: str
    status: Literal["queued", "scored"] = Field(description="Not failed, so left as it is")


class RetryResponse(BaseModel):
    requeued: list[str] = Field(description="Failed outputs queued for scoring again, in the order asked")
    skipped: list[RetrySkipped]
    missing: list[str] = Field(description="Ids not stored: never submitted, another tenant's, or expired")


# What proxies and tracers send as X-Request-ID (nginx's $request_id, UUIDs, AWS trace ids) and is safe
# to echo in a header and write to a log line.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:=+/-]{1,128}$"


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str = Field(description="This request's id, also in the X-Request-ID response header (the "
                                        "client's own X-Request-ID when it sent a well-formed one)")


class Error(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    redis: str
    workers_alive: int
    queue_depth: int | None = None
