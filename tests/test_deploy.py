"""deploy/: what can be checked without a container engine or a cluster.

The image, compose file, Grafana dashboard, Kubernetes manifests and systemd unit must agree
with each other and with the mirror: every file they name exists, every configuration they
ship loads, the probes ask the mirror's health endpoints on its port, and the dashboard
charts exactly the metrics a running mirror exports.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mirror import config
from testkit.fakeupstream import Manifest
from tests.clients import pull_like_docker
from tests.conftest import Client

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mirror.json"
IMAGE_CONFIG = DEPLOY / "mirror.toml"


# --- helpers ----------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def yaml_document(path: Path) -> Any:
    (doc,) = yaml_documents(path)
    return doc


def load_config(path: Path, environ: dict[str, str] | None = None) -> config.Config:
    return config.load(config_file=path, environ=environ or {}).config


def load_config_text(text: str, tmp_path: Path) -> config.Config:
    file = tmp_path / "mirror.toml"
    file.write_text(text)
    return load_config(file)


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: COPY, RUN, ...
    args: str  # the rest of the (joined) line


def dockerfile(path: Path = DEPLOY / "Dockerfile") -> list[Instruction]:
    """The instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, args = pending.strip().partition(" ")
        instructions.append(Instruction(name.upper(), args.strip()))
        pending = ""
    return instructions


def exec_form(args: str) -> list[str]:
    """An instruction's JSON array argument (ENTRYPOINT ["mirror"])."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def only(instructions: list[Instruction], name: str) -> Instruction:
    """The last instruction called `name` in the final stage (the one that counts)."""
    final_stage = instructions[max(i for i, ins in enumerate(instructions) if ins.name == "FROM") :]
    matching = [ins for ins in final_stage if ins.name == name]
    assert matching, f"the image's final stage has no {name}"
    return matching[-1]


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str


def copies_from_context(instructions: list[Instruction]) -> list[Copy]:
    copies = []
    for ins in instructions:
        if ins.name not in ("COPY", "ADD"):
            continue
        words = exec_form(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        if any(word.startswith("--from=") for word in words):
            continue  # from another stage, not the build context
        paths = [word for word in words if not word.startswith("--")]
        copies.append(Copy(sources=paths[:-1], destination=paths[-1]))
    return copies


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", only(instructions, "HEALTHCHECK").args)
    assert match, "HEALTHCHECK must run a command in exec form"
    return exec_form(match.group(1))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: * and ? stay within a path component, ** spans
    any number of them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def sent_to_docker(path: str) -> bool:
    """Whether the build context keeps `path` (relative to the repository root), by Docker's
    rules: the last pattern matching the path or one of its parents decides, `!` keeps."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    kept = True
    for pattern in patterns:
        keep = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            kept = keep
    return kept


def source_files(path: Path) -> Iterator[Path]:
    """The files a COPY of `path` would want (not Python's byte-code caches)."""
    if path.is_file():
        yield path
    for file in sorted(path.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file


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


def kubernetes_docs() -> list[dict[str, Any]]:
    kustomization = yaml_document(KUBERNETES / "kustomization.yaml")
    return [doc for name in kustomization["resources"] for doc in yaml_documents(KUBERNETES / name)]


def kubernetes_object(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for doc in kubernetes_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r} in the kustomization"
    return found[0]


def mirror_container() -> dict[str, Any]:
    pod = kubernetes_object("Deployment", "mirror")["spec"]["template"]["spec"]
    (container,) = (c for c in pod["containers"] if c["name"] == "mirror")
    assert isinstance(container, dict)
    return container


def kubernetes_config(tmp_path: Path) -> config.Config:
    toml = kubernetes_object("ConfigMap", "mirror-config")["data"]["mirror.toml"]
    return load_config_text(toml, tmp_path)


def systemd_unit() -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "mirror.service").read_text())
    return unit


def dashboard() -> Any:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression on the dashboard: panel targets and template variables."""
    board = dashboard()
    queries = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [target["expr"] for target in inner.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmirror_[A-Za-z0-9_]+", expr))


@dataclass(frozen=True)
class Exposition:
    """What one scrape of /metrics declares: metric name -> type."""

    types: dict[str, str]

    def family(self, name: str) -> str | None:
        """The declared metric a series name in a query belongs to: the metric itself, or
        the histogram whose `_bucket`, `_sum` or `_count` series it is; None if neither."""
        if name in self.types:
            return name
        for suffix in HISTOGRAM_SERIES:
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return None


def parse_exposition(text: str) -> Exposition:
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    return Exposition(types)


@pytest.fixture
async def exposition(mirror: Client, alpine: Manifest) -> Exposition:
    """The mirror's /metrics after it has pulled an image, so most series have samples."""
    await pull_like_docker(mirror, "library/alpine", "3.19")
    resp = await mirror.get("/metrics")
    assert resp.status == 200
    return parse_exposition(await resp.text())


# --- every YAML file --------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for file in files:
        docs = yaml_documents(file)
        assert docs, f"{file} holds no document"
        assert all(isinstance(doc, dict) for doc in docs), file


# --- Dockerfile -------------------------------------------------------------------------


def test_the_image_config_loads_with_the_data_dir_on_the_volume() -> None:
    cfg = load_config(IMAGE_CONFIG)
    instructions = dockerfile()
    assert str(cfg.storage.data_dir) == only(instructions, "VOLUME").args
    assert str(cfg.serving.listen.port) == only(instructions, "EXPOSE").args
    assert cfg.serving.listen.host == "0.0.0.0"


def test_dockerfile_copies_only_files_the_build_context_sends() -> None:
    copies = copies_from_context(dockerfile())
    assert copies
    for copy in copies:
        for source in copy.sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the build context"
            for file in source_files(path):
                relative = str(file.relative_to(ROOT))
                assert sent_to_docker(relative), f"COPY {source}: .dockerignore drops {relative}"


