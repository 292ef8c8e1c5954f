"""How an upstream client behaves: its timeouts, connection pools, negative cache and
circuit breaker, read once from the configuration."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver

from mirror.config import RegistrySettings, UpstreamSettings
from mirror.upstream.breaker import BreakerSettings

# Manifests, tokens, HEADs and tag lists are small and quick: this many at once per
# upstream is plenty, and they never queue behind blob bodies (which have their own pool).
METADATA_CONNECTIONS = 32


@dataclass(frozen=True)
class ClientOptions:
    request_timeout: float = 5.0  # getting to a response, once a connection slot is had
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # idle time while reading a body
    pool_timeout: float = 10.0  # the longest wait for a connection slot
    blob_connections: int = 64
    metadata_connections: int = METADATA_CONNECTIONS
    negative_ttl: float = 60.0
    breaker: BreakerSettings = field(
        default_factory=lambda: BreakerSettings(failures=5, backoff=5.0, max_backoff=300.0)
    )
    # Monotonic seconds for the negative cache and the breaker; tests move their own.
    clock: Callable[[], float] = time.monotonic
    # Resolves host names before the redirect guard checks them (tests answer their own).
    resolver: AbstractResolver | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, registries: RegistrySettings, upstream: UpstreamSettings) -> ClientOptions:
        negative_ttl = upstream.negative_ttl
        return cls(
            request_timeout=registries.request_timeout,
            connect_timeout=registries.connect_timeout,
            read_timeout=registries.read_timeout,
            pool_timeout=registries.pool_timeout,
            blob_connections=registries.blob_connections,
            negative_ttl=registries.negative_ttl if negative_ttl is None else negative_ttl,
            breaker=BreakerSettings(
                failures=registries.circuit_failures,
                backoff=registries.circuit_backoff,
                max_backoff=registries.circuit_max_backoff,
            ),
        )
