"""The `mirror` command: `serve`, `check-config` and `client-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from mirror import __version__, clientconfig, config, logs, wiring
from mirror.admin import bundle, gc, inventory, prefetch
from mirror.meta import MetaStoreError
from mirror.server import htpasswd, tls, workers

# Nothing here imports prometheus-client at module level (the server's modules do, so they
# are imported in `_serve_app`): with several workers it must be imported only after
# PROMETHEUS_MULTIPROC_DIR is set (see `_serve`).

# Settings that `mirror serve` also takes as flags (`--tag-ttl` for `tag_ttl`); the data-dir
# commands take --config, --data-dir and --redis-url.
SERVE_FLAGS = (
    "listen",
    "upstream",
    "data_dir",
    "redis_url",
    "tag_ttl",
    "offline",
    "workers",
    "max_cache_size",
    "htpasswd",
    "tls_cert",
    "tls_key",
    "tls_listen",
)
# Modules adding the commands that work on a data dir (see mirror.admin).
ADMIN_COMMANDS = (gc, inventory, prefetch, bundle)
# Seconds open requests get to finish on SIGTERM/Ctrl-C (downloads are aborted at once).
SHUTDOWN_TIMEOUT = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {key: getattr(args, key, None) for key in SERVE_FLAGS}
    try:
        loaded = config.load(config_file=args.config, overrides=overrides)
        # The config holds values; the files they name are read by the server's own checks.
        tls.check_files(loaded)
        htpasswd.check_file(loaded)
    except config.ConfigError as exc:
        print(f"mirror: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        source = loaded.file if loaded.file is not None else "built-in defaults"
        print(f"# effective configuration (file: {source})")
        print(config.render(loaded), end="")
        return 0
    if args.command == "client-config":
        return _client_config(args, loaded.config)
    if args.command != "serve":
        return _admin(args.run, args, loaded.config)
    return _serve(loaded.config)


def _admin(
    run: Callable[[argparse.Namespace, config.Config], int],
    args: argparse.Namespace,
    cfg: config.Config,
) -> int:
    """A command on the data dir; a metadata store that fails ends it with a message."""
    try:
        return run(args, cfg)
    except MetaStoreError as exc:
        print(f"mirror: the metadata store failed: {exc}", file=sys.stderr)
        return 1


def _client_config(args: argparse.Namespace, cfg: config.Config) -> int:
    """Print (or write to --output-dir) one client's files; notes go to stderr so stdout
    stays a valid file."""
    url = args.mirror_url or clientconfig.default_mirror_url(cfg)
    try:
        generated = clientconfig.generate(args.client, cfg, clientconfig.parse_mirror_url(url))
    except clientconfig.ClientConfigError as exc:
        where = (
            "--mirror-url" if args.mirror_url else f"default mirror URL {url} (set --mirror-url)"
        )
        print(f"mirror: {where}: {exc}", file=sys.stderr)
        return 2
    if args.output_dir is None:
        several = len(generated.files) > 1
        for index, (relative, content) in enumerate(generated.files.items()):
            if several:  # containerd: say where each file goes
                print(("\n" if index else "") + f"# {generated.printed_paths[relative]}")
            print(content, end="")
    else:
        try:
            for relative, content in generated.files.items():
                path = args.output_dir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
                print(f"wrote {path}")
        except OSError as exc:
            print(f"mirror: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
    for note in generated.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _serve(cfg: config.Config) -> int:
    logs.configure(cfg.logging.log_level, cfg.logging.log_format)
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
    cfg: config.Config,
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
    cfg: config.Config,
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror", description="A pull-through caching mirror for Docker and OCI registries."
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the mirror")
    _config_flag(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (0.0.0.0:5000)")
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="where docker.io is reached (https://registry-1.docker.io)",
    )
    serve.add_argument("--data-dir", metavar="DIR", help="where the cache lives (./data)")
    serve.add_argument(
        "--redis-url", metavar="URL", help="Redis for shared metadata (default: embedded SQLite)"
    )
    serve.add_argument(
        "--tag-ttl", metavar="SECONDS", help="how long a tag is served without asking upstream"
    )
    serve.add_argument(
        "--workers", metavar="N", help="worker processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--offline",
        action="store_const",
        const=True,
        help="serve only from the cache; never contact the upstream",
    )
    serve.add_argument(
        "--max-cache-size", metavar="SIZE", help="evict beyond this size, e.g. 500GB (no limit)"
    )
    serve.add_argument(
        "--htpasswd", metavar="FILE", help="clients must log in as a user of this bcrypt file"
    )
    serve.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain"
    )
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    serve.add_argument(
        "--tls-listen",
        metavar="HOST:PORT",
        help="serve HTTPS here and plain HTTP on --listen (default: HTTPS on --listen)",
    )

    check = commands.add_parser("check-config", help="validate and print the effective config")
    _config_flag(check)

    clients = commands.add_parser(
        "client-config", help="print the docker, containerd or podman config that uses the mirror"
    )
    clients.add_argument("client", choices=clientconfig.CLIENTS)
    clients.add_argument(
        "--mirror-url",
        metavar="URL",
        help="where clients reach the mirror (default: http://<this host>:<listen port>)",
    )
    clients.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="write the files here instead of stdout"
    )
    _config_flag(clients)

    for module in ADMIN_COMMANDS:
        for command in module.add_parsers(commands):
            _config_flag(command)
            command.add_argument("--data-dir", metavar="DIR", help="the cache (./data)")
            command.add_argument("--redis-url", metavar="URL", help="its metadata store's Redis")
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: ./mirror.toml if present)",
    )
