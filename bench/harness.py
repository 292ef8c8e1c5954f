"""The processes of a benchmark run, all on 127.0.0.1 under one work directory:

- the upstream: `testkit.upstream.RealUpstream` (distribution 2.8 with token auth
  through our `TokenServer`), seeded with generated images (`seed`);
- ours: `mirror serve` (`OursMirror`, `testkit.mirrorserver.MirrorServer`);
- distribution: `docker-registry serve` configured as a pull-through cache of the same
  upstream (`TheirsProxy`);
- nginx: `proxy_cache` in front of the same upstream (`bench.nginx_cache.NginxCache`).

Each side can be restarted with an empty cache (`restart_fresh`) on the same port.
`ProcessTree` reads the peak RSS and the CPU time of a process and its descendants from
/proc.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bench.nginx_cache import NginxCache
from testkit.layout import Layout, RandomContent, random_bytes
from testkit.mirrorserver import MirrorServer, ServerProcess, http_request
from testkit.skopeo import skopeo
from testkit.upstream import REGISTRY_BINARY, RealUpstream, TokenServer

MiB = 1024 * 1024
PUSH_USER, PUSH_PASSWORD = "bench-pusher", "bench-pusher-secret"
SEED_TIMEOUT = 180.0
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# --- images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    key: str  # "small", "20m", "200m"
    repo: str
    tag: str
    layer_bytes: int  # random content of the one layer (0: a few small files)
    seed: int


@dataclass(frozen=True)
class BenchImage:
    """A seeded image: its manifest and its one layer (the blob the blob figures fetch)."""

    key: str
    repo: str
    tag: str
    manifest_digest: str
    manifest_type: str
    manifest_size: int
    layer_digest: str
    layer_size: int

    def manifest_path(self, reference: str | None = None) -> str:
        return f"/v2/{self.repo}/manifests/{reference or self.tag}"

    @property
    def blob_path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.layer_digest}"


# Library names, as Docker Hub's: both mirrors are asked for exactly the same paths.
IMAGE_SPECS = {
    "small": ImageSpec("small", "library/bench-small", "1", 0, 1),
    "20m": ImageSpec("20m", "library/bench-20m", "1", 20 * MiB, 20),
    "200m": ImageSpec("200m", "library/bench-200m", "1", 200 * MiB, 200),
}


def _build(spec: ImageSpec, root: Path) -> tuple[Layout, BenchImage]:
    layout = Layout(root / spec.key)
    if spec.layer_bytes:
        # Random data does not compress; level 0 stores it at disk speed.
        files: dict[str, bytes | RandomContent] = {
            "data/blob.bin": RandomContent(spec.layer_bytes, seed=spec.seed)
        }
        layer = layout.add_layer(files, compresslevel=0)
    else:
        layer = layout.add_layer(
            {
                "etc/os-release": b"ID=bench\n",
                "lib/libbench.so": random_bytes(32 * 1024, seed=spec.seed),
            }
        )
    image = layout.add_image([layer])
    layout.tag(spec.tag, image.descriptor)
    return layout, BenchImage(
        key=spec.key,
        repo=spec.repo,
        tag=spec.tag,
        manifest_digest=image.descriptor.digest,
        manifest_type=image.descriptor.media_type,
        manifest_size=image.descriptor.size,
        layer_digest=layer.descriptor.digest,
        layer_size=layer.descriptor.size,
    )


def _build_and_push(upstream: RealUpstream, spec: ImageSpec, root: Path) -> BenchImage:
    layout, image = _build(spec, root)
    result = skopeo(
        "copy",
        "--dest-creds",
        f"{PUSH_USER}:{PUSH_PASSWORD}",
        "--dest-tls-verify=false",
        f"oci:{layout.root}:{spec.tag}",
        f"docker://{upstream.host}/{spec.repo}:{spec.tag}",
        timeout=SEED_TIMEOUT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"seeding {spec.repo}:{spec.tag} failed:\n{result.stderr}")
    pushed = upstream.head_manifest(spec.repo, spec.tag)
    if pushed != image.manifest_digest:
        raise RuntimeError(
            f"{spec.repo}:{spec.tag} was pushed as {pushed}, not as {image.manifest_digest}"
        )
    shutil.rmtree(layout.root)  # the registry has it now
    return image


def seed(upstream: RealUpstream, root: Path, keys: Sequence[str]) -> dict[str, BenchImage]:
    """Build the images `keys` (of `IMAGE_SPECS`) and push them, in parallel."""
    with ThreadPoolExecutor(max_workers=len(keys) or 1) as pool:
        futures = {k: pool.submit(_build_and_push, upstream, IMAGE_SPECS[k], root) for k in keys}
        return {k: f.result() for k, f in futures.items()}


# --- the sides -----------------------------------------------------------------------


class Side(Protocol):
    """What the figures need of each server compared."""

    label: str  # "ours" / "distribution" / "nginx"

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    @property
    def stderr(self) -> str: ...

    def describe(self) -> dict[str, object]: ...

    def restart_fresh(self) -> None: ...

    def stop(self) -> int: ...


class OursMirror(MirrorServer):
    """`python -m mirror serve --listen 127.0.0.1:PORT --upstream U --data-dir D ARGS` with
    `env` on top of the integration suite's mirror environment (`MIRROR_*` from this shell
    dropped)."""

    name = "ours"
    label = "ours"

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        *,
        env: Mapping[str, str],
        args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.generation = 0
        self.settings_env = dict(env)
        workdir.mkdir(parents=True, exist_ok=True)
        cwd = workdir / "cwd"  # no mirror.toml here
        cwd.mkdir(exist_ok=True)
        super().__init__(upstream_url, self._data_dir(), args, env=env, cwd=cwd)

    def _data_dir(self) -> Path:
        return self.workdir / f"data-{self.generation}"

    def restart_fresh(self) -> None:
        """Stop, start again on the same port with an empty data dir (the old one removed)."""
        if self.running:
            self.stop()
        old = self.data_dir
        self.generation += 1
        self.data_dir = self._data_dir()
        shutil.rmtree(old, ignore_errors=True)
        self.start()

    def describe(self) -> dict[str, object]:
        return {
            "command": self.argv(),
            "env": self.settings_env,
            "note": "MIRROR_* variables of the calling shell are not passed on",
        }


class TheirsProxy(ServerProcess):
    """`docker-registry serve CONFIG`: distribution as a pull-through cache of `upstream_url`
    (anonymous pull through the upstream's token auth), filesystem storage, the in-memory
    blob descriptor cache of Debian's default config, warnings only and no access log."""

    name = "distribution"
    label = "distribution"

    def __init__(self, workdir: Path, upstream_url: str) -> None:
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(
                f"{REGISTRY_BINARY} is not installed (apt-get install {REGISTRY_BINARY})"
            )
        super().__init__(workdir, cwd=workdir)
        self.workdir = workdir
        self.upstream_url = upstream_url
        self.generation = 0
        self.config_path = workdir / "config.yml"

    @property
    def storage(self) -> Path:
        return self.workdir / f"storage-{self.generation}"

    def config(self) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "cache": {"blobdescriptor": "inmemory"},
                "delete": {"enabled": False},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "mirror-bench-reference"},
            "proxy": {"remoteurl": self.upstream_url},
        }

    def argv(self) -> list[str]:
        # JSON is YAML; no YAML library needed.
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return [REGISTRY_BINARY, "serve", str(self.config_path)]

    def ready(self) -> bool:
        resp = http_request(self.url + "/v2/", timeout=1.0)
        return resp is not None and resp.status == 200

    def restart_fresh(self) -> None:
        if self.running:
            self.stop()
        old = self.storage
        self.generation += 1
        shutil.rmtree(old, ignore_errors=True)
        self.start()

    def describe(self) -> dict[str, object]:
        return {"command": self.argv(), "config": self.config()}


