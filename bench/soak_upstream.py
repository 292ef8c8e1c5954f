"""The soak's upstream: what the fake Docker Hub holds (one warm image and a pool of small
images nobody has pulled yet), served from a process of its own so the load generator and
the upstream do not share one event loop."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType

from testkit.fakeupstream import Blob, FakeRegistry, Manifest, make_image, random_layer

KiB = 1024
WARM_REPO, WARM_TAG = "library/soak", "1"
COLD_REPO = "library/soak-cold"
STOP_TIMEOUT = 10.0  # for the upstream's request counts once told to stop


@dataclass(frozen=True)
class Content:
    """What the fake upstream holds: one warm image (pulled before the clock starts) whose
    layers are the warm blobs, and a pool of small images nobody has pulled yet."""

    warm: Manifest
    blobs: dict[str, Blob]  # "blob-4k" -> the warm layer of that size
    cold: tuple[Manifest, ...]

    @staticmethod
    def make(cold_images: int) -> Content:
        layers = {
            "blob-4k": random_layer(4 * KiB, seed=4),
            "blob-64k": random_layer(64 * KiB, seed=64),
            "blob-1m": random_layer(1024 * KiB, seed=1024),
        }
        warm = make_image(layers=list(layers.values()), seed=1)
        cold = tuple(
            make_image(layers=[random_layer(1 * KiB + i % (3 * KiB), seed=100_000 + i)], seed=i)
            for i in range(cold_images)
        )
        return Content(warm, layers, cold)


class UpstreamProcess:
    """`with UpstreamProcess(content) as url:` the fake upstream serving `content` in a
    forked process; `stop` asks it what the mirror requested; leaving the block ends it."""

    def __init__(self, content: Content) -> None:
        context = multiprocessing.get_context("fork")
        self._parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(content, child), daemon=True)

    def __enter__(self) -> str:
        self._process.start()
        try:
            url: str = self._parent.recv()
        except BaseException:
            self._end()
            raise
        return url

    def stop(self) -> dict[str, int]:
        """Stop serving; the requests it answered, counted by `server method kind status`
        ({} if it does not say in time)."""
        self._parent.send("stop")
        asked: dict[str, int] = self._parent.recv() if self._parent.poll(STOP_TIMEOUT) else {}
        return asked

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()

    def _end(self) -> None:
        self._process.terminate()
        self._process.join(5)


def _serve(content: Content, conn: Connection) -> None:
    """The fake upstream's process: serve until the parent says stop, then report what the
    mirror asked for."""
    asyncio.run(_upstream_main(content, conn))


async def _upstream_main(content: Content, conn: Connection) -> None:
    async with FakeRegistry() as hub:
        hub.push_image(WARM_REPO, WARM_TAG, content.warm)
        for index, image in enumerate(content.cold):
            hub.push_image(COLD_REPO, f"c{index}", image)
        conn.send(hub.url)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        asked = Counter(f"{r.server} {r.method} {r.kind} {r.status}" for r in hub.requests)
        conn.send(dict(asked))
