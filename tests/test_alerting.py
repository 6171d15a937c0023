"""Shipped Prometheus rules, Alertmanager config and Grafana dashboard: unit-tested with promtool and
amtool, then end to end with a real Prometheus (Debian package) scraping a running Redline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from redis import Redis

from .procs import ROOT, Proc, free_port, redline_env, start_api, start_worker, wait_for

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: the test command installs Debian's prometheus packages (tests/run)"
    return path


def test_rules_are_valid_and_pass_their_unit_tests() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    config = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=RULES.parent,
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_runbook_and_a_firing_and_a_quiet_test() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((RULES.parent / "alerts_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for rule in rules:
        assert len(rule["annotations"].get("runbook", "")) > 40, rule["alert"]
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} never tested firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} never tested quiet"


def test_alertmanager_example_is_valid() -> None:
    amtool = _tool("amtool")
    r = subprocess.run([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_json_is_generated_from_code() -> None:
    generated = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "make_dashboard.py")], capture_output=True,
                               text=True, cwd=ROOT)
    assert generated.returncode == 0
    assert json.loads((DEPLOY / "grafana" / "dashboards" / "redline.json").read_text())["uid"] == "redline-overview"
    diff = subprocess.run(["git", "diff", "--exit-code", "--", "deploy/grafana/dashboards/redline.json"], cwd=ROOT,
                          capture_output=True, text=True)
    assert diff.returncode == 0, "redline.json differs from make_dashboard.py's output: regenerate and commit it"


def test_dashboard_counts_each_output_once_with_two_api_replicas(tmp_path: Path) -> None:
    # Every API replica exports the Redis-held counters; `sum by (detector)` over them showed twice
    # the real scoring rate with two replicas. The dashboard's own queries, evaluated by promtool.
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_dashboard", DEPLOY / "grafana" / "make_dashboard.py")
    assert spec and spec.loader
    dashboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard)
    queries = {(p["title"], t["legendFormat"]): t["expr"].replace("$model", ".*").replace("$detector", ".*")
               .replace("$window", "24h") for p in dashboard.PANELS for t in p["targets"]}
    series = {"redline_outputs_scored_total": "0+60x20", "redline_outputs_flagged_total": "0+30x20",
              "redline_labels_total": "0+6x20"}
    inputs = [{"series": f'{name}{{job="redline",instance="{i}",model="bot",detector="injury"}}', "values": values}
              for name, values in series.items() for i in "ab"]
    inputs += [{"series": f'redline_detector_target_fnr_ratio{{job="redline",instance="{i}",detector="injury"}}',
                "values": "0.02x20"} for i in "ab"]
    inputs += [{"series": f'redline_n_auc{{job="redline",instance="{i}",model="bot",detector="injury",window="24h",'
                          f'n="5"}}', "values": "0.93x20"} for i in "ab"]
    inputs += [{"series": f'redline_workers_alive{{job="redline",instance="{i}"}}', "values": "2x20"} for i in "ab"]
    inputs += [{"series": f'redline_outputs_failed_total{{job="redline",instance="{i}",model="bot"}}',
                "values": "0+3x20"} for i in "ab"]
    fnr_panel = "False-negative rate with 95% Wilson band, and target"
    expected = {("Throughput", "scored/s {{detector}}"): ('{detector="injury"}', 1.0),
                ("Throughput", "labels/s {{detector}}"): ('{detector="injury"}', 0.1),
                ("Throughput", "failed/s"): ("{}", 0.05),
                ("Flagged rate", "{{model}} {{detector}}"): ('{model="bot", detector="injury"}', 0.5),
                (fnr_panel, "{{detector}} target"): ('{detector="injury"}', 0.02),
                # Gauges: one line per model and detector (it was one per replica, each legend twice).
                ("High-sensitivity N-AUC", "{{model}} {{detector}} N={{n}}"):
                    ('{model="bot", detector="injury", n="5"}', 0.93),
                ("Workers alive, batch size and Redis", "workers alive"): ("{}", 2.0)}
    case = {"interval": "1m", "input_series": inputs,
            "promql_expr_test": [{"expr": queries[target], "eval_time": "10m",
                                  "exp_samples": [{"labels": labels, "value": value}]}
                                 for target, (labels, value) in expected.items()]}
    (tmp_path / "dashboard_test.yml").write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                                                                 "tests": [case]}))
    test = subprocess.run([_tool("promtool"), "test", "rules", "dashboard_test.yml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


# ---------------------------------------------------------------- end to end with a real Prometheus

CANDIDATE_INJURED = [
    "He was stabbed in the chest and bled heavily before the ambulance arrived.",
    "She fractured her skull in the fall and is in intensive care.",
    "The driver was critically injured when the truck rolled over.",
    "I slipped on the rocks and broke my wrist; there was blood everywhere.",
    "The worker lost three fingers in the machine.",
    "A teenage hiker broke a leg in two places in a rock slide on the trail.",
    "Paramedics treated the cyclist for a head injury after the collision with a bus."]
HARMLESS = ["Preheat the oven to 180 degrees.", "The meeting moved to Thursday.", "Our revenue grew eight percent.",
            "Water the tomatoes every other day.", "The train leaves from platform four."]


def split_by_detector(shipped_models: Path) -> tuple[list[str], list[str]]:
    """The test is about alerting, not model quality: take the positives the shipped detector catches
    (healthy traffic) and harmless texts it scores below threshold (labeled 1, they are misses)."""
    from service.detector_config import load_configs
    from workers.detector import load_detectors

    det = load_detectors(load_configs([shipped_models]), ["CPUExecutionProvider"])["injury"]
    caught = [t for t, s in zip(CANDIDATE_INJURED, det.predict([("", t) for t in CANDIDATE_INJURED]), strict=True)
              if s >= det.threshold]
    below = [t for t, s in zip(HARMLESS, det.predict([("", t) for t in HARMLESS]), strict=True) if s < det.threshold]
    assert len(caught) >= 4 and len(below) == len(HARMLESS)
    return caught, below


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:  # the shipped expressions, with test-sized durations
                if "for" in rule:
                    rule["for"] = "2s"
                if "keep_firing_for" in rule:
                    rule["keep_firing_for"] = "5s"
        (tmp / "alerts.yml").write_text(yaml.safe_dump(rules))
        config = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config.pop("alerting", None)
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = Proc([_tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                         {"PATH": "/usr/bin:/bin"}, tmp / "prometheus.log")

        def ready() -> bool:
            try:
                return requests.get(self.base + "/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout=60)

    def query(self, expr: str) -> list[dict]:
        r = requests.get(self.base + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    def alert_state(self, name: str) -> str | None:
        alerts = requests.get(self.base + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
        return "firing" if "firing" in states else (states[0] if states else None)


@pytest.fixture(scope="module")
def stack(redis_url: str, shipped_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("e2e")
    prefix = "e2e" + uuid.uuid4().hex[:8]
    env = redline_env(redis_url, shipped_models, prefix, monitor_min_positives=5, monitor_cache_s=0,
                      metrics_refresh_s=0.5, data_dir=tmp / "var")
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp / "api.log")
    worker = start_worker(env, tmp / "worker.log", redis, prefix)
    prometheus = Prometheus(tmp, base.removeprefix("http://"))
    yield {"base": base, "prom": prometheus}
    prometheus.proc.stop()
    worker.stop()
    api.stop()


def _submit(base: str, texts: list[str], label: int | None) -> list[str]:
    outputs = [{"model": "chat-e2e", "response": t, "detectors": ["injury"]} for t in texts]
    if label is not None:
        for o in outputs:
            o["labels"] = {"injury": label}
    r = requests.post(base + "/v1/score", json={"outputs": outputs, "timeout_ms": 20_000}, timeout=30)
    assert r.status_code == 200, r.text
    return [o["id"] for o in r.json()["outputs"]]


def test_fnr_alert_fires_when_misses_are_injected_and_dashboards_have_data(stack: dict, shipped_models: Path) -> None:
    base, prom = stack["base"], stack["prom"]
    injured, harmless = split_by_detector(shipped_models)
    _submit(base, harmless * 2, None)  # unlabeled traffic first: the drift reference of the count window
    time.sleep(1.5)
    # Healthy: injuries the detector catches labeled 1, harmless texts labeled 0.
    _submit(base, injured * 2, 1)
    _submit(base, harmless * 2, 0)
    wait_for(lambda: prom.query('redline_fnr_lower_ratio{model="chat-e2e", window="24h", interval="wilson"}'),
             timeout=60, interval=0.5)
    [fnr] = prom.query('redline_fnr_ratio{model="chat-e2e", detector="injury", window="24h"}')
    assert float(fnr["value"][1]) == 0.0
    time.sleep(4)  # longer than the test-sized `for`: a false alarm would be firing by now
    assert prom.alert_state("RedlineFalseNegativeRateAboveTarget") is None

    # Inject misses: positives the detector scores below its threshold (harmless-looking text labeled 1).
    _submit(base, [f"{t} (report {i})" for i, t in enumerate(harmless * 2)], 1)
    wait_for(lambda: prom.alert_state("RedlineFalseNegativeRateAboveTarget") == "firing", timeout=60, interval=0.5)
    [lower] = prom.query('redline_fnr_lower_ratio{model="chat-e2e", window="24h", interval="wilson"}')
    assert float(lower["value"][1]) > 0.02

    # Every query of every dashboard panel returns data from this Prometheus.
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "redline.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\$(model|detector)", ".*", target["expr"]).replace("$window", "count:1000")
            if not prom.query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert empty == []