# --- the whole set -------------------------------------------------------------------------


class Harness:
    """Token server, upstream, ours, distribution and nginx, started in that order and
    stopped (all of them, whatever happened) by `close`."""

    def __init__(
        self, workdir: Path, *, ours_env: Mapping[str, str], ours_args: Sequence[str]
    ) -> None:
        self.workdir = workdir
        self.ours_env = dict(ours_env)
        self.ours_args = list(ours_args)
        self.token = TokenServer(workdir / "token", users={PUSH_USER: PUSH_PASSWORD})
        self.upstream: RealUpstream | None = None
        self.ours: OursMirror | None = None
        self.distribution: TheirsProxy | None = None
        self.nginx: NginxCache | None = None
        self.extra: list[ServerProcess] = []
        self.images: dict[str, BenchImage] = {}
        self.seed_seconds = 0.0

    def start(self, image_keys: Sequence[str]) -> None:
        self.token.start()
        self.upstream = RealUpstream(self.workdir / "upstream", self.token)
        self.upstream.start()
        started = time.monotonic()
        self.images = seed(self.upstream, self.workdir / "layouts", image_keys)
        self.seed_seconds = time.monotonic() - started
        self.ours = self.start_ours("ours")
        self.distribution = TheirsProxy(self.workdir / "distribution", self.upstream.url)
        self.distribution.start()
        self.nginx = NginxCache(self.workdir / "nginx", self.upstream.host, self.pull_token)
        self.nginx.start()

    def pull_token(self) -> str:
        """An anonymous token to pull every seeded repository (what nginx sends upstream)."""
        return self.token.token(*(f"repository:{i.repo}:pull" for i in self.images.values()))

    def start_ours(
        self,
        subdir: str,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        *,
        label: str = "ours",
    ) -> OursMirror:
        """Another `mirror serve` in front of the upstream, with `env` and `args` on top of
        ours' (stopped by `close`)."""
        assert self.upstream is not None
        mirror = OursMirror(
            self.workdir / subdir,
            self.upstream.url,
            env=self.ours_env | dict(env or {}),
            args=[*self.ours_args, *args],
        )
        mirror.label = label
        self.extra.append(mirror)
        mirror.start()
        return mirror

    @property
    def sides(self) -> tuple[Side, ...]:
        """Ours and its peers, in the order of the first repetition."""
        assert self.ours is not None and self.distribution is not None and self.nginx is not None
        return self.ours, self.distribution, self.nginx

    def close(self) -> None:
        servers: list[ServerProcess | None] = [
            *self.extra,
            self.distribution,
            self.nginx,
            self.upstream,
            self.token,
        ]
        for server in servers:
            if server is not None and server.running:
                try:
                    server.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"bench: stopping the {server.name} failed: {exc}")


