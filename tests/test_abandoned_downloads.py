"""Blob downloads whose clients all left: they go on (the next client gets the blob cached)
only within `abandoned_downloads` / `abandoned_bytes`; beyond, the last client leaving
cancels the download: its upstream connection is closed, nothing is cached, no temp file
stays."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from prometheus_client import REGISTRY

from mirror import cli
from testkit.fakeupstream import Blob, FakeRegistry, Fault, make_image, make_layer, random_layer
from testkit.waiting import wait_until
from tests.clients import cached_blobs
from tests.conftest import Client, StartMirror, files_under, toml_value

MB = 1024 * 1024
WAIT = 30.0
# Every 64 KiB chunk of a CDN body after the first is delayed this long, so a 1 MB blob
# stays in flight for seconds after its client has had its first bytes.
CHUNK_DELAY = 0.3


def abandoned_total() -> float:
    return REGISTRY.get_sample_value("mirror_downloads_abandoned_total") or 0.0


def large_blobs(upstream: FakeRegistry, count: int, *, size: int = MB) -> list[Blob]:
    """`count` blobs in library/large whose downloads crawl (small bodies are not slowed:
    they fit in the first chunk)."""
    blobs = [random_layer(size, seed=1000 + i) for i in range(count)]
    for blob in blobs:
        upstream.push_blob("library/large", blob)
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=CHUNK_DELAY, times=None))
    return blobs


def path_of(blob: Blob) -> str:
    return f"/v2/library/large/blobs/{blob.digest}"


async def read_a_little_and_leave(mirror: Client, blob: Blob) -> None:
    resp = await mirror.get(path_of(blob))
    assert resp.status == 200
    assert blob.data.startswith(await resp.content.readany())
    resp.close()


def cdn_requests(upstream: FakeRegistry, blobs: list[Blob]) -> list[bool]:
    """For each CDN GET of `blobs`: whether the mirror hung up before the body's end."""
    digests = {blob.digest.split(":")[1] for blob in blobs}
    return [
        r.client_left
        for r in upstream.filter_requests(server="cdn", method="GET")
        if any(d in r.path for d in digests)
    ]


