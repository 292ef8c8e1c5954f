"""Crash safety and a full disk, on real `mirror serve` processes.

- `kill -9` in the middle of a cold download of a large blob, with several clients streaming
  it: none of them completes, no partial blob ever becomes visible, the next start removes
  the leftovers, and the same pull then succeeds. (tests/test_process.py has the basic case,
  one client and SIGTERM or SIGKILL; here: many clients, HEAD after the restart, and a
  worker of several killed while the other worker's clients follow its download.)
- A full disk (a small tmpfs as the data dir): a blob that cannot fit is refused before its
  first byte (or passed through uncached when `min_free_space` is set), a disk that fills up
  during downloads aborts only the one that hit it, manifests are still answered, nothing
  partial stays behind, and the process keeps serving what it has cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from testkit.fakeupstream import Blob, FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.mirrorproc import MirrorProcess
from testkit.waiting import wait_until
from tests.clients import ACCEPT, cached_blobs, get_blob, pull
from tests.conftest import content_files, files_under
from tests.scrape import delta, parse
from tests.transfers import Transfer, start_transfers, transfer

MB = 1024 * 1024
LARGE = 64 * MB
# The CDN sends the large blob in 64 KiB chunks this far apart: about 5 s for all of it,
# so the mirror is killed well inside the download.
CHUNK_DELAY = 0.005
KILL_AFTER = 8 * MB  # bytes in the temp file when the mirror is killed
CLIENTS = 4
WAIT = 20.0  # bound on every wait below
DISK = "8m"  # the tmpfs a full-disk test runs on


def download_file(data_dir: Path) -> Path | None:
    found = list((data_dir / "tmp").glob("*.download"))
    return found[0] if found else None


async def until_downloaded(data_dir: Path, at_least: int) -> int:
    """Wait until the download's temp file holds `at_least` bytes; its size then."""

    def grown() -> int | None:
        path = download_file(data_dir)
        size = path.stat().st_size if path is not None else -1
        return size if size >= at_least else None

    return await wait_until(
        grown,
        within=WAIT,
        message=f"a download's temp file of {at_least} bytes",
        interval=0.01,
        ignoring=(FileNotFoundError,),  # renamed or removed between the glob and the stat
    )


