"""The Kubernetes manifests: every object is in the kustomization, the probes ask the mirror's
health endpoints on its port, the pod runs as the image's user with its config and cache
mounted, and the services reach the mirror and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mirror import config
from tests.deploy_files import (
    KUBERNETES,
    dockerfile,
    load_config_text,
    only,
    yaml_document,
    yaml_documents,
)


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
