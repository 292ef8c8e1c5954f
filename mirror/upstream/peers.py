"""Requests between the replicas of a cluster: a replica relays a blob another replica is
downloading from that replica's `/_mirror/cluster/blobs/<digest>`.

Every request is signed with the cluster secret: an HMAC-SHA256 over method, path and the
unix time it was sent, so the secret itself never travels and a captured request is good
for `MAX_SKEW` seconds only. The relay is as untrusted as an upstream: its bytes are hashed
and verified before anything is committed, redirects are never followed, and any answer
but 200 or 206 means the relay is lost (the caller then looks for another source).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp

from mirror.reference import Digest
from mirror.upstream.client import BLOB_READ_BUFFER, BlobStream, content_range

RELAY_PREFIX = "/_mirror/cluster/blobs/"
TIME_HEADER = "X-Mirror-Cluster-Time"
SIGNATURE_HEADER = "X-Mirror-Cluster-Signature"
# How far a request's time may be from the receiver's clock (both ways).
MAX_SKEW = 60.0
CONNECT_TIMEOUT = 2.0  # seconds to connect to another replica


class RelayLost(Exception):
    """The relay refused, failed or stalled: the bytes must come from elsewhere."""


def relay_path(digest: Digest) -> str:
    return f"{RELAY_PREFIX}{digest}"


def signature(secret: str, method: str, path: str, timestamp: str) -> str:
    message = f"{method}\n{path}\n{timestamp}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, method: str, path: str, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {TIME_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, method, path, timestamp)}


def verify(secret: str, method: str, path: str, headers: Mapping[str, str], now: float) -> bool:
    """Whether the request carries a signature of the secret made within MAX_SKEW (the
    comparison takes the same time however much of it matches)."""
    timestamp = headers.get(TIME_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > MAX_SKEW:
        return False
    expected = signature(secret, method, path, timestamp)
    return hmac.compare_digest(expected.encode(), given.encode("ascii", "replace"))


class Peers:
    """The relay client of one replica: signs with `secret`; a relay silent for `stall`
    seconds is lost. Create inside the event loop; `close()` at shutdown."""

    def __init__(
        self, secret: str, *, stall: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self._clock = clock
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=stall)
        self._session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, read_bufsize=BLOB_READ_BUFFER
        )

    async def close(self) -> None:
        await self._session.close()

    @asynccontextmanager
    async def open_blob(self, url: str, digest: Digest, offset: int) -> AsyncIterator[BlobStream]:
        """The blob's bytes from `offset` on, as the replica at `url` has them (their `start`
        is 0 if it sent the whole blob). RelayLost for anything but a 200 or 206, and when
        the connection fails or stalls mid-body."""
        path = relay_path(digest)
        headers = signed_headers(self._secret, "GET", path, self._clock())
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self._session.get(
                url + path, headers=headers, allow_redirects=False
            ) as resp:
                if resp.status == 206 and (granted := content_range(resp.headers)) is not None:
                    start, size = granted
                elif resp.status == 200:
                    start, size = 0, resp.content_length
                else:
                    raise RelayLost(f"{url} answered HTTP {resp.status} for {digest}")
                yield BlobStream(size=size, chunks=_guarded(resp.content.iter_any()), start=start)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RelayLost(f"relay from {url} failed: {exc or type(exc).__name__}") from None


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, a failure or stall mid-body raised as RelayLost."""
    try:
        async for chunk in chunks:
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RelayLost(f"relay failed mid-body: {exc or type(exc).__name__}") from None