async def test_beyond_the_budget_abandoned_downloads_are_cancelled_and_small_pulls_still_work(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    # All test clients share 127.0.0.1: the per-client limit is off to let 64 start at once.
    mirror = await start_mirror(upstream.url, abandoned_downloads=4, max_cold_per_client=0)
    blobs = large_blobs(upstream, 64)
    small = make_layer({"etc/motd": b"hello\n"})
    image = make_image(layers=[small])
    upstream.push_image("library/small", "1", image)
    before = abandoned_total()

    await asyncio.gather(*(read_a_little_and_leave(mirror, blob) for blob in blobs))

    # 60 downloads beyond the budget are cancelled: the mirror hangs up on the upstream.
    await wait_until(
        lambda: cdn_requests(upstream, blobs).count(True) == 60,
        within=WAIT,
        message=lambda: f"60 upstream connections closed: {cdn_requests(upstream, blobs)}",
    )
    assert abandoned_total() - before == 60
    assert len(cdn_requests(upstream, blobs)) == 64, "each blob was asked for once"
    assert cached_blobs(data_dir) == set(), "the 4 within the budget are still downloading"

    # While the 4 crawl on, a small pull goes through.
    manifest = await mirror.get(
        "/v2/library/small/manifests/1", headers={"Accept": image.media_type}
    )
    assert manifest.status == 200
    assert await manifest.read() == image.data
    layer = await mirror.get(f"/v2/library/small/blobs/{small.digest}")
    assert layer.status == 200
    assert await layer.read() == small.data

    # The 4 within the budget finish and are cached; the cancelled ones left nothing.
    hexes = [blob.digest.split(":")[1] for blob in blobs]
    await wait_until(
        lambda: sum(any(h in p for h in hexes) for p in cached_blobs(data_dir)) == 4,
        within=WAIT,
        message="the 4 downloads within the budget are committed",
    )
    assert cdn_requests(upstream, blobs).count(False) == 4
    await wait_until(
        lambda: files_under(data_dir / "tmp") == set(),
        within=WAIT,
        message=lambda: f"no temp files left: {files_under(data_dir / 'tmp')}",
    )


async def test_abandoned_bytes_bounds_what_is_still_to_fetch(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    """Two 2 MB downloads left at once: the first fits 2.5 MB still to fetch, both do not."""
    mirror = await start_mirror(
        upstream.url, abandoned_downloads=8, abandoned_bytes="2.5MiB", max_cold_per_client=0
    )
    first, second = large_blobs(upstream, 2, size=2 * MB)
    await read_a_little_and_leave(mirror, first)
    await read_a_little_and_leave(mirror, second)

    await wait_until(
        lambda: cdn_requests(upstream, [second]) == [True],
        within=WAIT,
        message="the second download is cancelled",
    )
    await wait_until(
        lambda: len(cached_blobs(data_dir)) == 1,
        within=WAIT,
        message="the first download is committed",
    )
    assert cdn_requests(upstream, [first]) == [False]
    upstream.reset_counts()
    assert await sha256_of(mirror, path_of(first)) == first.digest
    assert upstream.requests == [], "the first was cached after its client left"


async def test_a_download_another_client_still_reads_is_not_abandoned(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    mirror = await start_mirror(upstream.url, abandoned_downloads=0)
    (blob,) = large_blobs(upstream, 1)
    async with mirror.get(path_of(blob)) as staying:
        await staying.content.readany()
        await read_a_little_and_leave(mirror, blob)  # joins, then leaves
        rest = await staying.read()
    assert blob.data.endswith(rest)
    assert len(cached_blobs(data_dir)) == 1
    assert cdn_requests(upstream, [blob]) == [False]


async def test_with_no_budget_a_download_stops_with_its_client_and_the_next_pull_works(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    mirror = await start_mirror(upstream.url, abandoned_downloads=0)
    (blob,) = large_blobs(upstream, 1, size=MB // 2)
    await read_a_little_and_leave(mirror, blob)
    await wait_until(
        lambda: cdn_requests(upstream, [blob]) == [True],
        within=WAIT,
        message="the download is cancelled",
    )
    await wait_until(
        lambda: files_under(data_dir / "tmp") == set(), within=WAIT, message="no temp files"
    )
    assert cached_blobs(data_dir) == set()

    assert await sha256_of(mirror, path_of(blob)) == blob.digest
    assert cdn_requests(upstream, [blob]) == [True, False], "fetched afresh, once"
    assert len(cached_blobs(data_dir)) == 1


async def test_a_prefetch_reads_its_own_downloads_so_none_is_abandoned(
    upstream: FakeRegistry, tmp_path: Path, data_dir: Path
) -> None:
    layer = random_layer(MB, seed=3000)
    upstream.push_image("library/big", "1", make_image(layers=[layer]))
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.02, times=None))
    settings = {"upstream": upstream.url, "data_dir": str(data_dir), "abandoned_downloads": 0}
    config_file = tmp_path / "prefetch.toml"
    config_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    before = abandoned_total()

    # `mirror prefetch` in its own event loop (a thread), so the fake keeps answering.
    argv = ["prefetch", "--config", str(config_file), "library/big:1"]
    assert await asyncio.to_thread(cli.main, argv) == 0

    assert layer.digest.split(":")[1] in " ".join(cached_blobs(data_dir))
    assert abandoned_total() == before
    assert cdn_requests(upstream, [layer]) == [False]


async def sha256_of(mirror: Client, path: str) -> str:
    async with mirror.get(path) as resp:
        assert resp.status == 200
        return "sha256:" + hashlib.sha256(await resp.read()).hexdigest()
