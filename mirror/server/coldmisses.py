"""The per-client limit on cold blob misses in flight (`max_cold_per_client`).

A cold miss is a blob GET that makes the upstream send the blob for this client alone: it
started the download, or joined one nobody else reads (see `BlobCache.cold`). Cache hits and
joins of a download other clients read cost the upstream nothing more, so they are neither
limited nor counted. A client past the limit gets 429 with `Retry-After` instead of
monopolising the upstream's bandwidth and this process's downloads.

Clients are keyed by the user they authenticated as (client authentication on), else by
peer address, IPv6 by its /64 (what one host or site typically gets). The table holds only
clients with a miss in flight: an entry goes when its count drops to 0, so its size is
bounded by the requests in flight, whatever addresses clients come from. The limit is this
process's: with several workers a client may have up to `workers` times as many.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from mirror import errors, observe
from mirror.errors import RegistryError

# What a refused client is told to wait: about the time a typical layer takes to arrive.
RETRY_AFTER_SECONDS = 5


class ColdMissLimit:
    """Counts each client's cold misses in flight and refuses one past `limit` (0: off)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight: dict[str, int] = {}

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)

    def clients(self) -> int:
        """How many clients have a cold miss in flight (the table's size)."""
        return len(self._in_flight)

    @contextmanager
    def hold(self, request: web.Request) -> Iterator[None]:
        """Count a cold miss of `request`'s client while the block runs; raise 429
        TOOMANYREQUESTS if the client already has `limit` of them."""
        if self._limit <= 0:
            yield
            return
        client = client_key(request)
        count = self._in_flight.get(client, 0)
        if count >= self._limit:
            observe.cold_miss_refused()
            raise RegistryError(
                errors.TOOMANYREQUESTS,
                f"too many blob downloads from the upstream in flight for this client "
                f"(max_cold_per_client {self._limit}); try again in {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._in_flight[client] = count + 1
        try:
            yield
        finally:
            if (left := self._in_flight[client] - 1) > 0:
                self._in_flight[client] = left
            else:
                del self._in_flight[client]


def client_key(request: web.Request) -> str:
    """Who a request counts against: `user:NAME` when the client logged in, else its peer
    address (an IPv6 address by its /64 network)."""
    record = observe.current_request()
    if record is not None and record.user is not None:
        return f"user:{record.user}"
    remote = request.remote or "-"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote  # a Unix socket or a test transport: one key for all
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
