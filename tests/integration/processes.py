"""Process plumbing shared by the private daemons: commands with a timeout, daemons with their
log in a file and their own process group, and short work directories under /tmp that are
unmounted before they are removed.

Every subprocess is bounded by a timeout, and leaving a daemon's `with` block stops it
(SIGTERM, SIGKILL to its process group after a bounded wait), unmounts whatever is still
mounted below its directory and removes the directory. Environments are minimal: no proxy
settings and none of the developer's client settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from testkit.waiting import WaitTimeout, wait_until_sync

START_TIMEOUT = 60.0  # until the daemon answers its CLI
STOP_TIMEOUT = 15.0  # from SIGTERM to SIGKILL
COMMAND_TIMEOUT = 180.0  # any one CLI command (a pull of the 100 MB image included)
PROBE_TIMEOUT = 5.0  # one readiness probe
LOG_TAIL_LINES = 40

_MNT_DETACH = 2
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DaemonError(RuntimeError):
    """A daemon did not start (the message carries its log tail) or did not stop."""


@dataclass(frozen=True)
class Result:
    """One finished CLI command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """stdout and stderr together, for assertions on what the user would see."""
        return self.stdout + self.stderr

    def check(self) -> Result:
        """This result, or an AssertionError showing the command and everything it printed."""
        if self.returncode != 0:
            raise AssertionError(f"{self.describe()} failed")
        return self

    def describe(self) -> str:
        return (
            f"`{' '.join(self.args)}` exited {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
    stdin: str | None = None,
) -> Result:
    """Run a command to completion (`stdin`: text to feed it, else no input); past `timeout`
    its whole process group is killed and the test fails with what it printed so far."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # a timeout kills helpers it spawned too
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            proc.kill()
            out, err = "", ""
        raise AssertionError(
            f"`{' '.join(args)}` did not finish in {timeout} s\n--- stdout\n{out}--- stderr\n{err}"
        ) from None
    return Result(tuple(args), proc.returncode, out, err, time.monotonic() - started)


def host_platform() -> str:
    """This machine as an OCI platform ("linux/amd64"), which clients pull by default."""
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return f"linux/{arch}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ("" if there is none yet)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first (so they can be unmounted in order)."""
    found: list[Path] = []
    prefix = str(directory).rstrip("/")
    with Path("/proc/self/mountinfo").open() as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            point = line.split(" ")[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(directory: Path) -> list[Path]:
    """Lazily unmount everything at or below `directory`; returns what is still mounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(3):  # a mount may be stacked on another at the same point
        points = mounts_under(directory)
        if not points:
            return []
        for point in points:
            libc.umount2(str(point).encode(), _MNT_DETACH)
    return mounts_under(directory)


class Daemon:
    """A context manager over `start()` / `close()`: closed even when starting fails half
    way, so nothing is left running or mounted."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Workdir:
    """A short private directory under /tmp, removed at the end unless something there is
    still mounted (removing through a mount could delete what the mount points at)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))

    def remove(self) -> None:
        left = unmount_all_under(self.path)
        if left:
            warnings.warn(
                f"left {self.path} in place: still mounted: {', '.join(map(str, left))}",
                stacklevel=2,
            )
            return
        shutil.rmtree(self.path, ignore_errors=True)


class Process:
    """A long-running daemon with its output in a log file, in its own process group."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str]):
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Poll `probe` until it is true; fail with the log tail if the daemon exits first or
        the deadline passes."""

        def started() -> bool:
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"{self.name} exited with {self.proc.returncode} while starting\n"
                    f"{' '.join(self.args)}\n--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
                )
            return probe()

        try:
            wait_until_sync(started, within=timeout, message=f"{self.name} is ready", interval=0.2)
        except WaitTimeout as exc:
            raise DaemonError(
                f"{self.name} did not become ready within {timeout} s\n"
                f"{' '.join(self.args)}\n--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
            ) from exc

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL to its whole process group if it is still
        running (only then is the group id certainly still ours); the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5.0)
        self._log.close()
        return self.proc.returncode


def write_lines(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def base_env(**extra: str) -> dict[str, str]:
    """A minimal environment: no proxy settings (everything here is loopback) and none of the
    developer's client settings (DOCKER_HOST, CONTAINER_HOST, REGISTRY_AUTH_FILE, ...)."""
    env = {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LANG": "C.UTF-8"}
    env.update(extra)
    return env
