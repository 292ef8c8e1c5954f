"""`mirror tag SOURCE TARGET`: promote an image by retagging it into a hosted repository.

SOURCE is a tag or digest of a hosted repository (`local/app:dev`) or any image the mirror
can pull (`docker.io/library/nginx:1.27`); TARGET a tag of a hosted repository
(`local/app:prod`). Only what is missing is copied: the store gets what it lacks through
the cache, the target repository the records of what it holds, and no blob is uploaded
again (see `mirror.cache.promotion`). Safe while a server runs on the same data dir. Exit
status 2 for a target that is not a hosted tag, 1 when the promotion failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from mirror.cache.promotion import Promotion, PromotionError, promote
from mirror.config import Config
from mirror.units import human_size
from mirror.wiring import one_shot


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    parser: argparse.ArgumentParser = commands.add_parser(
        "tag",
        help="promote an image to a tag of a hosted repository, copying only what is missing",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="e.g. local/app:dev or docker.io/library/nginx:1.27"
    )
    parser.add_argument("target", metavar="TARGET", help="a hosted tag, e.g. local/app:prod")
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace, config: Config) -> int:
    async def main() -> Promotion:
        async with one_shot(config) as mirror:
            return await promote(mirror.puller(), mirror.hosted, args.source, args.target)

    try:
        promotion = asyncio.run(main())
    except PromotionError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2 if exc.usage else 1
    print(summary(promotion))
    return 0


def summary(promotion: Promotion) -> str:
    """`tagged local/app:prod = sha256:...: 1 manifest, 3 blobs recorded, ...`."""
    manifests = promotion.manifests_recorded
    line = (
        f"tagged {promotion.target} = {promotion.digest}: "
        f"{manifests} manifest{'' if manifests == 1 else 's'}, "
        f"{promotion.blobs_recorded} blobs recorded ({promotion.already_held} already held), "
        f"{promotion.blobs_fetched} blobs fetched ({human_size(promotion.bytes_fetched)}), "
        "0 bytes re-uploaded"
    )
    if promotion.previous is not None and promotion.previous != promotion.digest:
        line += f"; moved from {promotion.previous}"
    return line
