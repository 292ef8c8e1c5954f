"""The cluster compose file and its load balancer: three replicas that load as members of one
cluster (the same bucket, Redis and secret, each advertising the address the others and
nginx reach it at), SeaweedFS holding the bucket they name with the identity they use, and
nginx in front, which passes its own `nginx -t`, hides the replica-to-replica endpoint and,
with its optional affinity, sends every request for one digest to one replica."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mirror import config
from testkit import nginx
from testkit.mirrorserver import http_request
from tests.deploy_files import (
    DEPLOY,
    ROOT,
    interpolate,
    mirror_variables,
    serve_config,
    setting_value,
    yaml_document,
)

COMPOSE = DEPLOY / "compose.cluster.yaml"
# What an operator's deploy/.env gives the compose file.
DOT_ENV = {"S3_ACCESS_KEY": "mirror", "S3_SECRET_KEY": "0123456789abcdef0123456789abcdef"}
CLUSTER_SECRET = "fedcba9876543210fedcba9876543210"
DIGEST = "sha256:" + "ab" * 32


def compose() -> Any:
    return yaml_document(COMPOSE)


def replicas() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    return {name: s for name, s in services.items() if "build" in s}


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v), DOT_ENV) for k, v in service.get("environment", {}).items()}


def bind_mount(service: dict[str, Any], target: str) -> Path:
    volume: str
    for volume in service["volumes"]:
        source, mounted, *_ = volume.split(":")
        if mounted == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"nothing is mounted at {target}")


def member(service: dict[str, Any], tmp_path: Path) -> config.Config:
    """What a replica container runs with: its command (after the image's `mirror`
    entrypoint), environment, mounted config file and the cluster secret's file."""
    argv = list(service["command"])
    config_file = bind_mount(service, argv[argv.index("--config") + 1])
    environ = environment(service)
    secret = tmp_path / "cluster-secret"
    secret.write_text(CLUSTER_SECRET)
    (name,) = service["secrets"]
    assert environ["MIRROR_CLUSTER_SECRET_FILE"] == f"/run/secrets/{name}"
    environ["MIRROR_CLUSTER_SECRET_FILE"] = str(secret)
    return serve_config(argv, config_file, environ)


def flag(command: list[str], name: str) -> str:
    """The value of `-name=value` in a command (SeaweedFS's flag style)."""
    (value,) = (arg.split("=", 1)[1] for arg in command if arg.startswith(f"-{name}="))
    return value


# --- compose ------------------------------------------------------------------------------


def test_three_replicas_built_from_the_repository_and_only_the_load_balancer_published() -> None:
    spec = compose()
    assert sorted(replicas()) == ["mirror-1", "mirror-2", "mirror-3"]
    for service in replicas().values():
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        assert "ports" not in service
    published = {name for name, s in spec["services"].items() if s.get("ports")}
    assert published == {"lb"}
    assert spec["services"]["lb"]["image"].startswith("nginx:")


def test_each_replica_is_a_member_of_one_cluster_advertising_its_own_address(
    tmp_path: Path,
) -> None:
    services = compose()["services"]
    members = {name: member(service, tmp_path) for name, service in replicas().items()}
    for name, cfg in members.items():
        advertised = urlsplit(setting_value(cfg, "advertise_url"))
        assert (advertised.hostname, advertised.port) == (name, cfg.serving.listen.port)
        assert setting_value(cfg, "cluster_secret_file") == tmp_path / "cluster-secret"
        redis = urlsplit(cfg.storage.redis_url or "")
        assert services[str(redis.hostname)]["image"].startswith("redis:")
    shared = {
        (c.storage.storage, c.storage.s3_endpoint, c.storage.redis_url) for c in members.values()
    }
    assert len(shared) == 1
    data_volumes = {
        v.split(":")[0]
        for cfg, service in zip(members.values(), replicas().values(), strict=True)
        for v in service["volumes"]
        if v.split(":")[1] == str(cfg.storage.data_dir)
    }
    assert len(data_volumes) == 3, "each replica its own spool and hot cache"