def lock_holder(lock: Path) -> int:
    """The pid holding the flock on `lock`, from /proc/locks."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and fields[5].rsplit(":", 1)[1] == str(inode):
            return int(fields[4])
    raise AssertionError(f"nobody holds {lock}")


@pytest.fixture
def large(upstream: FakeRegistry) -> Blob:
    blob = random_layer(LARGE, seed=64)
    upstream.push_blob("library/large", blob)
    return blob


def blob_url(base: str, name: str, blob: Blob) -> str:
    return f"{base}/v2/{name}/blobs/{blob.digest}"


# --- kill -9 ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_during_a_cold_download_serves_no_partial_blob_and_the_pull_then_works(
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    large: Blob,
    data_dir: Path,
    workdir: Path,
) -> None:
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=CHUNK_DELAY))
    async with MirrorProcess(upstream.url, data_dir, cwd=workdir) as proc:
        url = blob_url(proc.url, "library/large", large)
        records, tasks = await start_transfers(http, url, CLIENTS, WAIT)
        written = await until_downloaded(data_dir, KILL_AFTER)
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)

    # Every client saw a failed transfer; none got a complete body.
    for record in records:
        assert record.status == 200
        assert not record.complete, record
        assert 0 < record.received < large.size, record
    # The crash left a partial temp file (and its lock and size files), never a blob.
    assert cached_blobs(data_dir) == set()
    leftover = download_file(data_dir)
    assert leftover is not None and written <= leftover.stat().st_size < large.size
    assert len(files_under(data_dir / "tmp")) == 3

    upstream.clear_faults()
    upstream.reset_counts()
    async with MirrorProcess(upstream.url, data_dir, cwd=workdir) as proc:
        assert files_under(data_dir / "tmp") == set(), "leftovers are removed at start"
        assert "removed 3 temp files left by an earlier run" in proc.stderr
        url = blob_url(proc.url, "library/large", large)
        # HEAD is answered from the upstream's size: the partial file is nobody's answer.
        async with http.head(url) as resp:
            assert (resp.status, resp.content_length) == (200, large.size)
        assert upstream.count(kind="blob", method="HEAD", server="registry") >= 1
        records, tasks = await start_transfers(http, url, CLIENTS, WAIT)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)
        for record in records:
            assert record.complete and record.digest == large.digest, record
        assert upstream.count(server="cdn", method="GET") == 1, "downloaded once, afresh"
        assert await proc.stop() == 0, proc.stderr
    assert cached_blobs(data_dir) == {f"blobs/sha256/{large.digest[7:9]}/{large.digest[7:]}"}
    assert files_under(data_dir / "tmp") == set()


@pytest.mark.slow
async def test_kill_9_of_the_downloading_worker_cuts_every_follower_and_the_pull_then_works(
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    large: Blob,
    data_dir: Path,
    workdir: Path,
) -> None:
    """Two workers: one downloads, the other's clients stream from its temp file. When the
    downloading worker is killed, the others' clients are cut too (never served a partial
    file as a whole blob), the supervisor starts a new worker, and the pull works."""
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=CHUNK_DELAY))
    proc = MirrorProcess(upstream.url, data_dir, cwd=workdir, workers="2")
    async with proc:
        url = blob_url(proc.url, "library/large", large)
        records, tasks = await start_transfers(http, url, 12, WAIT)
        await until_downloaded(data_dir, KILL_AFTER)
        downloader = lock_holder(data_dir / "tmp" / f"sha256-{large.digest[7:]}.lock")
        assert downloader != proc.pid
        os.kill(downloader, signal.SIGKILL)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)
        for record in records:
            assert record.status == 200
            assert not record.complete, record
        assert cached_blobs(data_dir) == set()

        restarted = f"worker {downloader} exited with -9; starting a new one"
        await proc.wait_for_log(restarted, within=WAIT)
        upstream.clear_faults()
        records, tasks = await start_transfers(http, url, 4, WAIT)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks)
        for record in records:
            assert record.complete and record.digest == large.digest, record
        assert files_under(data_dir / "tmp") == set(), "the new download reused the leftovers"
        assert await proc.stop() == 0, proc.stderr
    assert len(cached_blobs(data_dir)) == 1


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK bytes (the test runs as root), unmounted afterwards."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {DISK} tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmounted = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path) -> None:
    """Take every free byte of the filesystem `path` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (MB, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)


def serving(data_dir: Path, upstream: FakeRegistry, workdir: Path, min_free: str) -> MirrorProcess:
    return MirrorProcess(
        upstream.url, data_dir, cwd=workdir, env={"MIRROR_MIN_FREE_SPACE": min_free}
    )


async def still_serves(http: aiohttp.ClientSession, proc: MirrorProcess, image: Manifest) -> None:
    """The process is alive and serves the cached image whole, without the upstream."""
    async with http.get(proc.url + "/healthz") as resp:
        assert resp.status == 200
    pulled = await pull(http, proc.url, "library/alpine", "3.19")
    assert pulled == {image.digest: image.data} | {b.digest: b.data for b in image.blobs}


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, str]:
    body = await resp.json()
    error: dict[str, str] = body["errors"][0]
    return error


