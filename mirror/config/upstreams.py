"""The registries the mirror serves: the built-in public ones and `[[upstream]]` tables
(with their credentials), layered into one list."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mirror.config.errors import ConfigError
from mirror.config.freshness import TagRule, parse_tag_rules
from mirror.config.parsers import (
    json_or,
    parse_bool,
    parse_non_negative_seconds,
    parse_optional_str,
    parse_path,
    parse_seconds,
    parse_url,
)
from mirror.reference import DOCKER_HUB_ALIASES, is_registry_host

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
# Names Docker Hub goes by; as an upstream `host` they all mean docker.io.
DOCKER_HUB_HOSTS = DOCKER_HUB_ALIASES
# Public registries served out of the box (`builtin_upstreams`): host -> where to reach it.
BUILTIN_UPSTREAMS: Mapping[str, str] = {
    DOCKER_HUB: DOCKER_HUB_URL,
    "ghcr.io": "https://ghcr.io",
    "quay.io": "https://quay.io",
    "registry.k8s.io": "https://registry.k8s.io",
    "gcr.io": "https://gcr.io",
    "mcr.microsoft.com": "https://mcr.microsoft.com",
    "public.ecr.aws": "https://public.ecr.aws",
    "nvcr.io": "https://nvcr.io",
}
# Token services of built-in upstreams that live outside the registry's own domain (the
# others answer on their own host or domain: auth.docker.io, ghcr.io/token, quay.io/v2/auth,
# gcr.io/v2/token, public.ecr.aws/token; registry.k8s.io and mcr.microsoft.com ask none).
BUILTIN_TOKEN_HOSTS: Mapping[str, tuple[str, ...]] = {"nvcr.io": ("authn.nvidia.com",)}
CLIENT_CREDENTIALS = ("mirror", "passthrough")
DEFAULT_PASSTHROUGH_TTL = 60.0


@dataclass(frozen=True)
class UpstreamSettings:
    """One registry the mirror serves: `host` is the registry it stands for (what clients
    name in image references and containerd sends as `ns`), `url` where the mirror reaches
    it. Credentials go to this upstream (and its token service) only."""

    host: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Where the password came from, for `check-config` (never the secret itself).
    password_source: str | None = None
    library_prefix: bool = False
    tag_ttl: float | None = None  # None: the global tag_ttl
    negative_ttl: float | None = None  # None: the global negative_ttl
    tag_rules: tuple[TagRule, ...] = ()
    ca_file: Path | None = None
    insecure: bool = False
    source: str = "built-in"
    #: Hosts besides the upstream's own domain its token realm may be on.
    token_hosts: tuple[str, ...] = ()
    #: The operator's opt-in to let unauthenticated clients pull with these credentials.
    anonymous_clients_use_credentials: bool = False
    #: "mirror": the mirror's own credentials (if any); "passthrough": each client's.
    client_credentials: str = "mirror"
    #: How long an upstream's acceptance of a client's token for a repository is trusted.
    passthrough_ttl: float = DEFAULT_PASSTHROUGH_TTL

    @property
    def passthrough(self) -> bool:
        return self.client_credentials == "passthrough"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the upstream's TLS connections verify against: the system CAs (True), a
        CA bundle, or nothing at all (`insecure`, for labs)."""
        if self.insecure:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


def parse_host(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('host: expected a registry host such as "ghcr.io"')
    host = value.strip().lower()
    if host in DOCKER_HUB_HOSTS:
        return DOCKER_HUB
    if not is_registry_host(host):
        raise ValueError(
            f'host: {value!r} is not a registry host (it needs a "." or a port, '
            'like "ghcr.io" or "registry:5000", or is "localhost")'
        )
    return host


def upstreams(
    layers: list[tuple[str, Any]], builtin: bool, environ: Mapping[str, str]
) -> tuple[UpstreamSettings, ...]:
    """The registries to serve: the built-in public ones (unless switched off), changed,
    added to or disabled by the latest layer's tables; a bare URL in a later layer (such as
    `--upstream URL`) only moves docker.io. `layers` are (source, raw value), oldest first."""
    by_host: dict[str, UpstreamSettings] = {}
    if builtin:
        for host, url in BUILTIN_UPSTREAMS.items():
            by_host[host] = UpstreamSettings(
                host,
                url,
                library_prefix=host == DOCKER_HUB,
                token_hosts=BUILTIN_TOKEN_HOSTS.get(host, ()),
            )
    tables: tuple[str, list[Any]] | None = None
    hub_url: tuple[str, str] | None = None
    for source, raw in layers:
        try:
            value = _upstream_value(raw)
        except ValueError as exc:
            raise ConfigError(f"upstream (from {source}): {exc}") from None
        if isinstance(value, str):
            hub_url = (source, value)
        else:
            tables, hub_url = (source, value), None
    if tables is not None:
        _apply_tables(by_host, *tables, environ)
    if hub_url is not None:
        source, url = hub_url
        hub = by_host.get(DOCKER_HUB, UpstreamSettings(DOCKER_HUB, url, library_prefix=True))
        by_host[DOCKER_HUB] = replace(hub, url=url, source=source)
    if not by_host:
        raise ConfigError(
            "upstream: no registry left to serve; add [[upstream]] tables "
            "or set builtin_upstreams = true"
        )
    return tuple(by_host.values())


def _upstream_value(value: Any) -> str | list[Any]:
    """One layer's `upstream`: a bare URL (the upstream for docker.io) or a list of tables
    (TOML `[[upstream]]`, or the same as JSON from the environment)."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = json_or(value, "a list of upstream tables")
    if isinstance(value, str):
        return parse_url(value.strip())
    if isinstance(value, list):
        return value
    raise ValueError("expected a URL (the upstream for docker.io) or [[upstream]] tables")


def _apply_tables(
    by_host: dict[str, UpstreamSettings],
    source: str,
    items: list[Any],
    environ: Mapping[str, str],
) -> None:
    """Each table replaces (or, `enabled = false`, removes) the upstream of its host."""
    seen: set[str] = set()
    for index, raw in enumerate(items):
        settings, enabled = _upstream_table(raw, source, index, environ)
        if settings.host in seen:
            raise ConfigError(f"upstream {settings.host} (from {source}): listed twice")
        seen.add(settings.host)
        if enabled:
            by_host[settings.host] = settings
        else:
            by_host.pop(settings.host, None)


def parse_token_hosts(value: Any) -> tuple[str, ...]:
    """Host names (no scheme, path or port) a token realm may be on."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of host names")
    hosts: list[str] = value
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
    return tuple(h.lower() for h in hosts)


