"""The mirror as a real process: `mirror serve` starts, stops cleanly on a signal, keeps its
cache across restarts, never leaves half-written files behind, and serves a real client
(skopeo) cold and then warm."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from mirror import __version__
from mirror.server.serve import SHUTDOWN_TIMEOUT
from mirror.storage.filesystem import TEMP_GRACE_SECONDS
from testkit.fakeupstream import Blob, FakeRegistry, Fault, Manifest, random_layer
from testkit.mirrorproc import MirrorProcess, free_port, run_mirror
from tests.clients import cached_blobs, get_blob, get_manifest, pull
from tests.conftest import answered, files_under

MB = 1024 * 1024
SKOPEO_TIMEOUT = 30.0


@pytest.fixture
def serve(upstream: FakeRegistry, data_dir: Path, workdir: Path) -> Callable[[], MirrorProcess]:
    """A new `mirror serve` process in front of the fake upstream, on the test's data dir."""
    return lambda: MirrorProcess(upstream.url, data_dir, cwd=workdir)


def downloads_in_flight(data_dir: Path) -> int:
    """Downloads with a data file in tmp/ (each also has a lock and a size file)."""
    return sum(1 for name in files_under(data_dir / "tmp") if name.endswith(".download"))


# --- the command ----------------------------------------------------------------------------