# --- client helpers (for checks and warm-up, never for the measured figures) -------------


def fetch(
    url: str, headers: Mapping[str, str] | None = None, *, method: str = "GET", timeout: float = 60
) -> tuple[int, dict[str, str], int, str]:
    """(status, lower-cased headers, body size, sha256 of the body), streamed."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path, headers=dict(headers or {}))
        resp = conn.getresponse()
        digest = hashlib.sha256()
        size = 0
        while chunk := resp.read(4 * MiB):
            digest.update(chunk)
            size += len(chunk)
        heads = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, heads, size, "sha256:" + digest.hexdigest()
    finally:
        conn.close()


# --- /proc accounting ----------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def machine_cpu_seconds() -> tuple[float, float]:
    """(process time, interrupt time): CPU seconds all cores spent since boot running
    processes (user, nice, system, steal) and in interrupts (irq, softirq: loopback network
    processing is counted there, and in no process), from the `cpu` line of /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + steal) / _CLK_TCK, (irq + softirq) / _CLK_TCK


class ProcessTree:
    """A process and its descendants (the mirror may run worker processes)."""

    def __init__(self, pid: int) -> None:
        self.root = pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS in every process of the tree."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_rss(self) -> tuple[int, int]:
        """(sum of VmHWM over the tree in bytes, number of processes)."""
        total, count = 0, 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
                    count += 1
        return total, count

    def cpu_seconds(self) -> float:
        """User + system CPU time of the tree's live processes."""
        ticks = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is not None:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / _CLK_TCK
