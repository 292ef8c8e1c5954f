"""Several worker processes on one port: the parent binds the socket, forks the workers,
and supervises them.

A Python process serves from one core; workers let the mirror use all of them. They share
the listening socket (the kernel hands each connection to one of them), the data dir and
the metadata store, which is where they coordinate: one download per blob (a file lock in
the data dir) and one revalidation per tag (a lock in the metadata store).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)
# A worker that dies within this many seconds of its start is not restarted in a loop.
_RESTART_BACKOFF_SECONDS = 1.0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker inherits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


def supervise(
    count: int,
    run_worker: Callable[[], int],
    *,
    on_exit: Callable[[int], None] | None = None,
    on_reload: Callable[[], object] | None = None,
) -> int:
    """Fork `count` workers running `run_worker()`, restart any that dies, and on SIGTERM
    or SIGINT stop them all (each shuts down gracefully) and return 0. `on_exit(pid)` is
    called for every worker that ends (its live metrics must stop counting).

    With `on_reload`, SIGHUP calls it and is relayed to every worker. A worker starts with
    SIGHUP blocked, so one that arrives while it is starting waits rather than being lost;
    `run_worker` must unblock it once it handles it (`signal.pthread_sigmask`)."""
    supervisor = _Supervisor(run_worker, on_exit=on_exit, on_reload=on_reload)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    if on_reload is not None:
        signal.signal(signal.SIGHUP, supervisor.reload)
    for _ in range(count):
        supervisor.spawn()
    return supervisor.wait()


class _Supervisor:
    """The parent's side: which workers run, since when, and whether it is stopping."""

    def __init__(
        self,
        run_worker: Callable[[], int],
        *,
        on_exit: Callable[[int], None] | None,
        on_reload: Callable[[], object] | None,
    ) -> None:
        self._run_worker = run_worker
        self._on_exit = on_exit
        self._on_reload = on_reload
        self._stopping = False
        self._workers: dict[int, float] = {}  # pid -> start time

    def spawn(self) -> None:
        reloads = self._on_reload is not None
        if reloads:  # the worker inherits the mask; see supervise's docstring
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._work(supervisor)
        self._workers[pid] = time.monotonic()
        if reloads:  # a SIGHUP that came meanwhile reaches the new worker too
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def _work(self, supervisor: int) -> NoReturn:
        """The forked worker's life: its own signal handling, then `run_worker()`."""
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which relays it
        _die_with(supervisor)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self._on_reload is not None:  # not the supervisor's relay (blocked, it stays pending)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        code = 1
        try:
            code = self._run_worker()
        finally:
            os._exit(code)

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reload(self, signum: int, frame: FrameType | None) -> None:
        assert self._on_reload is not None
        self._on_reload()
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def wait(self) -> int:
        """Reap workers until none is left, starting a new one for each that dies while
        not stopping; 1 if any died so."""
        failures = 0
        while self._workers:
            pid, status = os.wait()
            if self._on_exit is not None:
                self._on_exit(pid)
            started = self._workers.pop(pid, None)
            if started is None or self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error("worker %d exited with %d; starting a new one", pid, code)
            failures += 1
            if time.monotonic() - started < _RESTART_BACKOFF_SECONDS:
                time.sleep(_RESTART_BACKOFF_SECONDS)
            if not self._stopping:
                self.spawn()
        return 0 if not failures or self._stopping else 1


def _die_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies, even by SIGKILL:
    orphaned workers would keep the port and write into a data dir a new mirror cleans."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to ask the kernel
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
