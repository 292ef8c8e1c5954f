"""`mirror prefetch`: pull images into the cache before anyone asks for them.

`mirror prefetch IMAGE... [--platform linux/amd64 ...]` pulls each image through the cache
(an index: all its platforms, or the chosen ones), with a progress bar per blob on a
terminal and a line per image; without IMAGE it prefetches the configured `prefetch` list
(and `prefetch_platforms`). Safe while a server runs on the same data dir. The exit status
is 1 when any image failed (each is named), after trying the others.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from tqdm import tqdm

from mirror.cache.prefetch.engine import BlobProgress, ImageResult, prefetch_image
from mirror.cache.prefetch.text import summary_line
from mirror.config import Config
from mirror.meta import MetaStoreError
from mirror.platforms import parse_platform
from mirror.reference import Digest, ImageRef
from mirror.units import human_size
from mirror.wiring import pulling


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    parser: argparse.ArgumentParser = commands.add_parser(
        "prefetch",
        help="pull images into the cache (default: the configured prefetch list)",
    )
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", help="e.g. alpine:3.19 or ghcr.io/org/app:1"
    )
    parser.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        type=_platform,
        metavar="OS/ARCH[/VARIANT]",
        help="only this platform of an index; repeat for more (default: prefetch_platforms, "
        "else all)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bars on stderr (auto: when it is a terminal)",
    )
    parser.set_defaults(run=run)
    return [parser]


def _platform(text: str) -> str:
    try:
        return parse_platform(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace, config: Config) -> int:
    images: list[str] = args.images or list(config.prefetch.prefetch)
    if not images:
        print(
            "mirror: nothing to prefetch: name images, or list them as `prefetch` in the config",
            file=sys.stderr,
        )
        return 2
    platforms: list[str] = args.platforms or []
    if not platforms:
        try:
            platforms = [parse_platform(p) for p in config.prefetch.prefetch_platforms]
        except ValueError as exc:
            print(f"mirror: configuration error: prefetch_platforms: {exc}", file=sys.stderr)
            return 2
    bars = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    try:
        results = asyncio.run(_prefetch(config, images, platforms, bars))
    except KeyboardInterrupt:
        print("mirror: prefetch interrupted", file=sys.stderr)
        return 130
    if results is None:
        return 1
    _print_summary(results)
    return 0 if all(result.ok for result in results) else 1


async def _prefetch(
    config: Config, images: list[str], platforms: list[str], bars: bool
) -> list[ImageResult] | None:
    results = []
    progress = _Bars(sys.stderr) if bars else None
    try:
        async with pulling(config) as puller:
            for text in images:
                if progress is None:
                    result = await prefetch_image(puller, text, platforms)
                else:
                    result = await prefetch_image(puller, text, platforms, progress=progress.bar)
                results.append(result)
                if result.ok:
                    print(summary_line(result), flush=True)
                else:
                    print(f"mirror: prefetch of {text} failed: {result.error}", file=sys.stderr)
    except MetaStoreError as exc:
        print(f"mirror: cannot open the metadata store: {exc}", file=sys.stderr)
        return None
    return results


def _print_summary(results: list[ImageResult]) -> None:
    done = [r for r in results if r.ok]
    failed = len(results) - len(done)
    platforms = sum(len(r.platforms) for r in done)
    fetched = sum(r.blobs_fetched for r in done)
    cached = sum(r.blobs_cached for r in done)
    line = (
        f"prefetched {len(done)} of {len(results)} images ({platforms} platforms): "
        f"{fetched} blobs fetched ({human_size(sum(r.bytes_fetched for r in done))}), "
        f"{cached} already cached ({human_size(sum(r.bytes_cached for r in done))})"
    )
    if failed:
        line += f"; {failed} failed"
    print(line)


class _Bars:
    """One tqdm bar per blob download, on `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def bar(self, image: ImageRef, digest: Digest, size: int | None) -> BlobProgress:
        return _Bar(
            tqdm(
                total=size,
                desc=f"{image.name.rsplit('/', 1)[-1]} {digest.hex[:12]}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                leave=True,
                dynamic_ncols=True,
            )
        )


class _Bar:
    def __init__(self, bar: tqdm[Any]) -> None:
        self._bar = bar

    def advance(self, size: int) -> None:
        self._bar.update(size)

    def close(self) -> None:
        self._bar.close()
