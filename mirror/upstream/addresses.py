"""Where an upstream may send the mirror: no redirect (or token realm) may make it connect to
loopback, link-local or private addresses unless the upstream itself lives on such a network.

The check runs where connections are made: `GuardedResolver` is the aiohttp resolver of the
upstream's sessions, so the addresses it approves are exactly the ones connected to (a name
that resolves to a public address when checked and to 127.0.0.1 a moment later cannot slip
through between a check and a connect). aiohttp does not resolve literal IP hosts, so a
redirect to one is checked by `check_literal` before it is followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Literal

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Network = Literal["public", "loopback", "link-local", "private", "unspecified"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_RANGES: tuple[tuple[Network, tuple[str, ...]], ...] = (
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    (
        "private",
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"),
    ),
    ("unspecified", ("0.0.0.0/8", "::/128")),
)
_NETWORKS = tuple((name, ipaddress.ip_network(cidr)) for name, cidrs in _RANGES for cidr in cidrs)


class AddressRefused(Exception):
    """A connection the mirror will not make; the message says where and why. Not an
    OSError, so aiohttp passes it through instead of calling it a DNS failure."""


def network_of(address: str) -> Network:
    """Which kind of network `address` is on; an IPv4-mapped form (`::ffff:127.0.0.1`)
    counts as the IPv4 address it carries."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name, net in _NETWORKS:
        if ip.version == net.version and ip in net:
            return name
    return "public"


def literal(host: str) -> str | None:
    """`host` if it is an IP address (brackets stripped), else None."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return host.strip("[]")


def refusal(host: str, address: str, home: Iterable[Network]) -> str | None:
    """Why connecting to `address` (for `host`) is refused, or None when it is allowed:
    public addresses always are, others only on a kind of network the upstream is on."""
    network = network_of(address)
    if network == "public" or network in home:
        return None
    shown = host if host == address else f"{host} ({address})"
    a = "an" if network[0] in "aeiou" else "a"
    return f"{shown}, {a} {network} address, but is not on {a} {network} network itself: refused"


class GuardedResolver(AbstractResolver):
    """Resolves like the system does, and refuses the addresses `refusal` refuses for any
    host but the upstream's own (`own_host`, the operator's choice, may be anywhere).

    The upstream's own networks (`home`) are learned by resolving `own_host` the first time
    another host is asked for."""

    def __init__(self, own_host: str, resolver: AbstractResolver | None = None) -> None:
        self._own_host = own_host.strip("[]").lower()
        self._resolver = resolver if resolver is not None else DefaultResolver()
        self._home: frozenset[Network] | None = None

    async def home(self) -> frozenset[Network]:
        """The kinds of network the upstream's own host is on."""
        if self._home is None:
            if (address := literal(self._own_host)) is not None:
                addresses = [address]
            else:
                found = await self._resolver.resolve(self._own_host, 0, socket.AF_UNSPEC)
                addresses = [entry["host"] for entry in found]
            self._home = frozenset(network_of(a) for a in addresses)
        return self._home

    async def check_literal(self, host: str) -> None:
        """Refuse a literal IP host the way `resolve` refuses names (aiohttp connects to
        literal addresses without asking its resolver)."""
        address = literal(host)
        if address is None or address.lower() == self._own_host:
            return
        if (why := refusal(host, address, await self.home())) is not None:
            raise AddressRefused(why)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if host.rstrip(".").lower() == self._own_host:
            return found
        home = await self.home()
        for entry in found:
            if (why := refusal(host, entry["host"], home)) is not None:
                raise AddressRefused(why)
        return found

    async def close(self) -> None:
        await self._resolver.close()
