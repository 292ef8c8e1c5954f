"""Server processes for synchronous callers (the integration suite, the benchmark): the
generic `ServerProcess` (output to files, bounded start and stop) and `MirrorServer`, the real
`mirror serve`.

The synchronous twin of `testkit.mirrorproc.MirrorProcess` (which the async unit tests use):

    with MirrorServer(upstream.url, tmp_path / "data") as mirror:
        ...  # mirror.url is http://127.0.0.1:<port>, answering GET /v2/ with 200
        assert mirror.stop() == 0, mirror.stderr

Every wait here is bounded; a process that does not stop in time is killed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from testkit.mirrorproc import REPO_ROOT, free_port, mirror_env
from testkit.waiting import WaitTimeout, wait_until_sync

START_TIMEOUT = 15.0  # until a server answers its readiness probe
STOP_TIMEOUT = 5.0  # from SIGTERM to the exit; SIGKILL after that
PORT_ATTEMPTS = 3  # a free port can be taken between choosing and binding it

__all__ = [
    "REPO_ROOT",
    "HttpResponse",
    "MirrorServer",
    "ServerProcess",
    "free_port",
    "http_request",
]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""


def http_request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResponse | None:
    """One plain-HTTP request; None if it could not connect or got no answer in time."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname and parts.port, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path or "/", headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class ServerProcess:
    """A child process whose stdout and stderr go to files in `log_dir` (appended across
    restarts), started with a bounded readiness wait and stopped with SIGTERM, then SIGKILL.
    Subclasses give `argv()` and `ready()`."""

    name = "server"

    def __init__(
        self,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int = 0,
    ) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{self.name}.stdout.log"
        self.stderr_path = log_dir / f"{self.name}.stderr.log"
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd or log_dir
        self.port = port
        self.returncode: int | None = None
        self.killed = False  # the last stop() had to SIGKILL it
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_offset = 0

    # --- what a subclass provides -------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server answers as it should."""
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        if not self.port:
            raise RuntimeError(f"the {self.name} has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"the {self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr since it was last started."""
        try:
            with self.stderr_path.open("rb") as f:
                f.seek(self._stderr_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, within: float = START_TIMEOUT) -> None:
        """Start the process and wait until `ready()`. The first start picks a free port
        (retrying if it was taken meanwhile); later starts reuse it. Fails with the
        process's stderr if it exits first or is not ready in time."""
        if self.running:
            raise RuntimeError(f"the {self.name} is already running")
        fixed = bool(self.port)
        for _attempt in range(1 if fixed else PORT_ATTEMPTS):
            if not fixed:
                self.port = free_port()
            self._spawn()
            if self._wait_ready(within):
                return
            if fixed or "address already in use" not in self.stderr.lower():
                break
        raise AssertionError(
            f"{self.name} exited with {self.returncode} before it was ready; "
            f"argv: {' '.join(self.argv())}\nstderr:\n{self.stderr}"
        )

    def _spawn(self) -> None:
        self.returncode = None
        self.killed = False
        self._stderr_offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only pytest
            )

    def _wait_ready(self, within: float) -> bool:
        """True once ready; False if the process exits first; fails on the deadline."""
        assert self._proc is not None
        proc = self._proc

        def ready_or_exited() -> str | None:
            if proc.poll() is not None:
                return "exited"
            return "ready" if self.ready() else None

        try:
            outcome = wait_until_sync(
                ready_or_exited,
                within=within,
                message=lambda: f"{self.name} is ready; stderr:\n{self.stderr}",
                interval=0.05,
            )
        except WaitTimeout:
            self.stop(signal.SIGKILL)
            raise
        if outcome == "exited":
            self.returncode = proc.returncode
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, within: float = STOP_TIMEOUT) -> int:
        """Send `sig`, wait at most `within` s for the exit, SIGKILL if late (then `killed`).
        Returns the exit status (negative: the signal that ended it). Stopping a stopped
        server returns its last status."""
        if self._proc is None:
            raise RuntimeError(f"the {self.name} has not been started")
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    self._kill_group()
                else:
                    self._proc.send_signal(sig)
            try:
                self._proc.wait(within)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    self._kill_group()
                self._proc.wait(STOP_TIMEOUT)
        self.returncode = self._proc.returncode
        return self.returncode

    def _kill_group(self) -> None:
        """SIGKILL the server and every process of its session (nginx's workers and cache
        managers would outlive their master otherwise; the mirror's own workers die with
        their supervisor anyway)."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGKILL)

    def wait_until(self, condition: Callable[[], bool], within: float, what: str) -> None:
        """Poll `condition` (bounded); fail naming `what` with this server's stderr."""
        wait_until_sync(
            condition,
            within=within,
            message=lambda: f"{what}; stderr:\n{self.stderr}",
            interval=0.05,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self.stop()


class MirrorServer(ServerProcess):
    """`python -m mirror serve` on a loopback port, in front of `upstream_url`, caching in
    `data_dir`.

    Runs in `cwd` (default: a new temp dir beside `data_dir`, so no mirror.toml is found)
    with this environment minus every `MIRROR_*` setting, plus `env`. `--upstream` makes the
    upstream stand for docker.io. Its log (stderr) is in `stderr_path`."""

    name = "mirror"

    def __init__(
        self,
        upstream_url: str,
        data_dir: Path,
        extra_args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int = 0,
    ) -> None:
        if cwd is None:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            cwd = Path(tempfile.mkdtemp(prefix="mirror-cwd-", dir=data_dir.parent))
        super().__init__(cwd, env=mirror_env(env), cwd=cwd, port=port)
        self.upstream_url = upstream_url
        self.data_dir = data_dir
        self.extra_args = tuple(extra_args)

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mirror",
            "serve",
            "--listen",
            self.host,
            "--upstream",
            self.upstream_url,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def ready(self) -> bool:
        resp = http_request(self.url + "/v2/", timeout=1.0)
        # 401: the mirror wants clients to log in (htpasswd), and says so.
        return resp is not None and (
            resp.status == 200 or (resp.status == 401 and "www-authenticate" in resp.headers)
        )
