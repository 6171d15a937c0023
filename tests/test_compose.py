"""deploy/docker-compose.yml wires the shipped files together as each program expects them: the files
it mounts exist and land where each image reads its configuration, each service reaches the others by
the names and ports they listen on, and the Redline containers start with their settings. No Docker
engine is needed: this is the wiring that engine would run, checked where CI can."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from service.app import open_or_keys
from service.cli import main
from service.settings import Settings

from .image import image_env

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICES = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
# Where the images read their configuration by default (their own --config.file / provisioning paths).
PROMETHEUS_CONFIG = PurePosixPath("/etc/prometheus/prometheus.yml")
ALERTMANAGER_CONFIG = PurePosixPath("/etc/alertmanager/alertmanager.yml")
GRAFANA_PROVISIONING = PurePosixPath("/etc/grafana/provisioning")


def mounts(service: str) -> dict[PurePosixPath, Path]:
    """Container path -> file or folder in deploy/, for the service's bind mounts."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):  # a path, not a named volume
            out[PurePosixPath(target)] = DEPLOY / source
    return out


def in_container(service: str, path: PurePosixPath) -> Path:
    """The file in deploy/ that `path` is inside the service's container (through a mount)."""
    for target, source in mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{path} is not mounted into {service}")


def test_every_mount_exists_and_each_program_finds_its_configuration_where_it_reads_it() -> None:
    for service in SERVICES:
        for target, source in mounts(service).items():
            assert source.exists(), f"{service} mounts {source} at {target}, which does not exist"
    prometheus = yaml.safe_load(in_container("prometheus", PROMETHEUS_CONFIG).read_text())
    rules = [in_container("prometheus", PROMETHEUS_CONFIG.parent / r) for r in prometheus["rule_files"]]
    assert rules == [DEPLOY / "prometheus" / "alerts.yml"]  # the rules the promtool tests cover
    assert yaml.safe_load(in_container("alertmanager", ALERTMANAGER_CONFIG).read_text())["route"]
    providers = yaml.safe_load(in_container("grafana", GRAFANA_PROVISIONING / "dashboards" / "redline.yml")
                               .read_text())["providers"]
    dashboards = in_container("grafana", PurePosixPath(providers[0]["options"]["path"]))
    assert (dashboards / "redline.json").is_file()


def test_services_reach_each_other_by_the_names_and_ports_they_listen_on() -> None:
    prometheus = yaml.safe_load(in_container("prometheus", PROMETHEUS_CONFIG).read_text())
    [[scraped]] = [c["targets"] for job in prometheus["scrape_configs"] for c in job["static_configs"]]
    api_env = SERVICES["api"]["environment"]
    assert scraped == f"api:{api_env['REDLINE_PORT']}"
    assert f"{api_env['REDLINE_PORT']}:{api_env['REDLINE_PORT']}" in SERVICES["api"]["ports"]
    [[alerting]] = [c["targets"] for a in prometheus["alerting"]["alertmanagers"] for c in a["static_configs"]]
    assert alerting == "alertmanager:9093" and "9093:9093" in SERVICES["alertmanager"]["ports"]
    sources = yaml.safe_load(in_container("grafana", GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
                             .read_text())["datasources"]
    assert [urlsplit(s["url"]).netloc for s in sources] == ["prometheus:9090"]
    for service in ("api", "worker", "monitor"):
        assert urlsplit(SERVICES[service]["environment"]["REDLINE_REDIS_URL"]).netloc == "redis:6379"
    assert "--appendonly" in SERVICES["redis"]["command"]  # accepted outputs survive a Redis restart


@pytest.mark.parametrize("service", ["api", "worker", "monitor"])
def test_redline_containers_are_built_from_the_repository_and_start_with_their_settings(service: str) -> None:
    spec = SERVICES[service]
    assert (DEPLOY / spec["build"] / "Dockerfile").resolve() == (DEPLOY.parent / "Dockerfile").resolve()
    program, command = spec["command"]
    assert program == "redline"
    with pytest.raises(SystemExit) as helped:  # the subcommand exists
        main([command, "--help"])
    assert helped.value.code == 0
    settings = Settings.from_env({**image_env(), **spec["environment"]})  # a bad value would raise
    if command == "api":  # it listens beyond loopback: open mode must be allowed explicitly, or keys
        open_or_keys(settings)