async def test_a_full_disk_refuses_what_cannot_fit_and_keeps_serving_the_cache(
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    alpine: Manifest,
    small_disk: Path,
    workdir: Path,
) -> None:
    """`min_free_space = 0` (no passing through): a blob larger than the free space is
    refused before its first byte; on a disk with no byte left a new manifest is still
    answered (uncached)."""
    data_dir = small_disk / "data"
    big = random_layer(12 * MB, seed=12)  # more than the whole disk
    upstream.push_blob("library/big", big)
    fresh = make_image(seed=77)
    upstream.push_image("library/fresh", "1", fresh)

    async with serving(data_dir, upstream, workdir, "0") as proc:
        await pull(http, proc.url, "library/alpine", "3.19")
        cached = content_files(data_dir)

        async with http.get(blob_url(proc.url, "library/big", big)) as resp:
            assert resp.status == 503
            error = await error_of(resp)
        assert error["code"] == "UNAVAILABLE"
        assert f"cannot store this blob ({big.size} bytes)" in error["message"]
        assert content_files(data_dir) == cached, "nothing partial, no temp files"
        upstream.reset_counts()
        await still_serves(http, proc, alpine)
        assert upstream.requests == []

        # Not a byte left: a new manifest is answered all the same, and not kept.
        fill(small_disk / "filler")
        assert free_bytes(small_disk) < 4096
        async with http.get(
            f"{proc.url}/v2/library/fresh/manifests/{fresh.digest}", headers=ACCEPT
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == fresh.data
        layer = fresh.layers[0]
        async with http.get(blob_url(proc.url, "library/fresh", layer)) as resp:
            assert resp.status == 503
            assert "cannot store this blob" in (await error_of(resp))["message"]
        assert not {p for p in content_files(data_dir) - cached if not p.endswith(".type")}
        await still_serves(http, proc, alpine)
        assert "Traceback" not in proc.stderr
        assert await proc.stop() == 0, proc.stderr


async def test_a_disk_filling_up_during_downloads_aborts_only_the_one_that_hit_it(
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    alpine: Manifest,
    small_disk: Path,
    workdir: Path,
) -> None:
    """Two cold blobs that fit one at a time but not together, downloaded at once: the one
    whose write fails is aborted (its clients cut, its temp file removed), the other is
    cached, and the mirror goes on serving."""
    data_dir = small_disk / "data"
    async with serving(data_dir, upstream, workdir, "0") as proc:
        await pull(http, proc.url, "library/alpine", "3.19")
        cached = content_files(data_dir)
        each = int(free_bytes(small_disk) * 0.6)
        blobs = [random_layer(each, seed=seed) for seed in (1, 2)]
        for blob in blobs:
            upstream.push_blob("library/half", blob)
        upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.002, times=None))

        records = [Transfer() for _ in blobs]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(
                *(
                    transfer(http, blob_url(proc.url, "library/half", blob), record)
                    for blob, record in zip(blobs, records, strict=True)
                )
            )
        done = [blob for blob, record in zip(blobs, records, strict=True) if record.complete]
        assert len(done) == 1, (records, proc.stderr)
        failed = next(r for r in records if not r.complete)
        assert failed.status == 200 and failed.error is not None, failed
        assert next(r for r in records if r.complete).digest == done[0].digest
        assert "No space left on device" in proc.stderr
        digest = done[0].digest.removeprefix("sha256:")
        assert content_files(data_dir) == cached | {f"blobs/sha256/{digest[:2]}/{digest}"}

        upstream.clear_faults()
        await still_serves(http, proc, alpine)
        assert await get_blob(http, proc.url, "library/half", done[0].digest) == done[0].data
        # The other one does not fit any more: refused cleanly now.
        other = next(blob for blob in blobs if blob is not done[0])
        async with http.get(blob_url(proc.url, "library/half", other)) as resp:
            assert resp.status == 503
        assert "Traceback" not in proc.stderr
        assert await proc.stop() == 0, proc.stderr


@pytest.mark.parametrize(
    "min_free",
    ["64MiB", "1MiB"],
    ids=["free-space-below-min_free_space", "blob-larger-than-the-free-space"],
)
async def test_with_min_free_space_a_blob_that_cannot_be_cached_is_passed_through(
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    alpine: Manifest,
    small_disk: Path,
    workdir: Path,
    min_free: str,
) -> None:
    """Below `min_free_space`, or for a blob larger than the free space, the client gets the
    blob streamed from the upstream (verified, not cached)."""
    data_dir = small_disk / "data"
    big = random_layer(12 * MB, seed=12)
    upstream.push_blob("library/big", big)
    async with serving(data_dir, upstream, workdir, "0") as proc:
        await pull(http, proc.url, "library/alpine", "3.19")
        assert await proc.stop() == 0, proc.stderr
    cached = content_files(data_dir)

    async with serving(data_dir, upstream, workdir, min_free) as proc:
        before = parse(await (await http.get(proc.url + "/metrics")).text())
        assert await get_blob(http, proc.url, "library/big", big.digest) == big.data
        after = parse(await (await http.get(proc.url + "/metrics")).text())
        assert delta(after, before, "mirror_cache_passthrough_total") == 1
        assert content_files(data_dir) == cached
        await still_serves(http, proc, alpine)
        assert await proc.stop() == 0, proc.stderr
