"""Who a request comes from, for the limits that count per client (the failed-login back-off,
the cold-miss limit): the peer's address, or behind a trusted proxy the `X-Forwarded-For`
hop it vouches for; an IPv6 client by its /64 (a host is usually given a whole /64 and can
pick a fresh address for every request)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(trusted_proxies: Sequence[str]) -> tuple[Network, ...]:
    """The `trusted_proxies` setting (addresses or CIDRs, already validated) as networks."""
    return tuple(ipaddress.ip_network(cidr) for cidr in trusted_proxies)


def client_address(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    `X-Forwarded-For` hop nearest to it that is not a trusted proxy (each proxy appends the
    address it saw, so hops further left are the client's word and not believed)."""
    peer = request.remote or "-"
    if not trusted_proxies or not _within(peer, trusted_proxies):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", ())
        for hop in header.split(",")
    ]
    for hop in reversed(hops):
        if not _within(hop, trusted_proxies):
            return hop if _is_address(hop) else peer
    return peer


def client_key(address: str) -> str:
    """What a client is counted by: an IPv4 address, or an IPv6 address's /64 (an
    IPv4-mapped one as its IPv4 address). Anything else is its own key."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # without an IPv6 zone
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _within(address: str, nets: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in nets)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
