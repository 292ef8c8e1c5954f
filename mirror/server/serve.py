"""Running the server: listeners, TLS reloads, worker processes and the event loop, with a
shutdown that never waits on a client longer than its budget.

Nothing here imports prometheus-client at module level (the application's modules do, so
they are imported in `_serve_app`): with several workers it must be imported only after
PROMETHEUS_MULTIPROC_DIR is set (see `serve`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from mirror import heap, logs, wiring
from mirror.config import Config
from mirror.config.workers import AUTO, Workers, worker_count
from mirror.meta import MetaStoreError, Replica
from mirror.server import tls, workers

# Seconds open requests get to finish on SIGTERM/Ctrl-C (downloads are aborted at once).
SHUTDOWN_TIMEOUT = 5.0


def serve(cfg: Config) -> int:
    """`mirror serve`: until SIGTERM/SIGINT, in this process or in `workers` processes; the
    exit status."""
    logs.configure(cfg.logging.log_level, cfg.logging.log_format)
    heap.keep()
    server_tls = None
    if cfg.serving.tls_cert is not None and cfg.serving.tls_key is not None:
        # A SIGHUP (reload) waits until the server handles it: it must not end the process,
        # nor be lost (see _serve_app and workers.supervise).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            server_tls = tls.ServerTLS(cfg.serving.tls_cert, cfg.serving.tls_key)
        except tls.TLSFileError as exc:  # changed since the config was checked
            print(f"mirror: cannot serve TLS: {exc}", file=sys.stderr)
            return 2
    listeners = tls.listeners(cfg)
    count = worker_count(cfg.serving.workers)
    log = logging.getLogger("mirror")
    if count == 1:
        log.info("serving in this process (workers = %s)", _setting(cfg.serving.workers))
        return _run(cfg, listeners, server_tls)
    try:
        _prepare_data_dir(cfg)
    except MetaStoreError as exc:
        print(f"mirror: cannot start: {exc}", file=sys.stderr)
        return 1
    replica = wiring.this_replica(cfg)  # the workers serve as one replica
    # Workers write their metric values to files here, and any worker's /metrics sums them.
    metrics_dir = tempfile.mkdtemp(prefix="mirror-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess  # only now: the directory is set

    try:
        socks = []
        for listener in listeners:
            try:
                socks.append(workers.bind(listener.address.host, listener.address.port))
            except OSError as exc:
                print(f"mirror: cannot listen on {listener.address}: {exc}", file=sys.stderr)
                return 1
            log.info("listening on %s", listener)
        log.info(
            "serving in %d worker processes (workers = %s)", count, _setting(cfg.serving.workers)
        )
        worker = _Worker(socks, replica)
        return workers.supervise(
            count,
            lambda: _run(cfg, listeners, server_tls, worker),
            on_exit=multiprocess.mark_process_dead,
            # The supervisor's own copy is what workers it starts later begin with.
            on_reload=None if server_tls is None else lambda: server_tls.reload(announce=False),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _prepare_data_dir(cfg: Config) -> None:
    """What the workers share, made ready once before they start: temp files an earlier run
    left removed (a worker starting later must not remove the downloads its siblings are
    writing), and the metadata store opened (SQLite's schema created, which workers creating
    it at once could fail on; an unreachable Redis said once, here). Raises MetaStoreError."""

    async def prepare() -> None:
        async with wiring.open_data_dir(cfg) as data:
            if removed := await asyncio.to_thread(data.store.remove_temp_files):
                logging.getLogger("mirror").info(
                    "removed %d temp files left by an earlier run", removed
                )

    asyncio.run(prepare())


def _setting(workers: Workers) -> str:
    """The `workers` setting as the startup line shows it: `auto` says what it counted."""
    return f"{workers}: one per CPU this process may use" if workers == AUTO else str(workers)


class _ListenError(Exception):
    pass


@dataclass(frozen=True)
class _Worker:
    """What a worker of several has from its supervisor: the listening sockets (one per
    listener) and the replica it serves as."""

    socks: Sequence[socket.socket]
    replica: Replica


def _run(
    cfg: Config,
    listeners: Sequence[tls.Listener],
    server_tls: tls.ServerTLS | None,
    worker: _Worker | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT: a `worker` on the sockets it inherited, else on the
    listeners' addresses. SIGHUP reloads the TLS certificate."""
    # Not asyncio.run(): that waits for every executor thread at the end, and a thread busy
    # on the disk must not hold shutdown past SHUTDOWN_TIMEOUT.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_app(cfg, listeners, server_tls, worker))
    except MetaStoreError as exc:
        print(f"mirror: cannot start: {exc}", file=sys.stderr)
        return 1
    except _ListenError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the signal handlers were installed
        pass
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
    return 0


async def _serve_app(
    cfg: Config,
    listeners: Sequence[tls.Listener],
    server_tls: tls.ServerTLS | None,
    worker: _Worker | None,
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if server_tls is not None:
        loop.add_signal_handler(signal.SIGHUP, server_tls.reload)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one sent meanwhile too

    from mirror.server.app import create_app  # imports prometheus-client: see the note above

    if worker is None:
        app = await create_app(cfg)
    else:
        app = await create_app(cfg, remove_temp_files=False, replica=worker.replica)
    runner = web.AppRunner(
        app,
        # aiohttp waits this long twice (for handlers, then again after cancelling them),
        # so halve it: a client that stopped reading cannot hold shutdown past the budget.
        shutdown_timeout=SHUTDOWN_TIMEOUT / 2,
        access_log=None,  # the mirror writes its own access lines (server.middleware)
    )
    await runner.setup()
    try:
        for index, listener in enumerate(listeners):
            context = server_tls.context if listener.https and server_tls is not None else None
            site: web.BaseSite
            if worker is not None:
                site = web.SockSite(runner, worker.socks[index], ssl_context=context)
            else:
                address = listener.address
                site = web.TCPSite(runner, address.host, address.port, ssl_context=context)
            try:
                await site.start()
            except OSError as exc:
                raise _ListenError(f"cannot listen on {listener.address}: {exc}") from None
            if worker is None:  # a worker's supervisor said it
                logging.getLogger("mirror").info("listening on %s", listener)
        await stopping.wait()
    finally:
        await runner.cleanup()
