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

from aiohttp import web

from mirror import heap, logs, wiring
from mirror.config import Config
from mirror.meta import MetaStoreError
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
    if cfg.serving.workers == 1:
        return _run(cfg, listeners, server_tls)
    # Temp files are cleaned once, here: a worker starting later must not remove the
    # downloads its siblings are writing.
    if removed := wiring.open_store(cfg).remove_temp_files():
        logging.getLogger("mirror").info("removed %d temp files left by an earlier run", removed)
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
            logging.getLogger("mirror").info("listening on %s", listener)
        return workers.supervise(
            cfg.serving.workers,
            lambda: _run(cfg, listeners, server_tls, socks),
            on_exit=multiprocess.mark_process_dead,
            # The supervisor's own copy is what workers it starts later begin with.
            on_reload=None if server_tls is None else lambda: server_tls.reload(announce=False),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class _ListenError(Exception):
    pass


def _run(
    cfg: Config,
    listeners: Sequence[tls.Listener],
    server_tls: tls.ServerTLS | None,
    socks: Sequence[socket.socket] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT: on the inherited `socks` if given (a worker; one per
    listener), else on the listeners' addresses. SIGHUP reloads the TLS certificate."""
    # Not asyncio.run(): that waits for every executor thread at the end, and a thread busy
    # on the disk must not hold shutdown past SHUTDOWN_TIMEOUT.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_app(cfg, listeners, server_tls, socks))
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
    socks: Sequence[socket.socket] | None,
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if server_tls is not None:
        loop.add_signal_handler(signal.SIGHUP, server_tls.reload)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one sent meanwhile too

    from mirror.server.app import create_app  # imports prometheus-client: see the note above

    app = await create_app(cfg, remove_temp_files=socks is None)
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
            if socks is not None:
                site = web.SockSite(runner, socks[index], ssl_context=context)
            else:
                address = listener.address
                site = web.TCPSite(runner, address.host, address.port, ssl_context=context)
            try:
                await site.start()
            except OSError as exc:
                raise _ListenError(f"cannot listen on {listener.address}: {exc}") from None
            if socks is None:  # a worker's supervisor said it
                logging.getLogger("mirror").info("listening on %s", listener)
        await stopping.wait()
    finally:
        await runner.cleanup()