def parse_client_credentials(value: Any) -> str:
    if value not in CLIENT_CREDENTIALS:
        raise ValueError(f'expected "mirror" or "passthrough", got {value!r}')
    return str(value)


_UPSTREAM_KEYS = {
    "host",
    "url",
    "username",
    "password",
    "password_env",
    "password_file",
    "library_prefix",
    "tag_ttl",
    "negative_ttl",
    "tag_rules",
    "ca_file",
    "insecure",
    "enabled",
    "token_hosts",
    "anonymous_clients_use_credentials",
    "client_credentials",
    "passthrough_ttl",
}
_PASSWORD_KEYS = ("password", "password_env", "password_file")
# How each key of a table is parsed (the password keys have their own rules).
_TABLE_PARSERS: Mapping[str, Callable[[Any], Any]] = {
    "url": parse_url,
    "username": parse_optional_str,
    "library_prefix": parse_bool,
    "tag_ttl": parse_non_negative_seconds,
    "negative_ttl": parse_non_negative_seconds,
    "tag_rules": parse_tag_rules,
    "ca_file": parse_path,
    "insecure": parse_bool,
    "enabled": parse_bool,
    "token_hosts": parse_token_hosts,
    "anonymous_clients_use_credentials": parse_bool,
    "client_credentials": parse_client_credentials,
    "passthrough_ttl": parse_seconds,
}


def _upstream_table(
    raw: Any, source: str, index: int, environ: Mapping[str, str]
) -> tuple[UpstreamSettings, bool]:
    """One `[[upstream]]` table: its settings and whether it is enabled."""
    if not isinstance(raw, dict):
        raise ConfigError(f"upstream {index + 1} (from {source}): expected a table")
    if "host" not in raw:
        raise ConfigError(f"upstream {index + 1} (from {source}): needs `host`")
    try:
        host = parse_host(raw["host"])
    except ValueError as exc:
        raise ConfigError(f"upstream {index + 1} (from {source}): {exc}") from None
    where = f"upstream {host} (from {source})"
    if unknown := set(raw) - _UPSTREAM_KEYS:
        known = ", ".join(sorted(_UPSTREAM_KEYS))
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known keys: {known})")
    values: dict[str, Any] = {}
    for key, parse in _TABLE_PARSERS.items():
        if key in raw:
            try:
                values[key] = parse(raw[key])
            except ValueError as exc:
                raise ConfigError(f"{where}: {key}: {exc}") from None
    password, password_source = _password(raw, where, environ)
    username = values.get("username")
    if (username is None) != (password is None):
        raise ConfigError(
            f"{where}: credentials need both `username` and one of {', '.join(_PASSWORD_KEYS)}"
        )
    ca_file = values.get("ca_file")
    if ca_file is not None:
        _check_ca_file(ca_file, values.get("insecure", False), where)
    settings = UpstreamSettings(
        host=host,
        url=values.get("url", BUILTIN_UPSTREAMS.get(host, f"https://{host}")),
        username=username,
        password=password,
        password_source=password_source,
        library_prefix=values.get("library_prefix", host == DOCKER_HUB),
        tag_ttl=values.get("tag_ttl"),
        negative_ttl=values.get("negative_ttl"),
        tag_rules=values.get("tag_rules", ()),
        ca_file=ca_file,
        insecure=values.get("insecure", False),
        source=source,
        token_hosts=values.get("token_hosts", BUILTIN_TOKEN_HOSTS.get(host, ())),
        anonymous_clients_use_credentials=values.get("anonymous_clients_use_credentials", False),
        client_credentials=values.get("client_credentials", "mirror"),
        passthrough_ttl=values.get("passthrough_ttl", DEFAULT_PASSTHROUGH_TTL),
    )
    return settings, values.get("enabled", True)


def _check_ca_file(ca_file: Path, insecure: bool, where: str) -> None:
    """A CA bundle the upstream's connections can verify against (and not `insecure`)."""
    if insecure:
        raise ConfigError(f"{where}: set `ca_file` or `insecure`, not both")
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"{where}: ca_file: {ca_file} is not a usable CA bundle: {reason}"
        ) from None


def _password(
    raw: Mapping[str, Any], where: str, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The secret, from exactly one of `password`, `password_env` (the name of an
    environment variable) or `password_file`; and where it came from."""
    given = [key for key in _PASSWORD_KEYS if key in raw]
    if len(given) > 1:
        raise ConfigError(f"{where}: set only one of {', '.join(given)}")
    if not given:
        return None, None
    key = given[0]
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key}: expected a non-empty string")
    if key == "password":
        return value, "the config"
    if key == "password_env":
        if value not in environ:
            raise ConfigError(f"{where}: password_env: environment variable {value} is not set")
        return environ[value], f"environment variable {value}"
    try:
        text = Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: password_file: cannot read {value}: {exc.strerror}") from None
    return text.rstrip("\r\n"), f"file {value}"