def test_dockerignore_keeps_local_state_and_tests_out_of_the_build_context() -> None:
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "data/meta.sqlite3",
        "bench/results/latest.json",
        "tests/test_pull.py",
        "mirror/__pycache__/cli.cpython-311.pyc",
        "mirror.toml",
    ]:
        assert not sent_to_docker(path), path
    assert sent_to_docker("mirror/server/static/index.html")


def test_image_runs_the_mirror_as_a_non_root_user_with_the_shipped_config() -> None:
    instructions = dockerfile()
    user = only(instructions, "USER").args.split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"
    assert only(instructions, "FROM").args.startswith(("python:", "python:${PYTHON_VERSION}"))
    assert exec_form(only(instructions, "ENTRYPOINT").args) == ["mirror"]
    command = exec_form(only(instructions, "CMD").args)
    assert command[0] == "serve"
    config_path = command[command.index("--config") + 1]
    shipped = [c for c in copies_from_context(instructions) if c.destination == config_path]
    assert [c.sources for c in shipped] == [[str(IMAGE_CONFIG.relative_to(ROOT))]]


def test_image_healthcheck_asks_healthz_on_the_exposed_port_without_curl() -> None:
    instructions = dockerfile()
    command = healthcheck_command(instructions)
    port = only(instructions, "EXPOSE").args
    assert command[:2] == ["python", "-c"]
    assert f"127.0.0.1:{port}/healthz" in command[2]


async def test_the_healthcheck_command_passes_against_a_running_mirror_and_fails_without(
    mirror: Client,
) -> None:
    script = healthcheck_command(dockerfile())[2]

    async def run(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script.replace(":5000/", f":{port}/")
        )
        return await proc.wait()

    assert mirror.port is not None
    assert await run(mirror.port) == 0
    await mirror.close()
    assert await run(mirror.port) != 0


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


# --- Grafana dashboard ------------------------------------------------------------------


async def test_dashboard_queries_name_only_metrics_the_mirror_exports(
    exposition: Exposition,
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    for expr in queries:
        unknown = {name for name in metric_names(expr) if exposition.family(name) is None}
        assert not unknown, f"{expr!r} names metrics the mirror does not export: {unknown}"


async def test_dashboard_charts_every_metric_the_mirror_exports(exposition: Exposition) -> None:
    charted = {
        exposition.family(name) for expr in dashboard_queries() for name in metric_names(expr)
    }
    exported = {
        name
        for name in exposition.types
        if name.startswith("mirror_") and not name.endswith("_created")
    }
    assert exported - charted == set()


def test_dashboard_panels_all_query_the_datasource_variable() -> None:
    board = dashboard()
    (variable,) = (v for v in board["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == expected for target in panel["targets"])


# --- Kubernetes -------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_each_is_a_named_object() -> None:
    listed = yaml_document(KUBERNETES / "kustomization.yaml")["resources"]
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)
    for doc in kubernetes_docs():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc


def test_deployment_probes_ask_readyz_and_healthz_on_the_mirror_port(tmp_path: Path) -> None:
    container = mirror_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": kubernetes_config(tmp_path).serving.listen.port}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == ports["http"]


def test_deployment_runs_as_the_image_user_with_config_and_cache_mounted(tmp_path: Path) -> None:
    pod = kubernetes_object("Deployment", "mirror")["spec"]["template"]["spec"]
    container = mirror_container()
    image_uid = int(only(dockerfile(), "USER").args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    args = container["args"]
    config_file = Path(args[args.index("--config") + 1])
    config_volume = mounts[str(config_file.parent)]["configMap"]
    assert config_file.name in kubernetes_object("ConfigMap", config_volume["name"])["data"]
    data_volume = mounts[str(kubernetes_config(tmp_path).storage.data_dir)]["persistentVolumeClaim"]
    kubernetes_object("PersistentVolumeClaim", data_volume["claimName"])


def test_kubernetes_config_loads_and_uses_the_redis_service(tmp_path: Path) -> None:
    redis = urlsplit(kubernetes_config(tmp_path).storage.redis_url or "")
    service = kubernetes_object("Service", str(redis.hostname))
    assert [p["port"] for p in service["spec"]["ports"]] == [redis.port]
    workload = kubernetes_object("StatefulSet", str(redis.hostname))
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_service_sends_traffic_to_the_mirror_pods() -> None:
    service = kubernetes_object("Service", "mirror")
    labels = kubernetes_object("Deployment", "mirror")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in mirror_container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_upstream_password_secret_is_optional_so_the_pod_starts_without_it() -> None:
    for env in mirror_container().get("env", []):
        secret = env.get("valueFrom", {}).get("secretKeyRef")
        if secret:
            assert secret["optional"] is True, env["name"]


# --- systemd ----------------------------------------------------------------------------


def test_systemd_unit_serves_the_installed_config_as_a_hardened_dedicated_user() -> None:
    unit = systemd_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "mirror" and command[1] == "serve"
    assert command[command.index("--config") + 1] == "/etc/mirror/mirror.toml"
    assert service["User"] not in ("", "root", "0")
    # deploy/mirror.toml is what goes to /etc/mirror/mirror.toml: its data_dir is the
    # directory systemd creates for the service and lets it write.
    data_dir = load_config(IMAGE_CONFIG).storage.data_dir
    assert data_dir == Path("/var/lib") / service["StateDirectory"]
    assert str(data_dir) in service["ReadWritePaths"].split()
    assert service["Restart"] == "on-failure"
    assert float(service["TimeoutStopSec"].removesuffix("s")) > 5
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[option] == "yes", option
    assert service["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
