"""The `mirror export` and `mirror import` commands: arguments, what they print, and the
exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from mirror.admin.bundle.archive import read_bundle
from mirror.admin.bundle.check import Bundle
from mirror.admin.bundle.commit import ImportReport, import_bundle
from mirror.admin.bundle.export import ExportPlan, plan_export, write_bundle
from mirror.admin.bundle.layout import BundleError, ExportError
from mirror.admin.bundle.progress import Progress, count
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.meta.store import MetaStoreError
from mirror.platforms import parse_platform
from mirror.reference import parse_image
from mirror.storage import ContentStore
from mirror.units import human_size
from mirror.wiring import close_store, open_data_dir, open_store


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    export: argparse.ArgumentParser = commands.add_parser(
        "export", help="write cached images to a bundle (an OCI layout tar) for another mirror"
    )
    export.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.19")
    export.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the bundle to write"
    )
    export.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="only these platforms of multi-platform images (repeatable; default: all)",
    )
    export.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    export.set_defaults(run=run_export)

    imp: argparse.ArgumentParser = commands.add_parser(
        "import", help="verify a bundle from `mirror export` and add its images to the cache"
    )
    imp.add_argument("bundle", metavar="FILE", help="the bundle (- reads standard input)")
    imp.add_argument(
        "--dry-run", action="store_true", help="verify the bundle and report; change nothing"
    )
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    imp.set_defaults(run=run_import)
    return [export, imp]


def run_export(args: argparse.Namespace, config: Config) -> int:
    try:
        images = [parse_image(text) for text in args.images]
        platforms = [parse_platform(text) for text in args.platform]
    except RegistryError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mirror: --platform: {exc}", file=sys.stderr)
        return 2

    async def plan() -> ExportPlan:
        async with open_data_dir(config) as data:
            return await plan_export(data, images, platforms)

    async def write(exported: ExportPlan, progress: Progress) -> int:
        store = open_store(config)
        try:
            return await write_bundle(exported, store, args.output, progress)
        finally:
            await close_store(store)

    try:
        exported = asyncio.run(plan())
        if not args.quiet:
            for image in exported.images:
                print(f"exporting {image.reference} ({image.digest})", file=sys.stderr)
        progress = Progress("exporting", exported.total_bytes, quiet=args.quiet)
        written = asyncio.run(write(exported, progress))
    except ExportError as exc:
        print(f"mirror: cannot export:\n{exc}", file=sys.stderr)
        return 1
    except MetaStoreError as exc:
        print(f"mirror: cannot read the metadata store: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mirror: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: {count(len(exported.images), 'image')}, "
        f"{count(len(exported.manifests) + len(exported.blobs), 'object')} "
        f"({count(len(exported.manifests), 'manifest')}, {count(len(exported.blobs), 'blob')}), "
        f"{count(len(exported.records), 'tag record')}, {human_size(written)}"
    )
    return 0


def run_import(args: argparse.Namespace, config: Config) -> int:
    source = "standard input" if args.bundle == "-" else args.bundle
    return asyncio.run(_import(args, config, source))


async def _import(args: argparse.Namespace, config: Config, source: str) -> int:
    """The import, with the store it stages into closed however it ends (a refused bundle
    too: its staged S3 uploads were aborted, its connections must go)."""
    store = open_store(config)
    try:
        return await _import_into(args, config, source, store)
    finally:
        await close_store(store)


async def _import_into(
    args: argparse.Namespace, config: Config, source: str, store: ContentStore
) -> int:
    """Verify the whole bundle into the store's writers, then commit it; whatever is not
    committed is aborted, however the import ends."""
    try:
        bundle = await _read(args.bundle, store, quiet=args.quiet)
    except BundleError as exc:
        print(f"mirror: {source} refused, nothing was imported: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mirror: cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        report = await _commit(config, store, bundle, dry_run=args.dry_run)
    except RegistryError as exc:  # a hosted repository refused an image, as a push would be
        print(f"mirror: import of {source} failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, MetaStoreError) as exc:
        print(
            f"mirror: import of {source} failed: {exc}; the content that was verified may be "
            "in the cache; import the bundle again",
            file=sys.stderr,
        )
        return 1
    finally:
        await bundle.discard()
    for host in sorted(report.unserved):
        print(
            f"note: {host} is not a registry this mirror serves; add an [[upstream]] for it "
            "to serve its images",
            file=sys.stderr,
        )
    for line in report.kept:
        print(f"kept {line}", file=sys.stderr)
    print(report.summary(source, dry_run=args.dry_run))
    return 0


async def _read(bundle: str, store: ContentStore, *, quiet: bool) -> Bundle:
    """The bundle at path `bundle` (- for standard input), checked, its content staged in
    `store`."""
    if bundle == "-":
        return await read_bundle(sys.stdin.buffer, store, Progress("verifying", None, quiet=quiet))
    with await asyncio.to_thread(Path(bundle).open, "rb") as fh:
        progress = Progress("verifying", os.fstat(fh.fileno()).st_size, quiet=quiet)
        return await read_bundle(fh, store, progress)


async def _commit(
    config: Config, store: ContentStore, bundle: Bundle, *, dry_run: bool
) -> ImportReport:
    async with open_data_dir(config, store=store) as data:
        report = await import_bundle(data, bundle, dry_run=dry_run)
        # The store answers "not known" rather than fail while its backend is down:
        # a write it dropped must fail the import, not pass unseen.
        if data.meta.errors:
            raise MetaStoreError("it failed while the tag records were written")
        return report
