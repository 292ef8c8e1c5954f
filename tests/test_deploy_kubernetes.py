"""The Kubernetes manifests, for one mirror pod (deploy/kubernetes) and for a cluster of
replicas on S3 (deploy/kubernetes/cluster): every object is in a kustomization, the probes
ask the mirror's health endpoints on its port, the pod runs as the image's user with its
config and cache mounted, the services reach the mirror and Redis, and the replicas run as
one cluster: each advertising its own pod address, spread over nodes, never all disrupted."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mirror import config
from tests.deploy_files import (
    KUBERNETES,
    dockerfile,
    kustomization_documents,
    kustomization_resources,
    load_config_text,
    mirror_variables,
    only,
    serve_config,
    setting_value,
)

CLUSTER = KUBERNETES / "cluster"
# Both setups: what holds for one holds for the other.
SETUPS = pytest.mark.parametrize("setup", [KUBERNETES, CLUSTER], ids=["single", "cluster"])


def kubernetes_object(kind: str, name: str, setup: Path = KUBERNETES) -> dict[str, Any]:
    found = [
        doc
        for doc in kustomization_documents(setup)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r} in {setup}"
    return found[0]


def pod_spec(setup: Path = KUBERNETES) -> dict[str, Any]:
    spec = kubernetes_object("Deployment", "mirror", setup)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def mirror_container(setup: Path = KUBERNETES) -> dict[str, Any]:
    (container,) = (c for c in pod_spec(setup)["containers"] if c["name"] == "mirror")
    assert isinstance(container, dict)
    return container


def kubernetes_config(tmp_path: Path, setup: Path = KUBERNETES) -> config.Config:
    toml = kubernetes_object("ConfigMap", "mirror-config", setup)["data"]["mirror.toml"]
    return load_config_text(toml, tmp_path)


# --- Kubernetes -------------------------------------------------------------------------


def test_every_manifest_is_in_a_kustomization_and_each_is_a_named_object() -> None:
    kustomizations = [path.parent for path in KUBERNETES.rglob("kustomization.yaml")]
    listed = {res for k in kustomizations for res in kustomization_resources(k)}
    on_disk = {p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert {p for p in listed if p.is_file()} == on_disk
    assert {p for p in listed if p.is_dir()} <= set(kustomizations)
    for setup in (KUBERNETES, CLUSTER):
        for doc in kustomization_documents(setup):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc


@SETUPS
def test_deployment_probes_ask_readyz_and_healthz_on_the_mirror_port(
    tmp_path: Path, setup: Path
) -> None:
    container = mirror_container(setup)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": kubernetes_config(tmp_path, setup).serving.listen.port}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == ports["http"]


def test_deployment_runs_as_the_image_user_with_config_and_cache_mounted(tmp_path: Path) -> None:
    pod = pod_spec()
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


@SETUPS
def test_kubernetes_config_loads_and_uses_the_redis_service(tmp_path: Path, setup: Path) -> None:
    redis = urlsplit(kubernetes_config(tmp_path, setup).storage.redis_url or "")
    service = kubernetes_object("Service", str(redis.hostname), setup)
    assert [p["port"] for p in service["spec"]["ports"]] == [redis.port]
    workload = kubernetes_object("StatefulSet", str(redis.hostname), setup)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@SETUPS
def test_service_sends_traffic_to_the_mirror_pods(setup: Path) -> None:
    service = kubernetes_object("Service", "mirror", setup)
    labels = kubernetes_object("Deployment", "mirror", setup)["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= labels["labels"].items()
    port_names = {p["name"] for p in mirror_container(setup)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


@SETUPS
def test_upstream_password_secret_is_optional_so_the_pod_starts_without_it(setup: Path) -> None:
    for env in mirror_container(setup).get("env", []):
        secret = env.get("valueFrom", {}).get("secretKeyRef")
        if secret and secret["name"] == "mirror-upstream-credentials":
            assert secret["optional"] is True, env["name"]


@SETUPS
def test_every_mirror_variable_names_a_setting(setup: Path) -> None:
    names = {env["name"]: "" for env in mirror_container(setup).get("env", [])}
    assert mirror_variables(names) == []


# --- the cluster of replicas ------------------------------------------------------------

# What the kubelet and the Secret would give the container.
POD_IP = "10.42.0.7"
SECRET_VALUES = {
    "aws-access-key-id": "AKIAEXAMPLE",
    "aws-secret-access-key": "example-secret-key",
    "cluster-secret": "0123456789abcdef0123456789abcdef",
}


def container_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: the pod IP from the downward
    API, the cluster Secret's keys (required ones only: an optional Secret may be absent)."""
    environ = {}
    for env in container["env"]:
        source = env.get("valueFrom", {})
        if source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            environ[env["name"]] = POD_IP
        elif (secret := source.get("secretKeyRef")) and not secret.get("optional"):
            assert secret["name"] == "mirror-cluster", env
            environ[env["name"]] = SECRET_VALUES[secret["key"]]
        elif "value" in env:
            environ[env["name"]] = env["value"]
    return environ


