"""The quality gauges of monitor responses, one set per (model, detector, window): what
`quality_snapshot` renders off the scrape path, and `/metrics` serves from Redis."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class QualityCollector(Collector):
    """The quality gauges of monitor responses (`Monitor.evaluate_windows`), one set per (model, detector,
    window): what `quality_snapshot` renders."""

    def __init__(self, results: Sequence[dict[str, Any]]) -> None:
        self.results = results

    def collect(self) -> Iterator[Any]:
        base = ["model", "detector", "window"]
        g = {
            "positives": GaugeMetricFamily("redline_window_positives", "Labeled positives in window", labels=base),
            "negatives": GaugeMetricFamily("redline_window_negatives", "Labeled negatives in window", labels=base),
            "n_auc": GaugeMetricFamily("redline_n_auc", "N-AUC: P(N random positives all outscore a negative)",
                                       labels=[*base, "n"]),
            "nm_auc": GaugeMetricFamily("redline_nm_auc", "(N,M)-AUC: P(N positives all outscore M negatives)",
                                        labels=[*base, "n", "m"]),
            "fnr": GaugeMetricFamily("redline_fnr_ratio", "False-negative rate at the threshold", labels=base),
            "fnr_lower": GaugeMetricFamily("redline_fnr_lower_ratio", "Lower bound of the 95% FNR interval",
                                           labels=[*base, "interval"]),
            "fnr_upper": GaugeMetricFamily("redline_fnr_upper_ratio", "Upper bound of the 95% FNR interval",
                                           labels=[*base, "interval"]),
            "fnr_weighted": GaugeMetricFamily("redline_fnr_weighted_ratio", "Audit-weighted (IPW) FNR", labels=base),
            "fpr": GaugeMetricFamily("redline_fpr_ratio", "False-positive rate at the threshold", labels=base),
            "coverage": GaugeMetricFamily("redline_label_coverage_ratio", "Labeled / scored outputs", labels=base),
            "lag": GaugeMetricFamily("redline_label_lag_seconds", "Median output-to-label delay", labels=base),
            "psi": GaugeMetricFamily("redline_score_psi", "Score PSI against the previous span", labels=base),
            "ks": GaugeMetricFamily("redline_score_ks", "Score KS statistic against the previous span", labels=base),
        }
        for q in self.results:
            labels = [q["model"], q["detector"], q["window"]]
            g["positives"].add_metric(labels, q["positives"])
            g["negatives"].add_metric(labels, q["negatives"])
            for entry in q["n_auc"]:
                _maybe(g["n_auc"], [*labels, str(entry["n"])], entry["value"])
            for entry in q["nm_auc"]:
                _maybe(g["nm_auc"], [*labels, str(entry["n"]), str(entry["m"])], entry["value"])
            if q["fnr"]:
                _maybe(g["fnr"], labels, q["fnr"]["value"])
                for interval in ("wilson", "clopper_pearson"):
                    bounds = q["fnr"][interval]
                    if bounds:
                        g["fnr_lower"].add_metric([*labels, interval], bounds[0])
                        g["fnr_upper"].add_metric([*labels, interval], bounds[1])
            _maybe(g["fnr_weighted"], labels, q["weighted"]["fnr"])
            _maybe(g["fpr"], labels, q["fpr"]["value"])
            _maybe(g["coverage"], labels, q["label_coverage"])
            _maybe(g["lag"], labels, q["median_label_lag_s"])
            _maybe(g["psi"], labels, q["drift"]["psi"])
            _maybe(g["ks"], labels, q["drift"]["ks"])
        yield from g.values()


def _maybe(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    """Withheld or undefined metrics are absent series, never 0 (an alert must not fire on 'no data')."""
    if value is not None:
        family.add_metric(labels, value)