async def test_version_prints_the_package_version(workdir: Path) -> None:
    result = await run_mirror("--version", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mirror {__version__}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_answers_and_exits_zero_on_a_stop_signal(
    serve: Callable[[], MirrorProcess], http: aiohttp.ClientSession, sig: signal.Signals
) -> None:
    async with serve() as proc:
        async with http.get(proc.url + "/v2/") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            assert await resp.json() == {}
        assert f"listening on 127.0.0.1:{proc.port}" in proc.stderr
        # stop() waits a bounded time and SIGKILLs a process that is late.
        assert await proc.stop(sig) == 0, proc.stderr
        assert not proc.killed


async def stalled_get(port: int, path: str) -> asyncio.StreamWriter:
    """Send a GET, read the response head, then stop reading: a client on a dead network.
    A tiny receive buffer makes the server's writes block almost at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return writer


@pytest.mark.slow
async def test_a_client_that_stops_reading_cannot_hold_shutdown_past_the_shutdown_timeout(
    serve: Callable[[], MirrorProcess], http: aiohttp.ClientSession, upstream: FakeRegistry
) -> None:
    blob = random_layer(32 * MB, seed=32)  # far more than the socket buffers hold
    upstream.push_blob("library/big", blob)
    async with serve() as proc:
        assert await get_blob(http, proc.url, "library/big", blob.digest) == blob.data
        writer = await stalled_get(proc.port, f"/v2/library/big/blobs/{blob.digest}")
        try:
            returncode = await proc.stop(within=SHUTDOWN_TIMEOUT + 2)
        finally:
            writer.close()
        assert (returncode, proc.killed) == (0, False), proc.stderr


# --- the cache outlives the process -----------------------------------------------------------


async def test_restart_keeps_the_cache(
    serve: Callable[[], MirrorProcess],
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    alpine: Manifest,
) -> None:
    async with serve() as first:
        pulled = await pull(http, first.url, "library/alpine", "3.19")
        assert await first.stop() == 0, first.stderr
    assert pulled == {alpine.digest: alpine.data} | {b.digest: b.data for b in alpine.blobs}

    async with serve() as second:
        upstream.reset_counts()
        again = {
            alpine.digest: await get_manifest(http, second.url, "library/alpine", alpine.digest)
        }
        for blob in alpine.blobs:
            again[blob.digest] = await get_blob(http, second.url, "library/alpine", blob.digest)
        assert again == pulled
        assert upstream.requests == [], "a restarted mirror must serve its cache without asking"
        assert await second.stop() == 0, second.stderr


# --- no half-written files -------------------------------------------------------------------


@pytest.fixture
def slow_blob(upstream: FakeRegistry) -> Blob:
    """An 8 MB blob whose first download takes about 4 s (128 chunks of 64 KiB, 30 ms apart),
    so a process can be stopped in the middle of it."""
    blob = random_layer(8 * MB, seed=80)
    upstream.push_blob("library/slow", blob)
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.03))
    return blob


async def test_sigterm_during_a_download_aborts_it_and_leaves_no_temp_files(
    serve: Callable[[], MirrorProcess],
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    data_dir: Path,
    slow_blob: Blob,
) -> None:
    async with serve() as proc:
        resp = await http.get(f"{proc.url}/v2/library/slow/blobs/{slow_blob.digest}")
        assert resp.status == 200
        first = await resp.content.readany()
        assert first and slow_blob.data.startswith(first)
        assert downloads_in_flight(data_dir) == 1

        assert await proc.stop() == 0, proc.stderr
        assert not proc.killed

        # The client is cut off: it never sees a complete body.
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.release()
    assert files_under(data_dir / "tmp") == set()
    assert cached_blobs(data_dir) == set()

    # A new process on the same data dir downloads the blob afresh and serves it whole.
    upstream.clear_faults()
    async with serve() as proc:
        data = await get_blob(http, proc.url, "library/slow", slow_blob.digest)
        assert data == slow_blob.data
        assert await proc.stop() == 0, proc.stderr
    assert len(cached_blobs(data_dir)) == 1
    assert files_under(data_dir / "tmp") == set()


async def test_temp_files_left_by_a_crash_are_removed_at_start(
    serve: Callable[[], MirrorProcess], data_dir: Path
) -> None:
    leftover = data_dir / "tmp" / "xyz.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a blob")
    old = leftover.stat().st_mtime - TEMP_GRACE_SECONDS - 1  # no writer may still commit it
    os.utime(leftover, (old, old))
    async with serve() as proc:
        assert not leftover.exists()
        assert files_under(data_dir / "tmp") == set()
        assert "removed 1 temp files" in proc.stderr


async def test_sigkill_during_a_download_leaves_only_a_temp_file_which_the_next_start_removes(
    serve: Callable[[], MirrorProcess],
    http: aiohttp.ClientSession,
    upstream: FakeRegistry,
    data_dir: Path,
    slow_blob: Blob,
) -> None:
    async with serve() as proc:
        resp = await http.get(f"{proc.url}/v2/library/slow/blobs/{slow_blob.digest}")
        assert await resp.content.readany()
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.release()
    assert downloads_in_flight(data_dir) == 1, "a crash leaves its temp files"
    assert cached_blobs(data_dir) == set(), "but never a partial blob"

    upstream.clear_faults()
    async with serve() as proc:
        assert files_under(data_dir / "tmp") == set()
        assert await get_blob(http, proc.url, "library/slow", slow_blob.digest) == slow_blob.data


# --- a real client ---------------------------------------------------------------------------


@pytest.fixture
def skopeo_env(tmp_path: Path) -> dict[str, str]:
    """An environment for skopeo that reads none of the user's or system's client config:
    a fresh HOME with an accept-anything policy, no registries.conf entries, no lookaside
    signature stores and no credentials."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    home = tmp_path / "home"
    containers = home / ".config" / "containers"
    (containers / "registries.d").mkdir(parents=True)
    (containers / "policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    )
    (containers / "registries.conf").write_text("")
    drop = ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CONTAINERS_")}
    env["HOME"] = str(home)
    return env


async def skopeo(env: dict[str, str], *args: str) -> str:
    """Run skopeo (bounded); returns its stdout, fails with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SKOPEO_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"skopeo {' '.join(args)} took more than {SKOPEO_TIMEOUT} s") from None
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{err.decode()}"
    return out.decode()


def check_dir_copy(target: Path, image: Manifest) -> None:
    """A `dir:` copy holds exactly the manifest bytes, a version file, and each blob in a
    file named by its hex digest whose content hashes to that digest."""
    expected = {"manifest.json", "version"} | {
        b.digest.removeprefix("sha256:") for b in image.blobs
    }
    assert files_under(target) == expected
    assert (target / "manifest.json").read_bytes() == image.data
    for blob in image.blobs:
        data = (target / blob.digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest


@pytest.mark.skopeo
async def test_skopeo_copies_cold_then_warm_with_correct_digests(
    serve: Callable[[], MirrorProcess],
    upstream: FakeRegistry,
    alpine: Manifest,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    async with serve() as proc:
        image = f"docker://127.0.0.1:{proc.port}/library/alpine:3.19"

        await skopeo(skopeo_env, "copy", "--src-tls-verify=false", image, f"dir:{tmp_path}/cold")
        check_dir_copy(tmp_path / "cold", alpine)
        assert answered(upstream, kind="blob", method="GET") == len(alpine.blobs)

        upstream.reset_counts()
        await skopeo(skopeo_env, "copy", "--src-tls-verify=false", image, f"dir:{tmp_path}/warm")
        check_dir_copy(tmp_path / "warm", alpine)
        assert answered(upstream, kind="blob") == 0, "a warm copy must not fetch any blob"
        assert upstream.count(server="cdn") == 0

        info = json.loads(await skopeo(skopeo_env, "inspect", "--tls-verify=false", image))
        assert info["Digest"] == alpine.digest
        assert info["Layers"] == [layer.digest for layer in alpine.layers]
        assert answered(upstream, kind="blob") == 0
        assert await proc.stop() == 0, proc.stderr


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set size (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
async def test_memory_stays_bounded_while_streaming_a_large_cold_blob_to_several_clients(
    serve: Callable[[], MirrorProcess], http: aiohttp.ClientSession, upstream: FakeRegistry
) -> None:
    """No full-blob buffers: 4 clients of a cold 200 MB blob, and a 200 MB warm read, leave
    the mirror's peak RSS far below the blob's size."""
    blob = random_layer(200 * MB, seed=200)
    upstream.push_blob("library/huge", blob)
    url_path = f"/v2/library/huge/blobs/{blob.digest}"

    async with serve() as proc:
        baseline = peak_rss_bytes(proc.pid)

        async def read_hash() -> str:
            digest = hashlib.sha256()
            async with http.get(proc.url + url_path) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(MB):
                    digest.update(chunk)
            return "sha256:" + digest.hexdigest()

        assert await asyncio.gather(*(read_hash() for _ in range(4))) == [blob.digest] * 4
        assert await read_hash() == blob.digest
        growth = peak_rss_bytes(proc.pid) - baseline
    assert growth < 64 * MB, f"peak RSS grew by {growth / MB:.0f} MB for a 200 MB blob"


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_unreachable_redis_at_start_is_a_clear_error_naming_it(
    workdir: Path, workers: str
) -> None:
    """Whether the mirror serves in its own process or in workers (their supervisor opens
    the metadata store before it starts them, and says so once)."""
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    args = ["--listen", "127.0.0.1:0", "--redis-url", url, "--workers", workers]
    result = await run_mirror("serve", *args, cwd=workdir)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert result.stderr.count("cannot start") == 1
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