def expand(arg: str, environ: dict[str, str]) -> str:
    """`$(NAME)` in a container argument, expanded as the kubelet does."""
    for name, value in environ.items():
        arg = arg.replace(f"$({name})", value)
    assert "$(" not in arg, f"{arg}: refers to a variable the container does not define"
    return arg


def cluster_member(tmp_path: Path) -> config.Config:
    """The configuration a replica pod runs with: its command line (args after the image's
    `mirror` entrypoint), its environment and the ConfigMap's file."""
    container = mirror_container(CLUSTER)
    environ = container_environment(container)
    argv = [expand(arg, environ) for arg in container["args"]]
    toml = kubernetes_object("ConfigMap", "mirror-config", CLUSTER)["data"]["mirror.toml"]
    config_file = tmp_path / "mirror.toml"
    config_file.write_text(toml)
    assert argv[argv.index("--config") + 1] == "/etc/mirror/mirror.toml"
    argv[argv.index("--config") + 1] = str(config_file)
    return serve_config(argv, config_file, environ)


def test_replicas_share_a_bucket_and_redis_and_advertise_their_pod_address(
    tmp_path: Path,
) -> None:
    cfg = cluster_member(tmp_path)
    assert cfg.storage.storage.startswith("s3://")
    assert cfg.storage.s3_endpoint
    redis = urlsplit(cfg.storage.redis_url or "")
    kubernetes_object("Service", str(redis.hostname), CLUSTER)
    advertised = urlsplit(setting_value(cfg, "advertise_url"))
    assert (advertised.hostname, advertised.port) == (POD_IP, cfg.serving.listen.port)
    assert setting_value(cfg, "cluster_secret") == SECRET_VALUES["cluster-secret"]


def test_replica_credentials_come_from_the_cluster_secret_never_the_config() -> None:
    environ = container_environment(mirror_container(CLUSTER))
    assert environ["AWS_ACCESS_KEY_ID"] == SECRET_VALUES["aws-access-key-id"]
    assert environ["AWS_SECRET_ACCESS_KEY"] == SECRET_VALUES["aws-secret-access-key"]
    toml = kubernetes_object("ConfigMap", "mirror-config", CLUSTER)["data"]["mirror.toml"]
    assert "cluster_secret" not in tomllib.loads(toml)


def test_replica_keeps_only_spools_and_the_hot_cache_on_a_volume_of_its_own(
    tmp_path: Path,
) -> None:
    cfg = cluster_member(tmp_path)
    volumes = {v["name"]: v for v in pod_spec(CLUSTER)["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in mirror_container(CLUSTER)["volumeMounts"]}
    data = mounts[str(cfg.storage.data_dir)]
    assert "persistentVolumeClaim" not in data
    limit = data["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi") and int(limit[:-2]) * 2**30 > cfg.storage.local_cache_size
    assert not [d for d in kustomization_documents(CLUSTER) if d["kind"] == "PersistentVolumeClaim"]


def test_three_replicas_spread_over_nodes_and_at_most_one_disrupted_at_a_time() -> None:
    deployment = kubernetes_object("Deployment", "mirror", CLUSTER)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (term,) = pod_spec(CLUSTER)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    budget = kubernetes_object("PodDisruptionBudget", "mirror", CLUSTER)["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    allowed_down = budget.get("maxUnavailable", 3 - budget.get("minAvailable", 3))
    assert allowed_down == 1