def test_seaweedfs_holds_the_bucket_the_replicas_name_with_the_identity_they_use(
    tmp_path: Path,
) -> None:
    services = compose()["services"]
    name, service = next(iter(replicas().items()))
    cfg = member(service, tmp_path)
    endpoint = urlsplit(cfg.storage.s3_endpoint or "")
    seaweedfs = services[str(endpoint.hostname)]
    assert seaweedfs["image"].startswith("chrislusf/seaweedfs:")
    command = seaweedfs["command"]
    assert command[0] == "mini"
    assert int(flag(command, "s3.port")) == endpoint.port
    assert cfg.storage.storage.startswith(f"s3://{flag(command, 'bucket')}/")
    credentials = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ours, theirs = environment(service), environment(seaweedfs)
    assert [ours[k] for k in credentials] == [theirs[k] for k in credentials]
    assert set(replicas()[name]["depends_on"]) >= {"redis", str(endpoint.hostname)}


def test_the_cluster_secret_comes_from_a_file_kept_out_of_git() -> None:
    secrets = compose()["secrets"]
    for service in replicas().values():
        for name in service["secrets"]:
            file = (DEPLOY / secrets[name]["file"]).resolve()
            ignored = (file.parent / ".gitignore").read_text().splitlines()
            assert "*" in ignored and file.name not in ignored


def test_every_mirror_variable_names_a_setting() -> None:
    for service in replicas().values():
        assert mirror_variables(environment(service)) == []


# --- the load balancer --------------------------------------------------------------------


def test_load_balancer_sends_to_the_replicas_at_their_advertised_addresses(
    tmp_path: Path,
) -> None:
    lb = compose()["services"]["lb"]
    conf = bind_mount(lb, "/etc/nginx/conf.d/default.conf")
    assert conf == nginx.CLUSTER_CONF
    advertised = [
        urlsplit(setting_value(member(service, tmp_path), "advertise_url")).netloc
        for service in replicas().values()
    ]
    assert nginx.upstream_servers(conf.read_text()) == advertised
    assert lb["ports"] == ["5000:5000"]


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    result = nginx.check(tmp_path, nginx.cluster_site(["127.0.0.1:5001", "127.0.0.1:5002"]))
    assert result.returncode == 0, result.stderr


class Replica(http.server.ThreadingHTTPServer):
    """A stand-in replica: answers every request with its name, remembers the paths."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Answer)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, Replica)
        server.paths.append(self.path)
        body = server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stand_ins() -> Iterator[list[Replica]]:
    servers = [Replica(f"replica-{n}") for n in (1, 2, 3)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def answered_by(url: str) -> str:
    resp = http_request(url)
    assert resp is not None and resp.status == 200, resp
    return resp.body.decode()


def test_load_balancer_answers_404_for_the_relay_endpoint_without_asking_a_replica(
    tmp_path: Path, stand_ins: list[Replica]
) -> None:
    site = nginx.cluster_site([s.address for s in stand_ins])
    with nginx.Nginx(tmp_path, site) as lb:
        for path in (f"/_mirror/cluster/blobs/{DIGEST}", "/_mirror/cluster/"):
            resp = http_request(lb.url + path)
            assert resp is not None and resp.status == 404
        assert answered_by(lb.url + "/v2/") in {s.name for s in stand_ins}
    assert [p for s in stand_ins for p in s.paths] == ["/v2/"]


def test_affinity_sends_one_digest_to_one_replica_whatever_the_repository(
    tmp_path: Path, stand_ins: list[Replica]
) -> None:
    site = nginx.cluster_site([s.address for s in stand_ins])
    with nginx.Nginx(tmp_path, site) as lb:
        blob = {
            answered_by(f"{lb.url}/v2/{repo}/blobs/{DIGEST}")
            for repo in ("library/alpine", "team/app", "a/b/c")
            for _ in range(5)
        }
        others = {answered_by(f"{lb.url}/v2/library/alpine/manifests/3.20") for _ in range(30)}
    assert len(blob) == 1
    assert len(others) > 1, "requests without a digest are spread over the replicas"


def test_without_affinity_the_load_balancer_spreads_one_digest_too(
    tmp_path: Path, stand_ins: list[Replica]
) -> None:
    site = nginx.cluster_site([s.address for s in stand_ins], affinity=False)
    with nginx.Nginx(tmp_path, site) as lb:
        answers = {answered_by(f"{lb.url}/v2/library/alpine/blobs/{DIGEST}") for _ in range(6)}
    assert answers == {s.name for s in stand_ins}
