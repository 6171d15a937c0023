"""Generate deploy/grafana/dashboards/redline.json (run after editing; a test checks they match).

    python deploy/grafana/make_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "redline.json"
SEL = 'model=~"$model", detector=~"$detector"'
WIN = f'{SEL}, window="$window"'


def panel(pid: int, title: str, targets: list[tuple[str, str]], x: int, y: int, unit: str = "short",
          description: str = "", w: int = 12, h: int = 8, max_: float | None = None) -> dict:
    defaults: dict = {"unit": unit}
    if max_ is not None:
        defaults.update({"min": 0, "max": max_})
    return {
        "id": pid, "type": "timeseries", "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def one(gauge: str) -> str:
    """A gauge by (model, detector), once: every API replica exports the same value (see `once`)."""
    return f"max by (model, detector) ({gauge})"


def once(counter: str) -> str:
    """Per-second rate of a counter Redline keeps in Redis, by (model, detector). Every API replica
    exports the same totals under its own `instance` label: `max` counts them once, where `sum`
    would multiply the rate by the number of replicas."""
    return f"max by (model, detector) (rate({counter}{{{SEL}}}[5m]))"


def variable(name: str, query: str) -> dict:
    return {"name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "includeAll": True,
            "multi": True, "current": {"text": "All", "value": "$__all"}, "allValue": ".*"}


PANELS = [
    panel(1, "High-sensitivity N-AUC",
          [(f"max by (model, detector, n) (redline_n_auc{{{WIN}}})", "{{model}} {{detector}} N={{n}}")], 0, 0,
          description="P(N random positives all outscore a random negative). N=1 is the ROC AUC.", max_=1),
    panel(2, "False-negative rate with 95% Wilson band, and target", [
        (one(f"redline_fnr_ratio{{{WIN}}}"), "{{model}} {{detector}} FNR"),
        (one(f'redline_fnr_lower_ratio{{{WIN}, interval="wilson"}}'), "{{model}} {{detector}} lower"),
        (one(f'redline_fnr_upper_ratio{{{WIN}, interval="wilson"}}'), "{{model}} {{detector}} upper"),
        ('max by (detector) (redline_detector_target_fnr_ratio{detector=~"$detector"})', "{{detector}} target"),
    ], 12, 0, unit="percentunit",
        description="The FNR alert fires when the lower bound stays above the target."),
    panel(3, "(N,M)-AUC",
          [(f"max by (model, detector, n, m) (redline_nm_auc{{{WIN}}})", "{{model}} {{detector}} N={{n}} M={{m}}")],
          0, 8, max_=1),
    panel(4, "Audit-weighted FNR and FPR", [
        (one(f"redline_fnr_weighted_ratio{{{WIN}}}"), "{{model}} {{detector}} FNR (audit-weighted)"),
        (one(f"redline_fpr_ratio{{{WIN}}}"), "{{model}} {{detector}} FPR"),
    ], 12, 8, unit="percentunit"),
    panel(5, "Label coverage", [(one(f"redline_label_coverage_ratio{{{WIN}}}"), "{{model}} {{detector}}")], 0, 16,
          unit="percentunit", description="Labeled / scored outputs in the window."),
    panel(6, "Labeled positives and negatives in window, and the review queue", [
        (one(f"redline_window_positives{{{WIN}}}"), "{{model}} {{detector}} positives"),
        (one(f"redline_window_negatives{{{WIN}}}"), "{{model}} {{detector}} negatives"),
        (one(f"redline_review_waiting{{{SEL}}}"), "{{model}} {{detector}} awaiting review"),
    ], 12, 16, description="awaiting review: flagged or audit-sampled outputs with no label yet (GET /v1/review)."),
    panel(7, "Flagged rate", [(
        f"{once('redline_outputs_flagged_total')} / {once('redline_outputs_scored_total')}", "{{model}} {{detector}}")],
        0, 24, unit="percentunit"),
    panel(8, "Score drift (PSI and KS vs the previous span)", [
        (one(f"redline_score_psi{{{WIN}}}"), "{{model}} {{detector}} PSI"),
        (one(f"redline_score_ks{{{WIN}}}"), "{{model}} {{detector}} KS"),
    ], 12, 24),
    panel(9, "Throughput", [
        (f"sum by (detector) ({once('redline_outputs_scored_total')})", "scored/s {{detector}}"),
        ("sum by (route) (rate(redline_http_requests_total[5m]))", "requests/s {{route}}"),
        (f"sum by (detector) ({once('redline_labels_total')})", "labels/s {{detector}}"),
        # Counted per model only (an output fails as a whole); `max` again counts the replicas once.
        ('sum(max by (model) (rate(redline_outputs_failed_total{model=~"$model"}[5m])))', "failed/s"),
        ('sum by (reason) (max by (model, reason) (rate(redline_outputs_requeued_total{model=~"$model"}[5m])))',
         "requeued/s {{reason}}"),
    ], 0, 32, unit="reqps", description="failed/s: outputs that could not be scored (GET /v1/dead-letters "
                                        "says why; POST /v1/dead-letters/retry once fixed). requeued/s: "
                                        "abandoned, a worker died or stopped mid-batch (memory?); handoff, "
                                        "a worker without one of an output's detectors passed it on (a rollout)."),
    panel(10, "Latency percentiles", [
        ("histogram_quantile(0.5, sum by (le) (rate(redline_http_request_duration_seconds_bucket[5m])))", "API p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(redline_http_request_duration_seconds_bucket[5m])))", "API p99"),
        ("histogram_quantile(0.5, sum by (le) (rate(redline_inference_duration_seconds_bucket[5m])))", "inference p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(redline_inference_duration_seconds_bucket[5m])))",
         "inference p99"),
        ("histogram_quantile(0.99, sum by (le) (rate(redline_queue_wait_seconds_bucket[5m])))", "queue wait p99"),
    ], 12, 32, unit="s"),
    panel(11, "Queue depth and pending outputs", [
        ("max by (priority) (redline_queue_depth)", "jobs queued ({{priority}})"),
        ("max(redline_outputs_pending)", "outputs pending"),
        ("max by (tenant) (redline_tenant_outputs_pending)", "outputs pending ({{tenant}})"),
    ], 0, 40, description="Outputs pending by tenant: what REDLINE_MAX_PENDING_PER_TENANT bounds, where set."),
    panel(12, "Workers alive, batch size and Redis", [
        ("max(redline_workers_alive)", "workers alive"),
        ('max by (detector, version) (redline_detector_workers{detector=~"$detector"})',
         "workers with {{detector}} {{version}}"),
        # min: one API replica with other files is enough to show 0.
        ('min by (detector, version) (redline_detector_files_match{detector=~"$detector"})',
         "API files match {{detector}} {{version}}"),
        ('max by (detector, version) (redline_detector_worker_files{detector=~"$detector"})',
         "sets of files for {{detector}} {{version}}"),
        ("histogram_quantile(0.5, sum by (le) (rate(redline_batch_size_bucket[5m])))", "batch size p50"),
        # Responses past the model's max_length, each scored in extra windows (workers/windows.py).
        ('sum(rate(redline_output_windows_count[5m])) - sum(rate(redline_output_windows_bucket{le="0.0"}[5m]))',
         "long responses/s"),
        ("max(redline_redis_up)", "Redis up"),
    ], 12, 40, description="Workers with a detector: live workers that have it loaded, per version (0: outputs "
                           "asking for it fail). API files match 0: an API's files for that version differ from the "
                           "workers' (RedlineDetectorFilesDiffer); sets of files above 1: workers score one "
                           "version with two models' files (RedlineDetectorVersionMixed). Long responses: outputs "
                           "past the model's max_length, scored in extra windows (more rows each). While Redis is "
                           "unreachable (Redis up 0) the Redis-backed series, workers alive among them, are absent: "
                           "the API cannot read them."),
    panel(13, "Detector versions served", [
        ('max by (detector, version) (redline_detector_info{detector=~"$detector"})', "{{detector}} {{version}}"),
    ], 0, 48, w=24, h=5, description="Quality windows are per detector version: where a version's line starts, "
                                     "its N-AUC and FNR start again and stay withheld until enough labels arrive."),
    panel(14, "Quality gauges: age and refresh time", [
        ("time() - max(redline_quality_computed_timestamp_seconds)", "age"),
        ("max(redline_quality_compute_duration_seconds)", "refresh duration"),
    ], 0, 53, unit="s", w=24, h=6, description="The quality panels above show the latest background refresh "
                                               "(REDLINE_METRICS_REFRESH_S): their lag is at most this age."),
]

DASHBOARD = {
    "uid": "redline-overview", "title": "Redline: detector quality and service health", "schemaVersion": 39,
    "version": 1, "editable": True, "tags": ["redline"], "timezone": "browser", "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
        variable("model", "label_values(redline_outputs_scored_total, model)"),
        variable("detector", "label_values(redline_outputs_scored_total, detector)"),
        {"name": "window", "type": "custom", "query": "24h,1h,7d,count:1000", "multi": False,
         "current": {"text": "24h", "value": "24h"},
         "options": [{"text": w, "value": w, "selected": w == "24h"} for w in ("24h", "1h", "7d", "count:1000")]},
    ]},
    "panels": PANELS,
}


def render() -> str:
    return json.dumps(DASHBOARD, indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
