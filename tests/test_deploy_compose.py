"""The Compose file: it builds the mirror from the repository's Dockerfile, mounts only files
that exist, loads its configuration with Redis from the environment, and wires Prometheus
and Grafana to the mirror and the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.deploy_files import (
    DASHBOARD,
    DEPLOY,
    IMAGE_CONFIG,
    ROOT,
    dockerfile,
    exec_form,
    healthcheck_command,
    load_config,
    only,
    yaml_document,
)


def compose() -> Any:
    return yaml_document(DEPLOY / "compose.yaml")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: target in the container -> file on this machine."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def mounted_at(mounts: dict[str, Path], container_path: str) -> Path:
    """The file on this machine a container sees at `container_path`."""
    for target, source in mounts.items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"nothing is mounted at {container_path}")


# --- compose ----------------------------------------------------------------------------


def test_compose_builds_the_mirror_from_the_dockerfile_in_the_repository() -> None:
    build = compose()["services"]["mirror"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_mounts_only_files_that_exist_and_declares_its_named_volumes() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in spec["volumes"], f"{name}: volume {source} is not declared"


def test_compose_mirror_loads_its_mounted_config_with_redis_from_the_environment() -> None:
    spec = compose()
    mirror = spec["services"]["mirror"]
    command = exec_form(only(dockerfile(), "CMD").args)
    config_file = mounted_at(bind_mounts(mirror), command[command.index("--config") + 1])
    cfg = load_config(config_file, environ=mirror["environment"])
    assert f"{cfg.storage.data_dir}" in [v.split(":")[1] for v in mirror["volumes"]]
    redis = urlsplit(cfg.storage.redis_url or "")
    assert redis.hostname in spec["services"]
    assert spec["services"][redis.hostname]["image"].startswith("redis:")
    assert "redis" in mirror["depends_on"]
    assert mirror["healthcheck"]["test"] == ["CMD", *healthcheck_command(dockerfile())]


def test_prometheus_scrapes_the_mirror_service_on_its_port() -> None:
    spec = compose()
    prometheus = spec["services"]["prometheus"]
    flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    scrape = yaml_document(mounted_at(bind_mounts(prometheus), flag.split("=", 1)[1]))
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in spec["services"] and spec["services"][host]["build"]
    assert int(port) == load_config(IMAGE_CONFIG).serving.listen.port


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    spec = compose()
    grafana = spec["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounted_at(mounts, "/etc/grafana/provisioning")
    (datasource,) = yaml_document(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname in spec["services"]
    assert f"{url.port}" in " ".join(spec["services"][url.hostname]["ports"])
    (provider,) = yaml_document(provisioning / "dashboards" / "mirror.yaml")["providers"]
    assert mounted_at(mounts, provider["options"]["path"]) == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_at(mounts, home) == DASHBOARD
