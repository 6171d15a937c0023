"""Response models of `GET /v1/monitor` (one window, several, or every pair's listing): the shape of
`Monitor.evaluate_windows`' results, for /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Rate(BaseModel):
    value: float | None
    k: int
    n: int
    wilson: list[float] | None
    clopper_pearson: list[float] | None


class NAuc(BaseModel):
    n: int
    value: float | None


class NMAuc(BaseModel):
    n: int
    m: int
    value: float | None


class Monitor(BaseModel):
    model: str
    detector: str
    version: str
    window: str
    threshold: float
    target_fnr: float | None
    labeled: int
    positives: int
    negatives: int
    auc: float | None
    n_auc: list[NAuc]
    nm_auc: list[NMAuc]
    fnr: Rate | None
    fpr: Rate
    threshold_for_target_fnr: float | None
    weighted: dict[str, Any]
    median_label_lag_s: float | None
    withheld: str | None
    scored: int
    label_coverage: float | None
    drift: dict[str, Any]


class MonitorWindows(BaseModel):
    model: str
    detector: str
    windows: list[Monitor]


class MonitorRow(BaseModel):
    model: str
    detector: str
    window: str
    labeled: int
    positives: int
    negatives: int
    auc: float | None
    n_auc: list[NAuc]
    fnr: Rate | None
    label_coverage: float | None
    withheld: str | None
    psi: float | None


class MonitorList(BaseModel):
    monitors: list[MonitorRow]
    computed_at: str = Field(description="When these numbers were computed: in the background, at most "
                                         "REDLINE_METRICS_REFRESH_S plus one refresh ago, for the configured "
                                         "windows; now for any other")
