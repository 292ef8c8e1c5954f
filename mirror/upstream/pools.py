"""An upstream's connection pools: blob bodies on one, everything else (manifests, tokens,
HEADs, tag lists) on another, so a crowd of bulk downloads never makes a manifest wait.

A pool admits at most `size` requests at once, each holding its slot until its response is
released (a blob's until its body has been read). Waiting for a slot has its own bound,
`wait`: a request's own timeout starts only once it has one, and a pool that stays full is
answered with a clean 503 rather than a timeout that blames the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import aiohttp

from mirror import errors, observe
from mirror.observe import PoolName
from mirror.upstream.failures import UpstreamError

USER_AGENT = "mirror/0.1 (pull-through cache)"


class Attempt:
    """Whether a request is opening a connection (DNS, TCP, TLS) right now: a timeout that
    strikes then is a connect timeout, whichever clock ran out."""

    def __init__(self) -> None:
        self.connecting = False


async def _connecting(_: object, ctx: SimpleNamespace, __: object) -> None:
    if isinstance(attempt := ctx.trace_request_ctx, Attempt):
        attempt.connecting = True


async def _connected(_: object, ctx: SimpleNamespace, __: object) -> None:
    if isinstance(attempt := ctx.trace_request_ctx, Attempt):
        attempt.connecting = False


def _connect_trace() -> aiohttp.TraceConfig:
    """Marks the `Attempt` a request passes as `trace_request_ctx` while it connects."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(_connecting)
    trace.on_connection_create_end.append(_connected)
    return trace


class Pool:
    """One aiohttp session and the slots that bound its concurrent requests."""

    def __init__(
        self,
        name: PoolName,
        *,
        upstream: str,
        label: str,
        size: int,
        wait: float,
        connector: aiohttp.TCPConnector,
        timeout: aiohttp.ClientTimeout,
        read_bufsize: int,
    ) -> None:
        """`read_bufsize`: how much of a response body is buffered before the connection
        stops being read (twice that, in aiohttp) until the body is consumed."""
        self.name = name
        self.size = size
        self._upstream = upstream  # the metrics label (the registry host)
        self._label = label  # what messages call the upstream
        self._wait = wait
        self._slots = asyncio.Semaphore(size)
        self.session = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,  # digests cover the bytes as sent
            connector=connector,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            trace_configs=[_connect_trace()],
            read_bufsize=read_bufsize,
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the pool's slots for the duration; wait at most `wait` for it."""
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError:
            observe.pool_exhausted(self._upstream, self.name)
            raise UpstreamError(
                errors.UPSTREAM_UNAVAILABLE,
                f"upstream {self._label} connection pool exhausted: all {self.size} "
                f"{self.name} connections stayed busy for {self._wait:g}s",
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    async def close(self) -> None:
        await self.session.close()
