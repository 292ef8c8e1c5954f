"""The processes of the cluster benchmark, all on 127.0.0.1 under one work directory:

- the upstream of the main benchmark (`bench.harness`: distribution with token auth, seeded);
- one SeaweedFS (`testkit.seaweed`, `weed mini`) holding both sides' blobs, and a Redis;
- ours: `mirror serve` replicas on that bucket and Redis (`OursReplica`);
- theirs: `docker-registry serve` proxies with its `s3` storage driver on the same bucket
  (`TheirsS3Proxy`);
- per side, nginx with deploy/nginx/mirror-cluster.conf in front (`testkit.nginx`), and for
  the filesystem comparison one mirror of each kind on local disk behind its own nginx.

A `Group` is the servers of one side behind their load balancer: `restart_fresh` starts
them all again on the same ports on an empty cache (a new key prefix in the bucket and in
Redis, new data dirs), `restart_local` keeps the bucket's content and loses only what each
server keeps on its own disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.harness import BenchImage, OursMirror, TheirsProxy, seed
from testkit.mirrorproc import free_port
from testkit.mirrorserver import MirrorServer, ServerProcess
from testkit.nginx import Nginx, cluster_site
from testkit.redis import RedisProcess
from testkit.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS, weed_binary
from testkit.upstream import RealUpstream, TokenServer

BUCKET = "bench"
CLUSTER_SECRET = "bench-cluster-secret-0123456789abcdef"


class Restartable(Protocol):
    """A server a `Group` can restart on an empty cache or with its local disk lost."""

    @property
    def url(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def stderr(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> int: ...

    def restart_fresh(self) -> None: ...

    def restart_local(self) -> None: ...

    def describe(self) -> dict[str, object]: ...


class OursReplica(MirrorServer):
    """`mirror serve --storage s3://BUCKET/ours-G --s3-endpoint E --redis-url R` on a fixed
    port, advertising it (`MIRROR_ADVERTISE_URL`, `MIRROR_CLUSTER_SECRET`: settings a mirror
    without cluster support ignores). Generation G names the bucket prefix and the Redis key
    prefix, so replicas of one generation share one cache and a new generation starts empty."""

    name = "ours"

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        s3: SeaweedFS,
        redis_url: str,
        env: Mapping[str, str],
    ) -> None:
        self.workdir = workdir
        self.generation = 0
        self.local = 0  # data dirs used in this generation
        self.s3_endpoint = s3.endpoint
        self.redis_url = redis_url
        port = free_port()
        cwd = workdir / "cwd"  # no mirror.toml here
        cwd.mkdir(parents=True, exist_ok=True)
        env = {
            **env,
            **s3.env(),
            "MIRROR_ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "MIRROR_CLUSTER_SECRET": CLUSTER_SECRET,
        }
        super().__init__(upstream_url, self._data_dir(), env=env, cwd=cwd, port=port)

    def _data_dir(self) -> Path:
        return self.workdir / f"data-{self.generation}-{self.local}"

    def argv(self) -> list[str]:
        self.data_dir = self._data_dir()
        self.env["MIRROR_REDIS_KEY_PREFIX"] = f"bench-{self.generation}:"
        self.extra_args = (
            "--storage",
            f"s3://{BUCKET}/ours-{self.generation}",
            "--s3-endpoint",
            self.s3_endpoint,
            "--redis-url",
            self.redis_url,
        )
        return super().argv()

    def _restart(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def restart_fresh(self) -> None:
        self.generation += 1
        self.local = 0
        self._restart()

    def restart_local(self) -> None:
        self.local += 1
        self._restart()

    def describe(self) -> dict[str, object]:
        return {"command": self.argv(), "env": _settings(self.env)}


class TheirsS3Proxy(TheirsProxy):
    """distribution's proxy with its `s3` storage driver on the benchmark's bucket, under
    `/theirs-G` (G: the generation, as for ours), redirects off so it serves the bytes
    itself, like ours. The AWS_* variables of this shell are not passed on (the Go SDK
    refuses an AWS_CA_BUNDLE it cannot load into its transport)."""

    def __init__(self, workdir: Path, upstream_url: str, *, s3: SeaweedFS) -> None:
        super().__init__(workdir, upstream_url)
        self.s3_endpoint = s3.endpoint
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def config(self) -> dict[str, object]:
        config = super().config()
        config["storage"] = {
            "s3": {
                "accesskey": ACCESS_KEY,
                "secretkey": SECRET_KEY,
                "region": "us-east-1",
                "regionendpoint": self.s3_endpoint,
                "forcepathstyle": True,
                "secure": False,
                "bucket": BUCKET,
                "rootdirectory": f"/theirs-{self.generation}",
            },
            "redirect": {"disable": True},
            "cache": {"blobdescriptor": "inmemory"},
            "delete": {"enabled": False},
            "maintenance": {"uploadpurging": {"enabled": False}},
        }
        return config

    def restart_fresh(self) -> None:
        if self.running:
            self.stop()
        self.generation += 1
        self.start()

    def restart_local(self) -> None:
        if self.running:
            self.stop()
        self.start()


class FileOurs(OursMirror):
    """Ours on the filesystem store (the single-host setup), for the warm comparison."""

    def restart_local(self) -> None:
        self.restart_fresh()


class FileTheirs(TheirsProxy):
    """Theirs on its filesystem driver, for the warm comparison."""

    def restart_local(self) -> None:
        self.restart_fresh()


@dataclass
class Group:
    """One side's servers behind nginx with the deploy conf, twice: round robin (without
    its `hash` line) and with its digest affinity."""

    label: str  # "ours" / "theirs"
    storage: str  # "s3" / "file"
    servers: Sequence[Restartable]
    workdir: Path
    lbs: dict[bool, Nginx] = field(default_factory=dict)  # by affinity

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for affinity in (False, True):
            site = cluster_site([s.host for s in self.servers], affinity=affinity)
            name = f"lb-{self.label}-{self.storage}-{'affinity' if affinity else 'round-robin'}"
            self.lbs[affinity] = Nginx(self.workdir / name, site)
            self.lbs[affinity].start()

    def url(self, *, affinity: bool = False) -> str:
        return self.lbs[affinity].url

    def restart_fresh(self) -> None:
        for server in self.servers:
            server.restart_fresh()

    def restart_local(self) -> None:
        for server in self.servers:
            server.restart_local()

    def stderr(self) -> str:
        return "\n".join(server.stderr[-2000:] for server in self.servers)

    def processes(self) -> list[ServerProcess]:
        found: list[ServerProcess] = [s for s in self.servers if isinstance(s, ServerProcess)]
        return found + list(self.lbs.values())

    def describe(self) -> dict[str, object]:
        return {
            "servers": [server.describe() for server in self.servers],
            "load_balancers": "nginx with deploy/nginx/mirror-cluster.conf: without its hash "
            "line (round robin) and as shipped (digest affinity)",
        }


@dataclass
class ClusterHarness:
    """Token server, upstream, SeaweedFS, Redis, and the four groups (ours and theirs on S3,
    each on local disk), started in that order and all stopped by `close`."""

    workdir: Path
    ours_env: Mapping[str, str]
    replicas: int = 3
    proxies: int = 2
    token: TokenServer | None = None
    upstream: RealUpstream | None = None
    s3: SeaweedFS | None = None
    redis: RedisProcess | None = None
    groups: dict[str, Group] = field(default_factory=dict)  # "ours-s3", "theirs-file", ...
    images: dict[str, BenchImage] = field(default_factory=dict)

    def start(self, image_keys: Sequence[str], push_user: tuple[str, str]) -> None:
        self.token = TokenServer(self.workdir / "token", users=dict([push_user]))
        self.token.start()
        self.upstream = RealUpstream(self.workdir / "upstream", self.token)
        self.upstream.start()
        self.images = seed(self.upstream, self.workdir / "layouts", image_keys)
        (self.workdir / "s3").mkdir(parents=True, exist_ok=True)
        self.s3 = SeaweedFS(self.workdir / "s3", bucket=BUCKET)
        self.s3.start()
        self.redis = RedisProcess(self.workdir / "redis")
        self.redis.start()
        up, s3, redis_url = self.upstream.url, self.s3, self.redis.redis_url
        self.groups = {
            "ours-s3": Group(
                "ours",
                "s3",
                [
                    OursReplica(
                        self.workdir / f"ours-{n}",
                        up,
                        s3=s3,
                        redis_url=redis_url,
                        env=self.ours_env,
                    )
                    for n in range(1, self.replicas + 1)
                ],
                self.workdir,
            ),
            "theirs-s3": Group(
                "theirs",
                "s3",
                [
                    TheirsS3Proxy(self.workdir / f"theirs-{n}", up, s3=s3)
                    for n in range(1, self.proxies + 1)
                ],
                self.workdir,
            ),
            "ours-file": Group(
                "ours",
                "file",
                [FileOurs(self.workdir / "ours-file", up, env=self.ours_env)],
                self.workdir,
            ),
            "theirs-file": Group(
                "theirs", "file", [FileTheirs(self.workdir / "theirs-file", up)], self.workdir
            ),
        }
        for group in self.groups.values():
            group.start()

    def close(self) -> None:
        servers: list[ServerProcess | None] = [
            *(p for g in self.groups.values() for p in g.processes()),
            self.redis,
            self.upstream,
            self.token,
        ]
        for server in servers:
            if server is not None and server.running:
                try:
                    server.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"bench: stopping the {server.name} failed: {exc}")
        if self.s3 is not None:
            self.s3.stop()


def _settings(env: Mapping[str, str]) -> dict[str, str]:
    """The settings of an environment worth recording: MIRROR_* (the cluster secret masked)
    and where S3 is, never credentials."""
    shown = {k: v for k, v in env.items() if k.startswith("MIRROR_") or k == "AWS_ENDPOINT_URL_S3"}
    if "MIRROR_CLUSTER_SECRET" in shown:
        shown["MIRROR_CLUSTER_SECRET"] = "***"
    return shown


def weed_version() -> str:
    """`weed version`'s line, for the record."""
    done = subprocess.run(
        [weed_binary(), "version"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"


def registry_version() -> str:
    done = subprocess.run(
        ["docker-registry", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip()
