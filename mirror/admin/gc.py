"""`mirror gc`: remove what nothing needs any more, safely while a server runs.

- temp files a crash left in the store (older than `gc_grace`, and not the spool of a
  download in progress: the store tells);
- from each hosted repository, the blobs none of its manifests names and (with
  `--delete-untagged`) the manifests no tag reaches, added or touched before `gc_grace`
  (`mirror.admin.hostedgc`);
- blobs no cached or hosted manifest refers to, that no hosted repository holds and nobody
  used within `gc_grace`; a manifest counts as cached while a link or a tag record names
  it, so the bytes of a manifest deleted from every hosted repository protect nothing;
- the bytes of abandoned uploads into hosted repositories (idle past `upload_ttl`);
- metadata about content that is gone: tag records naming a missing manifest, access
  records of missing digests, the links of the blobs it removes.

Manifests' bytes stay (they are what tags name; `mirror rm` and eviction remove them): a
hosted manifest deleted is no longer served, but its bytes wait for eviction.
Safe during pushes: every removal of hosted content is conditional on its stamp (the
metadata store decides, atomically), a blob committed within `gc_grace` is recent by its
file's time, and the hosted records are read again just before bytes go.
A blob a client is reading when it is removed stays readable to that client: the file goes
when its last reader closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from mirror.admin.hostedgc import HostedGarbage, hosted_garbage, remove_hosted_garbage
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
    parser.add_argument(
        "--delete-untagged",
        action="store_true",
        help="also remove hosted manifests no tag reaches (not an index's children, not "
        "referrers of a live manifest)",
    )
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace, config: Config) -> int:
    async def main() -> Report:
        async with open_data_dir(config) as data:
            return await collect_garbage(
                data, dry_run=args.dry_run, delete_untagged=args.delete_untagged
            )

    report = asyncio.run(main())
    verb = "would remove" if args.dry_run else "removed"
    for line in report.lines:
        print(f"{verb} {line}")
    print(
        f"{verb} {report.temp_files} temp files, {report.blobs} unreferenced blobs, "
        f"{report.hosted_manifests} hosted manifests, {report.hosted_blobs} hosted blobs, "
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
    hosted_manifests: int = 0
    hosted_blobs: int = 0
    bytes_freed: int = 0
    lines: list[str] = field(default_factory=list)


async def collect_garbage(
    data: DataDir,
    *,
    dry_run: bool = False,
    delete_untagged: bool = False,
    now: float | None = None,
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

    hosted = set()
    for repo in await meta.all_hosted_repositories():
        garbage = await hosted_garbage(
            store, meta, repo, cutoff=cutoff, delete_untagged=delete_untagged
        )
        if not dry_run:
            garbage = await remove_hosted_garbage(meta, garbage, cutoff=cutoff)
        _report_hosted(report, garbage)
        if dry_run:
            held = await meta.hosted_content(repo)
            hosted |= set(held) - garbage.manifests - garbage.blobs

    manifests = await asyncio.to_thread(lambda: list(store.objects("manifest")))
    tag_records = await meta.list_tags()
    if not dry_run:
        hosted = await meta.hosted_digests()
    tagged = {str(record.digest) for _, record in tag_records}
    kept = [
        m.digest
        for m in manifests
        if str(m.digest) in hosted or str(m.digest) in tagged or await meta.links_of(str(m.digest))
    ]
    referenced = await named_blobs(store, kept)
    accessed = await meta.list_accesses()
    blobs = await asyncio.to_thread(lambda: list(store.objects("blob")))
    unused = []
    for blob in blobs:
        last_used = max(blob.mtime, accessed.get(str(blob.digest), 0.0))
        if blob.digest in referenced or str(blob.digest) in hosted or last_used > cutoff:
            continue
        if store.spool(blob.digest).in_progress():
            continue
        unused.append(blob)
    if unused and not dry_run:
        hosted = await meta.hosted_digests()  # again: a push may have added one meanwhile
    removed: set[str] = set()
    for blob in unused:
        if str(blob.digest) in hosted:
            continue
        report.blobs += 1
        report.bytes_freed += blob.size
        report.lines.append(f"blob {blob.digest} ({human_size(blob.size)}, referenced by nothing)")
        removed.add(str(blob.digest))
        if not dry_run:
            await asyncio.to_thread(store.remove, "blob", blob.digest)

    present = {str(m.digest) for m in manifests}
    for key, record in tag_records:
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


def _report_hosted(report: Report, garbage: HostedGarbage) -> None:
    for digest in sorted(garbage.manifests):
        report.hosted_manifests += 1
        report.lines.append(f"hosted manifest {garbage.repo}@{digest} (no tag reaches it)")
    for digest in sorted(garbage.blobs):
        report.hosted_blobs += 1
        report.lines.append(
            f"hosted blob {garbage.repo}@{digest} (no manifest of {garbage.repo} names it)"
        )
