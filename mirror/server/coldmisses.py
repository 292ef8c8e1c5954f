"""The per-client limit on cold blob misses in flight (`max_cold_per_client`).

A cold miss is a blob GET that makes the upstream send the blob for this client alone: it
started the download, or joined one nobody else reads (see `BlobCache.cold`). Cache hits and
joins of a download other clients read cost the upstream nothing more, so they are neither
limited nor counted. A client past the limit gets 429 with `Retry-After` instead of
monopolising the upstream's bandwidth and this process's downloads.

Clients are keyed by the user they authenticated as (client authentication on), else by
address (`server.clients`: IPv6 by its /64, behind a trusted proxy the address it vouches
for). The table holds only
clients with a miss in flight: an entry goes when its count drops to 0, so its size is
bounded by the requests in flight, whatever addresses clients come from. The limit is this
process's: with several workers a client may have up to `workers` times as many.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aiohttp import web

from mirror import errors, observe
from mirror.errors import RegistryError
from mirror.server import clients
from mirror.server.clients import Network

# What a refused client is told to wait: about the time a typical layer takes to arrive.
RETRY_AFTER_SECONDS = 5


class ColdMissLimit:
    """Counts each client's cold misses in flight and refuses one past `limit` (0: off)."""

    def __init__(self, limit: int, trusted_proxies: Sequence[str] = ()) -> None:
        self._limit = limit
        self._proxies = clients.networks(trusted_proxies)
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
        client = client_key(request, self._proxies)
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


def client_key(request: web.Request, trusted_proxies: Sequence[Network] = ()) -> str:
    """Who a request counts against: `user:NAME` when the client logged in, else its
    address as `server.clients` keys it (IPv6 by /64, behind a trusted proxy the address it
    vouches for)."""
    record = observe.current_request()
    if record is not None and record.user is not None:
        return f"user:{record.user}"
    return clients.client_key(clients.client_address(request, trusted_proxies))
