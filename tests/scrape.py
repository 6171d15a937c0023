"""For the metrics tests: a parsed `GET /metrics` body, and the texts of the `scored` fixture (conftest)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.core import Redline
from service.metrics import exposition

SCORED_TEXTS = ["blood and a broken arm", "bleeding wound", "stabbed hurt", "a calm day", "hello world", "the park"]


class Scrape:
    """One `GET /metrics` body, parsed, with the registry's sample lookup."""

    def __init__(self, core: Redline) -> None:
        self.body = exposition(core).decode()
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in text_string_to_metric_families(self.body) for s in f.samples}
        names = [line.split()[2] for line in self.body.splitlines() if line.startswith("# TYPE")]
        assert len(names) == len(set(names)), "a metric family appears twice"

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.samples.get((name, tuple(sorted((labels or {}).items()))))
