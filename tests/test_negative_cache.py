"""An upstream's 404 is remembered for negative_ttl: a flood of requests for names that do
not exist costs one upstream request per name and period, and a name that appears upstream
is seen once the period is over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror import config
from mirror.config import Config, ConfigError, UpstreamSettings
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.upstream.client import UpstreamClient
from mirror.upstream.negative import NegativeCache
from mirror.upstream.options import ClientOptions
from testkit.clock import FakeClock
from testkit.fakeupstream import DOCKER_MANIFEST, FakeRegistry, Manifest, make_image
from tests.conftest import Client, StartMirror

MISSING_BLOB = "sha256:" + "0" * 64


def not_found(upstream: FakeRegistry, kind: str) -> int:
    """Upstream requests of `kind` that it answered 404."""
    return sum(1 for r in upstream.filter_requests(kind=kind) if r.status == 404)


async def test_repeated_pulls_of_a_missing_tag_ask_the_upstream_once(
    mirror: Client, upstream: FakeRegistry
) -> None:
    for _ in range(5):
        resp = await mirror.get("/v2/library/nothing/manifests/latest")
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert not_found(upstream, "manifest") == 1


async def test_repeated_requests_for_a_missing_blob_ask_the_upstream_once(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    for method in ("GET", "HEAD", "GET"):
        resp = await mirror.request(method, f"/v2/library/alpine/blobs/{MISSING_BLOB}")
        assert resp.status == 404
    assert not_found(upstream, "blob") == 1


async def test_a_flood_of_random_names_costs_one_upstream_request_each(
    mirror: Client, upstream: FakeRegistry
) -> None:
    names = [f"library/flood{i}" for i in range(30)]
    for _ in range(3):
        for name in names:
            assert (await mirror.get(f"/v2/{name}/manifests/latest")).status == 404
    assert not_found(upstream, "manifest") == len(names)


async def test_each_name_and_reference_is_remembered_on_its_own(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    assert (await mirror.get("/v2/library/alpine/manifests/nope")).status == 404
    assert (await mirror.get("/v2/library/alpine/manifests/3.19")).status == 200
    assert (await mirror.get("/v2/library/other/manifests/nope")).status == 404
    assert not_found(upstream, "manifest") == 2


async def test_negative_ttl_0_asks_every_time(
    start_mirror: StartMirror, upstream: FakeRegistry
) -> None:
    mirror = await start_mirror(upstream.url, negative_ttl=0)
    for _ in range(3):
        assert (await mirror.get("/v2/library/nothing/manifests/latest")).status == 404
    assert not_found(upstream, "manifest") == 3


async def test_an_upstream_table_sets_its_own_negative_ttl(
    start_mirror: StartMirror, upstream: FakeRegistry
) -> None:
    table = [{"host": "docker.io", "url": upstream.url, "negative_ttl": 0}]
    mirror = await start_mirror(upstream.url, upstream=table, negative_ttl=60)
    for _ in range(2):
        assert (await mirror.get("/v2/library/nothing/manifests/latest")).status == 404
    assert not_found(upstream, "manifest") == 2


# --- expiry, with a clock the test moves ----------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=1000.0)


@pytest.fixture
async def client(upstream: FakeRegistry, clock: FakeClock) -> AsyncIterator[UpstreamClient]:
    settings = UpstreamSettings(host="docker.io", url=upstream.url, library_prefix=True)
    client = UpstreamClient(settings, ClientOptions(negative_ttl=60.0, clock=clock))
    yield client
    await client.close()


async def test_a_tag_that_appears_upstream_is_seen_once_the_ttl_is_over(
    client: UpstreamClient, upstream: FakeRegistry, clock: FakeClock
) -> None:
    with pytest.raises(RegistryError, match="not found at upstream"):
        await client.get_manifest("library/late", "1", DOCKER_MANIFEST)
    image = make_image(seed=5)
    upstream.push_image("library/late", "1", image)

    clock.advance(59)
    with pytest.raises(RegistryError, match="not found at upstream"):
        await client.get_manifest("library/late", "1", DOCKER_MANIFEST)
    assert not_found(upstream, "manifest") == 1  # remembered: not asked again

    clock.advance(1)
    fetched = await client.get_manifest("library/late", "1", DOCKER_MANIFEST)
    assert fetched.data == image.data


async def test_a_blob_404_is_remembered_for_head_and_get_alike(
    client: UpstreamClient, upstream: FakeRegistry, clock: FakeClock
) -> None:
    digest = Digest.parse(MISSING_BLOB)
    with pytest.raises(RegistryError) as head:
        await client.head_blob("library/alpine", digest)
    with pytest.raises(RegistryError) as get:
        async with client.open_blob("library/alpine", digest):
            pass
    assert head.value.status == get.value.status == 404
    assert not_found(upstream, "blob") == 1


def test_the_cache_is_bounded_and_drops_the_least_recently_used(clock: FakeClock) -> None:
    cache = NegativeCache(60.0, max_entries=3, clock=clock)
    for name in ("a", "b", "c"):
        cache.remember(("manifest", name, "latest"))
    assert cache.missing(("manifest", "a", "latest"))  # now the most recently used
    cache.remember(("manifest", "d", "latest"))
    assert len(cache) == 3
    assert not cache.missing(("manifest", "b", "latest"))
    assert all(cache.missing(("manifest", n, "latest")) for n in ("a", "c", "d"))


def test_expired_entries_are_dropped_when_looked_up(clock: FakeClock) -> None:
    cache = NegativeCache(10.0, clock=clock)
    cache.remember(("blob", "r", "sha256:x"))
    clock.advance(10)
    assert not cache.missing(("blob", "r", "sha256:x"))
    assert len(cache) == 0


# --- configuration --------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Config:
    file = tmp_path / "mirror.toml"
    file.write_text(text)
    return config.load(config_file=file, environ={}).config


def test_an_upstream_table_overrides_the_global_negative_ttl(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'negative_ttl = 30\n[[upstream]]\nhost = "ghcr.io"\nnegative_ttl = 0\n')
    options = {
        u.host: ClientOptions.from_config(cfg.registries, u) for u in cfg.registries.upstreams
    }
    assert options["ghcr.io"].negative_ttl == 0
    assert options["docker.io"].negative_ttl == 30
    assert "negative_ttl = 0.0" in config.render(
        config.load(config_file=tmp_path / "mirror.toml", environ={})
    )


def test_a_bad_negative_ttl_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="negative_ttl"):
        load(tmp_path, "negative_ttl = -1\n")
    with pytest.raises(ConfigError, match=r"upstream ghcr\.io .*: negative_ttl"):
        load(tmp_path, '[[upstream]]\nhost = "ghcr.io"\nnegative_ttl = "soon"\n')
