"""The real `mirror` command as a subprocess, for tests of what only a process has: startup,
signals, exit codes, and a data dir that outlives one run.

Everything here is asynchronous: the fake upstream the mirror talks to runs in the test's
own event loop, so waiting on the child must never block that loop. Every wait is bounded.

    async with MirrorProcess(upstream.url, data_dir, cwd=tmp_path) as proc:
        ...  # proc.url is http://127.0.0.1:<port>, answering GET /v2/
        assert await proc.stop() == 0
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

from testkit.waiting import WaitTimeout, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 10.0  # until GET /v2/ answers 200
STOP_TIMEOUT = 4.0  # from the signal to the exit; SIGKILL after that
COMMAND_TIMEOUT = 10.0  # a one-shot command such as `mirror --version`
LOG_TIMEOUT = 10.0  # until a line a test waits for is logged


def free_port() -> int:
    """A loopback port nothing listens on right now (the caller must bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mirror_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a mirror child: this one without any `MIRROR_*` setting (so the
    developer's shell cannot change a test), this tree's code first on the import path,
    plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_mirror(*args: str, cwd: Path, within: float = COMMAND_TIMEOUT) -> Completed:
    """Run `python -m mirror ARGS` to completion (killed if it takes longer than `within` s)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mirror",
        *args,
        cwd=cwd,
        env=mirror_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"`mirror {' '.join(args)}` did not finish in {within} s") from None
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class MirrorProcess:
    """`python -m mirror serve` on a free loopback port, in front of `upstream_url`.

    Runs in `cwd` (a temp dir, so the repository's mirror.toml is never picked up). Its
    stderr, where the mirror logs, is collected continuously in `stderr`. Use it as an
    async context manager: the process is always gone after the block, killed if need be.
    It serves in one process unless told `workers` (`--workers`; None: the config decides,
    by default one worker per CPU it may use, so pin it to `cpus` to choose how many): a
    signal, a pause or a kill then reaches the process that serves, which is what most tests
    of a process are about.
    """

    def __init__(
        self,
        upstream_url: str,
        data_dir: Path,
        *,
        cwd: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        workers: str | None = "1",
        cpus: Collection[int] | None = None,
    ) -> None:
        self.upstream_url = upstream_url
        self.data_dir = data_dir
        self.cwd = cwd
        self.extra_args = tuple(extra_args)
        self.env = mirror_env(env)
        self.workers = workers
        self.cpus = cpus  # the CPUs it may run on (as `taskset` pins it); None: any
        self.port = 0
        self.returncode: int | None = None
        self.killed = False  # stop() had to SIGKILL it
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._stderr_grew = asyncio.Event()  # set by every chunk read
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the mirror process is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the mirror process is not started")
        return self._proc.pid

    @property
    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self._stderr.decode(errors="replace")

    async def wait_for_log(self, text: str, *, count: int = 1, within: float = LOG_TIMEOUT) -> None:
        """Wait until stderr holds `text` at least `count` times (woken by each chunk the
        process writes, not by polling); fail with the stderr after `within` s."""
        try:
            async with asyncio.timeout(within):
                while self.stderr.count(text) < count:
                    self._stderr_grew.clear()
                    await self._stderr_grew.wait()
        except TimeoutError:
            raise AssertionError(
                f"{text!r} not logged {count} times within {within} s; stderr:\n{self.stderr}"
            ) from None

    async def start(self, within: float = START_TIMEOUT) -> None:
        """Start the process and wait until it answers `GET /v2/` with 200.

        Fails with the process's stderr if it exits first or does not answer in time. The
        free port may be taken between choosing and binding it; that is retried.
        """
        if self._proc is not None:
            raise RuntimeError("already started")
        for _attempt in range(3):
            await self._spawn(free_port())
            if await self._wait_ready(within):
                return
            if "address already in use" not in self.stderr.lower():
                break
            self._proc = None
        raise AssertionError(
            f"mirror serve exited with {self.returncode} before answering GET /v2/; "
            f"stderr:\n{self.stderr}"
        )

    def argv(self, port: int) -> list[str]:
        """The command line of the process listening on `port`."""
        return [
            sys.executable,
            "-m",
            "mirror",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            self.upstream_url,
            "--data-dir",
            str(self.data_dir),
            *([] if self.workers is None else ["--workers", self.workers]),
            *self.extra_args,
        ]

    async def _spawn(self, port: int) -> None:
        self.port = port
        self._stderr.clear()
        self.returncode = None
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv(port),
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=None if self.cpus is None else self._pin,
        )
        assert self._proc.stderr is not None
        self._reader = asyncio.create_task(self._collect(self._proc.stderr))

    def _pin(self) -> None:
        """In the child, before it runs the mirror: its affinity."""
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        # Draining the pipe continuously also keeps a chatty child from blocking on it.
        while chunk := await stream.read(65536):
            self._stderr += chunk
            self._stderr_grew.set()

    def _probe_session(self) -> aiohttp.ClientSession:
        """The session readiness is probed with (a TLS mirror trusts its own CA here)."""
        return aiohttp.ClientSession()

    async def _wait_ready(self, within: float) -> bool:
        """True once GET /v2/ answers 200; False if the process exits first."""
        assert self._proc is not None
        proc = self._proc
        probe_timeout = aiohttp.ClientTimeout(total=1.0)

        async def answered_or_exited(session: aiohttp.ClientSession) -> str | None:
            if proc.returncode is not None:
                return "exited"
            async with session.get(self.url + "/v2/", timeout=probe_timeout) as resp:
                return "answered" if resp.status == 200 else None

        try:
            async with self._probe_session() as session:
                outcome = await wait_until(
                    lambda: answered_or_exited(session),
                    within=within,
                    message=lambda: f"no 200 from {self.url}/v2/; stderr:\n{self.stderr}",
                    interval=0.05,
                    ignoring=(aiohttp.ClientError, TimeoutError),  # not listening yet
                )
        except WaitTimeout:
            await self.stop(signal.SIGKILL)
            raise
        if outcome == "exited":
            await self._reap()
            return False
        return True

    async def stop(self, sig: int = signal.SIGTERM, within: float = STOP_TIMEOUT) -> int:
        """Send `sig` and wait (at most `within` s) for the exit; SIGKILL if it is late, and
        then `killed` is True. Returns the exit status (negative: killed by that signal)."""
        if self._proc is None:
            raise RuntimeError("the mirror process is not started")
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)
            try:
                await asyncio.wait_for(self._proc.wait(), within)
            except TimeoutError:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        await self._reap()
        assert self.returncode is not None
        return self.returncode

    async def _reap(self) -> None:
        """Collect the exit status and the rest of stderr."""
        assert self._proc is not None
        self.returncode = await self._proc.wait()
        if self._reader is not None:
            # The pipe reaches EOF when the process is gone; bounded in case a grandchild
            # inherited it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
            if not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader

    async def __aenter__(self) -> MirrorProcess:
        try:
            await self.start()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        if self._proc is not None:
            await self.stop()
