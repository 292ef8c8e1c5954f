"""Shared fixtures: a fake Docker Hub upstream and mirrors in front of it, over real HTTP.

`start_mirror(upstream_url, **settings)` builds a mirror from a real config file (so the
file layer is exercised too) and serves it on a loopback port; tests talk to it with a real
aiohttp client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient as PluginClient

from mirror import config
from mirror.server.app import create_app
from testkit.fakeupstream import FakeRegistry, Manifest, make_image, make_index, make_layer

pytest_plugins = ["tests.meta_fixtures", "tests.s3_fixtures", "tests.cluster_fixtures"]

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


class StartMirror(Protocol):
    async def __call__(
        self, upstream_url: str, *, clock: Callable[[], float] | None = None, **settings: Any
    ) -> Client: ...


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        items = (toml_table(v) if isinstance(v, dict) else toml_value(v) for v in value)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        return toml_table(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_table(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in table.items()) + "}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The cwd of a `mirror` process a test starts: empty, so no mirror.toml is found there."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that talk to `mirror serve` processes (bounded waits)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def mirror_starter(
    aiohttp_client: PluginClient,
    tmp_path: Path,
    data_dir: Path,
    headers: Mapping[str, str] | None = None,
) -> StartMirror:
    """`start_mirror` for a fixture: each mirror's settings go through a config file, as a
    user's would; its client sends `headers` with every request."""

    async def start(
        upstream_url: str, *, clock: Callable[[], float] | None = None, **settings: Any
    ) -> Client:
        values = {
            "upstream": upstream_url,
            "data_dir": str(data_dir),
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            **settings,
        }
        file = tmp_path / "mirror.toml"
        file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        loaded = config.load(config_file=file, environ={})
        app = await create_app(loaded.config, clock=clock or time.time)
        client: Client = await aiohttp_client(app, headers=headers)
        return client

    return start


@pytest.fixture
def start_mirror(aiohttp_client: PluginClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    return mirror_starter(aiohttp_client, tmp_path, data_dir)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as registry:
        yield registry


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror) -> Client:
    return await start_mirror(upstream.url)


@pytest.fixture
def alpine(upstream: FakeRegistry) -> Manifest:
    """library/alpine:3.19, a small two-layer image."""
    image = make_image(
        layers=[
            make_layer({"bin/sh": b"#!fake shell\n"}),
            make_layer({"etc/alpine-release": b"3.19.0\n"}),
        ]
    )
    upstream.push_image("library/alpine", "3.19", image)
    return image


@pytest.fixture
def multiarch(upstream: FakeRegistry) -> Manifest:
    """library/multi:1, a manifest list of linux/amd64 and linux/arm64 images."""
    index = make_index([make_image(arch="amd64", seed=1), make_image(arch="arm64", seed=1)])
    upstream.push_image("library/multi", "1", index)
    return index


def docker_io(url: str, **keys: Any) -> list[dict[str, Any]]:
    """An `upstream` setting of one table: docker.io reached at `url`, with `keys` (such as
    credentials) set on it. Pass it as `start_mirror(url, upstream=docker_io(url, ...))`."""
    return [{"host": "docker.io", "url": url, **keys}]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> set[str]:
    """Every file below `root`, relative: what a test compares to prove nothing was written."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def content_files(data_dir: Path) -> set[str]:
    """Cached content and temp files (not the embedded metadata store beside them)."""
    return {p for p in files_under(data_dir) if p.split("/", 1)[0] in ("blobs", "manifests", "tmp")}


def answered(upstream: FakeRegistry, **filters: str) -> int:
    """Upstream requests that got a real answer, not counting the 401 challenges that
    precede the token flow (the first request to a repository always gets one)."""
    return sum(1 for r in upstream.filter_requests(**filters) if r.status != 401)
