"""Fixtures of the integration suite: real processes only, driven synchronously.

The contract the test modules use:

- `upstream` (session): a `RealUpstream`, the Go distribution registry behind our token
  server, seeded with `upstream.images` (`SeededImage` by key):
  `"small"` library/alpine:3.19 (two small layers), `"multiarch"` library/multi:1 (an OCI
  index of linux/amd64 and linux/arm64), `"large"` library/large:1 (one ~100 MB layer of
  incompressible data), `"tag_a"`/`"tag_b"` library/app:a and library/app:b (sharing their
  base layer). Counting (`blob_gets`, `manifest_requests`) restarts at every test; an upstream
  a test stopped is started again after it (same port, same storage).
- `mirror` (function): a started `MirrorServer` in front of `upstream.url` with a fresh data
  dir; `start_mirror(extra_args=(), env=None)` makes more (all stopped after the test).
- `skopeo(*args, timeout=120)` (in `testkit.skopeo`): skopeo run in isolation, never raising on
  failure.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testkit.layout import Image, Index, Layout, RandomContent, random_bytes
from testkit.mirrorserver import MirrorServer
from testkit.skopeo import skopeo
from testkit.upstream import RealUpstream, SeededImage, TokenServer

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
USER, PASSWORD = "pusher", "pusher-secret"
SEED_TIMEOUT = 120.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


# --- the seeded images ---------------------------------------------------------------------


def _small(root: Path) -> tuple[Layout, dict[str, Image | Index]]:
    layout = Layout(root)
    base = layout.add_layer(
        {
            "bin/sh": b"#!/bin/sh\n# not a real shell\n",
            "etc/alpine-release": b"3.19.0\n",
            "etc/os-release": b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.0\n',
            "lib/ld-musl-x86_64.so.1": random_bytes(48 * 1024, seed=1),
        }
    )
    top = layout.add_layer({"etc/motd": b"Welcome to the mirror's integration tests.\n"})
    return layout, {"3.19": layout.add_image([base, top])}


def _multiarch(root: Path) -> tuple[Layout, dict[str, Image | Index]]:
    layout = Layout(root)
    images = []
    for seed, arch in enumerate(("amd64", "arm64"), start=20):
        layer = layout.add_layer(
            {
                "etc/arch": arch.encode() + b"\n",
                f"lib/ld-linux-{arch}.so": random_bytes(16 * 1024, seed=seed),
            }
        )
        images.append(layout.add_image([layer], arch=arch, platform_in_descriptor=True))
    return layout, {"1": layout.add_index(images)}


def _large(root: Path) -> tuple[Layout, dict[str, Image | Index]]:
    layout = Layout(root)
    # Random data does not compress; stored gzip blocks are written at disk speed.
    layer = layout.add_layer({"data/large.bin": RandomContent(100 * MB, seed=100)}, compresslevel=0)
    return layout, {"1": layout.add_image([layer])}


def _app(root: Path) -> tuple[Layout, dict[str, Image | Index]]:
    layout = Layout(root)
    base = layout.add_layer(
        {
            "etc/os-release": b"ID=base\n",
            "usr/lib/libbase.so": random_bytes(256 * 1024, seed=30),
        }
    )
    tags: dict[str, Image | Index] = {}
    for seed, tag in enumerate("ab", start=31):
        top = layout.add_layer(
            {f"app/{tag}.bin": random_bytes(8 * 1024, seed=seed), "app/name": tag.encode()}
        )
        tags[tag] = layout.add_image([base, top], cmd=(f"/app/{tag}.bin",))
    return layout, tags


# layout -> (repository, builder of the layout and its tags)
_IMAGES: dict[str, tuple[str, Callable[[Path], tuple[Layout, dict[str, Image | Index]]]]] = {
    "small": ("library/alpine", _small),
    "multiarch": ("library/multi", _multiarch),
    "large": ("library/large", _large),
    "app": ("library/app", _app),
}
# (layout, tag) -> key in `upstream.images`
_KEYS = {("small", "3.19"): "small", ("multiarch", "1"): "multiarch", ("large", "1"): "large"}
_KEYS |= {("app", "a"): "tag_a", ("app", "b"): "tag_b"}


def _seeded(repo: str, tag: str, built: Image | Index) -> SeededImage:
    images = list(built.images.values()) if isinstance(built, Index) else [built]
    blobs: dict[str, int] = {}
    for image in images:
        blobs |= {blob.digest: blob.size for blob in image.blobs}
    platforms = (
        {key: image.descriptor.digest for key, image in built.images.items()}
        if isinstance(built, Index)
        else {}
    )
    return SeededImage(
        repo=repo,
        tag=tag,
        digest=built.descriptor.digest,
        blobs=list(blobs),
        platforms=platforms,
        size=sum(blobs.values()),
    )


def _build_and_push(upstream: RealUpstream, group: str, root: Path) -> dict[str, SeededImage]:
    """Build one layout and push its tags (one after the other) with skopeo."""
    repo, build = _IMAGES[group]
    layout, tags = build(root / group)
    user, password = upstream.credentials
    seeded = {}
    for tag, built in tags.items():
        layout.tag(tag, built.descriptor)
        result = skopeo(
            "copy",
            "--dest-creds",
            f"{user}:{password}",
            "--dest-tls-verify=false",
            *(["--all"] if isinstance(built, Index) else []),
            f"oci:{layout.root}:{tag}",
            f"docker://{upstream.host}/{repo}:{tag}",
            timeout=SEED_TIMEOUT,
        )
        assert result.returncode == 0, f"seeding {repo}:{tag} failed:\n{result.stderr}"
        pushed = upstream.head_manifest(repo, tag)
        assert pushed == built.descriptor.digest, (
            f"{repo}:{tag} was pushed as {pushed}, not as the layout's {built.descriptor.digest}"
        )
        seeded[_KEYS[group, tag]] = _seeded(repo, tag, built)
    return seeded


def seed(upstream: RealUpstream, root: Path) -> dict[str, SeededImage]:
    """Build every test image as an OCI layout under `root` and push it (in parallel)."""
    images: dict[str, SeededImage] = {}
    with ThreadPoolExecutor(max_workers=len(_IMAGES)) as pool:
        futures = [pool.submit(_build_and_push, upstream, group, root) for group in _IMAGES]
        for future in futures:
            images |= future.result()
    return images


# --- the processes -------------------------------------------------------------------------

_live_upstreams: list[RealUpstream] = []


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """Our Docker-Hub-like token server: anonymous pull, `pusher` may push."""
    server = TokenServer(tmp_path_factory.mktemp("tokenserver"), users={USER: PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upstream(
    token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealUpstream]:
    """The real registry, seeded (see the module docstring); counts reset."""
    require("docker-registry", "skopeo")
    registry = RealUpstream(tmp_path_factory.mktemp("registry"), token_server)
    registry.start()
    try:
        layouts = tmp_path_factory.mktemp("layouts")
        started = time.monotonic()
        registry.images = seed(registry, layouts)
        registry.seed_seconds = time.monotonic() - started
        shutil.rmtree(layouts)  # the registry has them now; 100 MB less in /tmp
        registry.reset_counts()
        _live_upstreams.append(registry)
        yield registry
    finally:
        if registry in _live_upstreams:
            _live_upstreams.remove(registry)
        registry.stop()


@pytest.fixture(autouse=True)
def _upstream_up_and_counting_per_test() -> Iterator[None]:
    """Each test starts with the upstream running and its counts at zero, and one that stops
    the upstream (an outage test) gets it started again afterwards."""
    for registry in _live_upstreams:
        if not registry.running:
            registry.start()
        registry.reset_counts()
    yield
    for registry in _live_upstreams:
        if not registry.running:
            registry.start()


StartMirror = Callable[..., MirrorServer]


@pytest.fixture
def start_mirror(upstream: RealUpstream, tmp_path: Path) -> Iterator[StartMirror]:
    """`start_mirror(extra_args=(), env=None)`: another started mirror in front of the
    upstream, with its own fresh data dir; all are stopped after the test."""
    started: list[MirrorServer] = []

    def start(extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> MirrorServer:
        data_dir = tmp_path / f"mirror-{len(started)}" / "data"
        server = MirrorServer(upstream.url, data_dir, extra_args, env=env)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            if server.running:
                server.stop()


@pytest.fixture
def mirror(start_mirror: StartMirror) -> MirrorServer:
    """A started mirror in front of the upstream, with a fresh data dir."""
    return start_mirror()
