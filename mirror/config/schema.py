"""The settings: one declaration each, in the section it belongs to.

A setting is a field of a section dataclass whose metadata is `setting(parser, default)`:
the field's name is the key (in `mirror.toml`, `MIRROR_<KEY>`, `--key`), the section is
the dataclass holding it. `FIELDS` is read from these declarations; nothing else lists
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from mirror.config.auth import (
    AuthRule,
    parse_auth_groups,
    parse_auth_realm,
    parse_auth_rules,
    parse_htpasswd,
    parse_token_secret,
    parse_token_ttl,
)
from mirror.config.cluster import parse_advertise_url, parse_cluster_secret
from mirror.config.freshness import Freshness, TagRule, decide, parse_tag_rules
from mirror.config.parsers import (
    Listen,
    parse_bool,
    parse_count,
    parse_fraction,
    parse_image_list,
    parse_listen,
    parse_log_format,
    parse_log_level,
    parse_networks,
    parse_non_negative_seconds,
    parse_optional_bool,
    parse_optional_listen,
    parse_optional_path,
    parse_optional_str,
    parse_optional_url,
    parse_path,
    parse_positive_count,
    parse_prefix,
    parse_redis_url,
    parse_repository_globs,
    parse_seconds,
    parse_size,
    parse_storage,
)
from mirror.config.upstreams import UpstreamSettings
from mirror.config.workers import Workers, explain_workers, parse_workers


@dataclass(frozen=True)
class Setting:
    """How one key is read: its parser, its default (raw, as a file would give it), whether
    `check-config` masks it, and what it adds about a value that means more than it says
    (`explain`: a note, or None)."""

    parse: Callable[[Any], Any]
    default: Any
    secret: bool = False
    explain: Callable[[Any], str | None] | None = None


def setting(
    parse: Callable[[Any], Any],
    default: Any,
    *,
    secret: bool = False,
    explain: Callable[[Any], str | None] | None = None,
) -> Mapping[str, Setting]:
    """The field metadata that makes a section field the setting of the same name:
    `key: T = field(metadata=setting(parser, default))`."""
    return {"setting": Setting(parse, default, secret, explain)}


@dataclass(frozen=True)
class ServingSettings:
    """Where clients reach the mirror: the HTTP(S) addresses, the certificate, and how many
    worker processes serve them. The server checks that the certificate files are usable."""

    listen: Listen = field(metadata=setting(parse_listen, "0.0.0.0:5000"))
    workers: Workers = field(metadata=setting(parse_workers, "auto", explain=explain_workers))
    tls_cert: Path | None = field(metadata=setting(parse_optional_path, ""))
    tls_key: Path | None = field(metadata=setting(parse_optional_path, ""))
    tls_listen: Listen | None = field(metadata=setting(parse_optional_listen, ""))


@dataclass(frozen=True)
class RegistrySettings:
    """The upstream registries served and how long the mirror waits for them.
    `upstreams` is layered its own way (the `upstream` key: a URL or tables)."""

    upstreams: tuple[UpstreamSettings, ...]
    builtin_upstreams: bool = field(metadata=setting(parse_bool, True))
    connect_timeout: float = field(metadata=setting(parse_seconds, 5.0))
    read_timeout: float = field(metadata=setting(parse_seconds, 30.0))
    # Bounds getting to an upstream response, and a wait for another process's fetch.
    request_timeout: float = field(metadata=setting(parse_seconds, 5.0))
    # The longest a request waits for a free upstream connection (its timeout starts after).
    pool_timeout: float = field(metadata=setting(parse_seconds, 10.0))
    blob_connections: int = field(metadata=setting(parse_positive_count, 64))
    # How long an upstream's 404 for a manifest or blob is remembered (0: not at all).
    negative_ttl: float = field(metadata=setting(parse_non_negative_seconds, 60.0))
    # The circuit breaker: failures in a row that open it (0: never), then its back-off.
    circuit_failures: int = field(metadata=setting(parse_count, 5))
    circuit_backoff: float = field(metadata=setting(parse_seconds, 5.0))
    circuit_max_backoff: float = field(metadata=setting(parse_seconds, 300.0))

    def upstream(self, host: str) -> UpstreamSettings | None:
        return next((u for u in self.upstreams if u.host == host), None)


@dataclass(frozen=True)
class StorageSettings:
    """Where the cache lives: the data directory (blobs, manifests, SQLite metadata) or an
    S3-compatible bucket (the data dir then keeps spools and a hot-blob cache) and, for
    several replicas, the Redis metadata store. S3 credentials come from the standard AWS
    chain (environment, profiles, roles), never from here."""

    data_dir: Path = field(metadata=setting(parse_path, "./data"))
    redis_url: str | None = field(metadata=setting(parse_redis_url, "", secret=True))
    redis_key_prefix: str = field(metadata=setting(parse_prefix, "mirror:"))
    storage: str = field(metadata=setting(parse_storage, "file"))
    # Empty: AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, else AWS itself.
    s3_endpoint: str | None = field(metadata=setting(parse_optional_url, ""))
    # Empty: AWS_REGION, else us-east-1.
    s3_region: str | None = field(metadata=setting(parse_optional_str, ""))
    # Empty (auto): on when an endpoint is set (in the config or the environment).
    s3_path_style: bool | None = field(metadata=setting(parse_optional_bool, ""))
    local_cache_size: int = field(metadata=setting(parse_size, "4GiB"))
    # Blob GETs answered 307 to a presigned URL of the bucket instead of streamed.
    s3_redirect: bool = field(metadata=setting(parse_bool, False))
    # Seconds before a pending multipart upload counts as orphaned (its writer crashed): the
    # janitor of a serving mirror aborts it then.
    s3_orphan_grace: float = field(metadata=setting(parse_seconds, 21600.0))


@dataclass(frozen=True)
class ClusterSettings:
    """Replicas sharing one S3 bucket and one Redis: where the others reach this one, the
    secret their replica-to-replica requests carry, and how long a blob download's lease
    lasts without a renewal (renewed every third of it)."""

    advertise_url: str | None = field(metadata=setting(parse_advertise_url, ""))
    cluster_secret: str | None = field(metadata=setting(parse_cluster_secret, "", secret=True))
    cluster_secret_file: Path | None = field(metadata=setting(parse_optional_path, ""))
    cluster_lease: float = field(metadata=setting(parse_seconds, 10.0))


@dataclass(frozen=True)
class FreshnessSettings:
    """When a cached tag is asked about upstream again: tag ttl and rules (upstreams may
    add their own), the in-process tag cache, tag lists, offline mode, and the rate-limit
    budget kept for clients."""

    tag_ttl: float = field(metadata=setting(parse_non_negative_seconds, 300.0))
    tag_rules: tuple[TagRule, ...] = field(metadata=setting(parse_tag_rules, []))
    tag_cache_seconds: float = field(metadata=setting(parse_non_negative_seconds, 1.0))
    tags_list_ttl: float = field(metadata=setting(parse_non_negative_seconds, 60.0))
    offline: bool = field(metadata=setting(parse_bool, False))
    ratelimit_floor: int = field(metadata=setting(parse_count, 10))


@dataclass(frozen=True)
class CacheSettings:
    """How big the cache may grow and what eviction and gc keep."""

    max_cache_size: int = field(metadata=setting(parse_size, 0))
    cache_low_water: float = field(metadata=setting(parse_fraction, 0.9))
    min_free_space: int = field(metadata=setting(parse_size, "1GiB"))
    gc_grace: float = field(metadata=setting(parse_non_negative_seconds, 3600.0))


@dataclass(frozen=True)
class LimitSettings:
    """What one client can make the mirror fetch: blob downloads that continue after their
    clients left (per process), and cold misses in flight per client (0: no limit)."""

    abandoned_downloads: int = field(metadata=setting(parse_count, 8))
    abandoned_bytes: int = field(metadata=setting(parse_size, "2GiB"))
    max_cold_per_client: int = field(metadata=setting(parse_count, 16))


@dataclass(frozen=True)
class PrefetchSettings:
    """Images kept warm: which, for which platforms, how often."""

    prefetch: tuple[str, ...] = field(metadata=setting(parse_image_list, []))
    prefetch_platforms: tuple[str, ...] = field(metadata=setting(parse_image_list, []))
    prefetch_interval: float = field(metadata=setting(parse_seconds, 3600.0))


@dataclass(frozen=True)
class HostingSettings:
    """The repositories the mirror hosts itself (read-write, never fetched upstream), how
    long an upload may sit idle before it expires, and the largest manifest accepted."""

    hosted: tuple[str, ...] = field(metadata=setting(parse_repository_globs, []))
    upload_ttl: float = field(metadata=setting(parse_seconds, 86400.0))
    max_manifest_size: int = field(metadata=setting(parse_size, "4MiB"))


@dataclass(frozen=True)
class AuthSettings:
    """Client authentication: off unless `htpasswd` is set (the server reads the file)."""

    htpasswd: Path | None = field(metadata=setting(parse_htpasswd, ""))
    auth_groups: Mapping[str, tuple[str, ...]] = field(metadata=setting(parse_auth_groups, {}))
    auth_rules: tuple[AuthRule, ...] = field(metadata=setting(parse_auth_rules, []))
    metrics_auth: bool = field(metadata=setting(parse_bool, False))
    token_ttl: float = field(metadata=setting(parse_token_ttl, 300.0))
    token_secret: str | None = field(metadata=setting(parse_token_secret, "", secret=True))
    auth_realm: str | None = field(metadata=setting(parse_auth_realm, ""))
    trusted_proxies: tuple[str, ...] = field(metadata=setting(parse_networks, []))


@dataclass(frozen=True)
class LoggingSettings:
    """What the mirror logs and how it writes it."""

    log_level: str = field(metadata=setting(parse_log_level, "info"))
    log_format: str = field(metadata=setting(parse_log_format, "text"))


@dataclass(frozen=True)
class Config:
    """The effective configuration of one mirror process, one typed section per concern.
    Section order is the order `check-config` prints."""

    serving: ServingSettings
    registries: RegistrySettings
    storage: StorageSettings
    cluster: ClusterSettings
    freshness: FreshnessSettings
    cache: CacheSettings
    limits: LimitSettings
    prefetch: PrefetchSettings
    hosting: HostingSettings
    auth: AuthSettings
    logging: LoggingSettings

    def tag_freshness(self, host: str, repo: str, tag: str) -> Freshness:
        """How long a tag of the upstream `host` stays fresh: the first matching rule (the
        upstream's own rules, then the global ones), else the upstream's or global tag_ttl."""
        upstream = self.registries.upstream(host)
        ttl, rules = self.freshness.tag_ttl, self.freshness.tag_rules
        if upstream is not None:
            ttl = ttl if upstream.tag_ttl is None else upstream.tag_ttl
            rules = upstream.tag_rules + rules
        return decide(rules, ttl, repo, tag)


@dataclass(frozen=True)
class Field:
    """One setting's place: its key, the `Config` section holding it, how it is read."""

    key: str
    section: str
    setting: Setting


def _fields() -> tuple[Field, ...]:
    sections = get_type_hints(Config)
    found = [
        Field(item.name, section.name, item.metadata["setting"])
        for section in fields(Config)
        for item in fields(sections[section.name])
        if "setting" in item.metadata
    ]
    keys = [f.key for f in found]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"a key is declared in two sections: {keys}")
    return tuple(found)


# Every setting, in section order (the order `check-config` prints).
FIELDS = _fields()
SETTINGS: Mapping[str, Setting] = {f.key: f.setting for f in FIELDS}


def build(values: Mapping[str, Any]) -> Config:
    """A Config from parsed values by key (plus `upstreams`, which is no setting)."""
    sections = get_type_hints(Config)
    return Config(
        **{
            section.name: sections[section.name](
                **{item.name: values[item.name] for item in fields(sections[section.name])}
            )
            for section in fields(Config)
        }
    )
