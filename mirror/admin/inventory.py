"""`mirror ls` and `mirror rm`: what the cache holds, and taking one image out of it.

`ls` lists cached repositories (from the tag records) and hosted ones (from their tags,
marked `hosted`), and with a repository its tags with their digest, size and last access.
`rm IMAGE` removes the image's manifests (an index and its per-platform manifests) and tag
records; its blobs stay until `mirror gc` finds them unreferenced, since other images may
share them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from mirror.cache.graph import reachable, walk_store
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.reference import Digest, ImageRef, parse_image
from mirror.storage import ContentStore
from mirror.units import human_size, when
from mirror.wiring import DataDir, open_data_dir


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    ls: argparse.ArgumentParser = commands.add_parser(
        "ls", help="list cached and hosted repositories, or one repository's tags"
    )
    ls.add_argument("repository", nargs="?", help="e.g. alpine, ghcr.io/org/app or local/app")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    ls.set_defaults(run=run_ls)
    rm: argparse.ArgumentParser = commands.add_parser(
        "rm", help="remove an image's manifests and tag records (blobs go by gc)"
    )
    rm.add_argument("image", help="e.g. alpine:3.19 or ghcr.io/org/app@sha256:...")
    rm.set_defaults(run=run_rm)
    return [ls, rm]


@dataclass(frozen=True)
class TagRow:
    repository: str  # qualified: docker.io/library/alpine; a hosted one as named: local/app
    tag: str
    digest: str
    media_type: str
    size: int  # bytes cached for it: its manifests and the blobs they name
    complete: bool  # every manifest and blob it names is cached
    last_access: float | None
    hosted: bool = False  # a tag of a hosted repository, not a cached one


async def tag_rows(data: DataDir) -> list[TagRow]:
    """Every cached tag (one row per tag, whatever Accept classes it was asked with)."""
    accessed = await data.meta.list_accesses()
    rows: dict[tuple[str, str], TagRow] = {}
    for key, record in await data.meta.list_tags():
        repository = f"{key.upstream}/{key.repo}"
        if (repository, key.tag) in rows:
            continue
        size, complete, digests = await _footprint(data.store, record.digest)
        last = [accessed[d] for d in digests if d in accessed]
        rows[(repository, key.tag)] = TagRow(
            repository,
            key.tag,
            str(record.digest),
            record.media_type,
            size,
            complete,
            max(last) if last else None,
        )
    for repository in await data.meta.hosted_repositories():
        for tag in await data.meta.hosted_tags(repository):
            tagged = await data.meta.get_hosted_tag(repository, tag)
            if tagged is None:  # deleted since it was listed
                continue
            size, complete, digests = await _footprint(data.store, tagged.digest)
            last = [accessed[d] for d in digests if d in accessed]
            rows[(repository, tag)] = TagRow(
                repository,
                tag,
                str(tagged.digest),
                tagged.media_type,
                size,
                complete,
                max(last) if last else None,
                hosted=True,
            )
    return sorted(rows.values(), key=lambda row: (row.repository, row.tag))


async def _footprint(store: ContentStore, root: Digest) -> tuple[int, bool, set[str]]:
    """Bytes cached for a manifest and everything it names; whether all of it is there; the
    digests involved."""
    size, complete = 0, True
    digests = await reachable(store, [root])
    for digest in digests:
        manifest = await store.read_manifest(digest)
        found = len(manifest.data) if manifest is not None else await store.blob_size(digest)
        complete = complete and found is not None
        size += found or 0
    return size, complete, {str(digest) for digest in digests}


def run_ls(args: argparse.Namespace, config: Config) -> int:
    async def main() -> list[TagRow]:
        async with open_data_dir(config) as data:
            return await tag_rows(data)

    rows = asyncio.run(main())
    if args.repository:
        try:
            wanted = parse_image(args.repository)
        except RegistryError as exc:
            print(f"mirror: {args.repository}: {exc}", file=sys.stderr)
            return 2
        cached = f"{wanted.host}/{wanted.name}"
        rows = [
            row for row in rows if row.repository == (args.repository if row.hosted else cached)
        ]
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    if args.repository:
        _table(
            ["TAG", "DIGEST", "SIZE", "LAST PULLED", ""],
            [
                [
                    row.tag,
                    row.digest[:19],
                    human_size(row.size),
                    when(row.last_access),
                    _note(row),
                ]
                for row in rows
            ],
        )
        return 0
    repos: dict[str, list[TagRow]] = defaultdict(list)
    for row in rows:
        repos[row.repository].append(row)
    _table(
        ["REPOSITORY", "TAGS", "SIZE", "LAST PULLED", ""],
        [
            [
                repository,
                str(len(tags)),
                human_size(sum(t.size for t in tags)),
                when(max((t.last_access or 0.0) for t in tags) or None),
                "hosted" if tags[0].hosted else "",
            ]
            for repository, tags in sorted(repos.items())
        ],
    )
    return 0


def _note(row: TagRow) -> str:
    if row.hosted:
        return "hosted"
    return "" if row.complete else "(partly cached)"


def run_rm(args: argparse.Namespace, config: Config) -> int:
    try:
        image = parse_image(args.image)
    except RegistryError as exc:
        print(f"mirror: {args.image}: {exc}", file=sys.stderr)
        return 2

    async def main() -> list[str]:
        async with open_data_dir(config) as data:
            return await remove_image(data, image)

    removed = asyncio.run(main())
    if not removed:
        print(f"mirror: {image} is not in the cache", file=sys.stderr)
        return 1
    for line in removed:
        print(f"removed {line}")
    return 0


async def remove_image(data: DataDir, image: ImageRef) -> list[str]:
    """Remove the image's tag records and manifests (an index with its children), and the
    links to those manifests; when the repository has no tag left, every link it has (the
    catalog drops it; its blobs stay for gc, served to it again only once the upstream
    confirms them). What was removed, one line each."""
    removed: list[str] = []
    roots: set[Digest] = {image.digest} if image.digest is not None else set()
    tags = await data.meta.list_tags()
    for key, record in tags:
        if key.upstream == image.host and key.repo == image.name and key.tag == image.tag:
            roots.add(record.digest)
            await data.meta.delete_tag(key)
            removed.append(f"tag record {image.host}/{image.name}:{key.tag} ({key.accept})")
    walk, _ = await walk_store(data.store, roots)
    await data.meta.remove_links(str(digest) for digest in walk.visited)
    for digest in walk.visited:
        await asyncio.to_thread(data.store.remove, "manifest", digest)
        removed.append(f"manifest {digest}")
    left = [
        k
        for k, _ in await data.meta.list_tags()
        if (k.upstream, k.repo) == (image.host, image.name)
    ]
    if removed and not left:
        await data.meta.remove_repository(image.host, image.name)
    return removed


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
