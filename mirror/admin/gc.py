"""`mirror gc`: remove what nothing needs any more, safely while a server runs.

- temp files a crash left in the store (older than `gc_grace`, and not the spool of a
  download in progress: the store tells);
- blobs no cached manifest refers to and nobody used within `gc_grace` (never one a hosted
  repository holds: pushed content goes only when deleted from there);
- the bytes of abandoned uploads into hosted repositories (idle past `upload_ttl`);
- metadata about content that is gone: tag records naming a missing manifest, access
  records of missing digests, the links of the blobs it removes.

Manifests themselves stay (they are what tags name; `mirror rm` and eviction remove them).
A blob a client is reading when it is removed stays readable to that client: the file goes
when its last reader closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from mirror.cache.references import named_blobs
from mirror.cache.uploads import UploadSessions
from mirror.config import Config
from mirror.units import human_size
from mirror.wiring import DataDir, open_data_dir


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    parser: argparse.ArgumentParser = commands.add_parser(
        "gc", help="remove crash leftovers, unreferenced blobs and stale metadata"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace, config: Config) -> int:
    async def main() -> Report:
        async with open_data_dir(config) as data:
            return await collect_garbage(data, dry_run=args.dry_run)

    report = asyncio.run(main())
    verb = "would remove" if args.dry_run else "removed"
    for line in report.lines:
        print(f"{verb} {line}")
    print(
        f"{verb} {report.temp_files} temp files, {report.blobs} unreferenced blobs, "
        f"{report.tag_records} tag records, {report.access_records} access records and "
        f"{report.uploads} abandoned uploads; "
        f"{human_size(report.bytes_freed)} {'would be ' if args.dry_run else ''}freed"
    )
    return 0


@dataclass
class Report:
    temp_files: int = 0
    blobs: int = 0
    tag_records: int = 0
    access_records: int = 0
    uploads: int = 0
    bytes_freed: int = 0
    lines: list[str] = field(default_factory=list)


async def collect_garbage(
    data: DataDir, *, dry_run: bool = False, now: float | None = None
) -> Report:
    """Find (and unless `dry_run`, remove) the garbage in a data dir."""
    store, meta = data.store, data.meta
    now = time.time() if now is None else now
    cutoff = now - data.config.cache.gc_grace
    report = Report()

    for temp in await asyncio.to_thread(store.stale_temp_files, cutoff):
        report.temp_files += 1
        report.bytes_freed += temp.size
        report.lines.append(f"temp file {temp.name} ({human_size(temp.size)})")
        if not dry_run:
            await asyncio.to_thread(store.remove_temp_file, temp)

    manifests = await asyncio.to_thread(lambda: list(store.objects("manifest")))
    referenced = await named_blobs(store, (m.digest for m in manifests))
    hosted = await meta.hosted_digests()
    accessed = await meta.list_accesses()
    blobs = await asyncio.to_thread(lambda: list(store.objects("blob")))
    removed: set[str] = set()
    for blob in blobs:
        last_used = max(blob.mtime, accessed.get(str(blob.digest), 0.0))
        if blob.digest in referenced or str(blob.digest) in hosted or last_used > cutoff:
            continue
        if store.spool(blob.digest).in_progress():
            continue
        report.blobs += 1
        report.bytes_freed += blob.size
        report.lines.append(f"blob {blob.digest} ({human_size(blob.size)}, referenced by nothing)")
        removed.add(str(blob.digest))
        if not dry_run:
            await asyncio.to_thread(store.remove, "blob", blob.digest)

    present = {str(m.digest) for m in manifests}
    for key, record in await meta.list_tags():
        if str(record.digest) not in present:
            report.tag_records += 1
            report.lines.append(
                f"tag record {key.upstream}/{key.repo}:{key.tag} (its manifest is gone)"
            )
            if not dry_run:
                await meta.delete_tag(key)
    still_there = (present | {str(blob.digest) for blob in blobs}) - removed
    gone = [digest for digest in accessed if digest not in still_there]
    report.access_records = len(gone)
    if gone and not dry_run:
        await meta.delete_accesses(gone)
    if removed and not dry_run:
        await meta.remove_links(sorted(removed))
    if not dry_run:
        config = data.config
        uploads = UploadSessions(store, meta, ttl=config.hosting.upload_ttl, clock=lambda: now)
        report.uploads = await uploads.sweep()
    return report
