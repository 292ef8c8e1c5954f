"""The `mirror` command: its arguments, and which part of the mirror each subcommand runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mirror import __version__, clientconfig, config
from mirror.admin import bundle, gc, inventory, prefetch, tag
from mirror.meta import MetaStoreError
from mirror.server import htpasswd, tls
from mirror.server.serve import serve

# Settings that `mirror serve` also takes as flags (`--tag-ttl` for `tag_ttl`); the data-dir
# commands take --config, --data-dir and --redis-url.
SERVE_FLAGS = (
    "listen",
    "hosted",
    "upstream",
    "data_dir",
    "redis_url",
    "storage",
    "s3_endpoint",
    "local_cache_size",
    "advertise_url",
    "s3_redirect",
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
ADMIN_COMMANDS = (gc, inventory, prefetch, tag, bundle)


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
    return serve(loaded.config)


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
    _storage_flags(serve)
    serve.add_argument(
        "--advertise-url",
        metavar="URL",
        help="where the other replicas reach this one (needs MIRROR_CLUSTER_SECRET)",
    )
    serve.add_argument(
        "--s3-redirect",
        action="store_const",
        const=True,
        help="answer blob GETs with a redirect to a presigned URL of the bucket",
    )
    serve.add_argument(
        "--hosted",
        metavar="GLOB",
        action="append",
        help="host (accept pushes to) the repositories matching GLOB, e.g. 'local/*'; repeatable",
    )
    serve.add_argument(
        "--tag-ttl", metavar="SECONDS", help="how long a tag is served without asking upstream"
    )
    serve.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes sharing the port (default auto: one per usable CPU)",
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
            _storage_flags(command)
    return parser


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", metavar="WHERE", help="`file` (the data dir) or s3://BUCKET/PREFIX"
    )
    parser.add_argument(
        "--s3-endpoint", metavar="URL", help="the S3 API (default: AWS_ENDPOINT_URL_S3, else AWS)"
    )
    parser.add_argument(
        "--local-cache-size", metavar="SIZE", help="hot-blob cache in the data dir with S3 (4GiB)"
    )


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: ./mirror.toml if present)",
    )
