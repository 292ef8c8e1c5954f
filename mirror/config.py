"""The mirror's configuration: one typed place, four layers.

Each setting has one name used everywhere: the key in `mirror.toml`, the `--flag` on
`mirror serve` (dashes for underscores) and the `MIRROR_<KEY>` environment variable. Later
layers win: built-in default < file < environment < command line. Every error names the key
and the layer it came from, so an operator can fix it without reading code.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
DEFAULT_CONFIG_FILE = Path("mirror.toml")
ENV_PREFIX = "MIRROR_"


class ConfigError(Exception):
    """A bad configuration value; the message names the key and where it came from."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TagRule:
    """A freshness rule for tags: the first rule that matches a tag decides its freshness.

    `match` is a glob on the repository (`library/*`) or on `repository:tag` (`*:latest`);
    `tag_regex` must match the whole tag (`v?\\d+\\.\\d+\\.\\d+` for semver). A rule with
    both needs both. `immutable` tags are never revalidated once cached.
    """

    match: str | None = None
    tag_regex: re.Pattern[str] | None = None
    ttl: float | None = None
    immutable: bool = False

    def matches(self, repo: str, tag: str) -> bool:
        if self.match is not None:
            subject = f"{repo}:{tag}" if ":" in self.match else repo
            if not fnmatch.fnmatchcase(subject, self.match):
                return False
        return self.tag_regex is None or self.tag_regex.fullmatch(tag) is not None

    def __str__(self) -> str:
        parts = []
        if self.match is not None:
            parts.append(f"match = {_toml_str(self.match)}")
        if self.tag_regex is not None:
            parts.append(f"tag_regex = {_toml_str(self.tag_regex.pattern)}")
        if self.ttl is not None:
            parts.append(f"ttl = {self.ttl!r}")
        if self.immutable:
            parts.append("immutable = true")
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class Freshness:
    ttl: float
    immutable: bool


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
    tag_rules: tuple[TagRule, ...] = ()
    ca_file: Path | None = None
    insecure: bool = False
    source: str = "built-in"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the upstream's TLS connections verify against: the system CAs (True), a
        CA bundle, or nothing at all (`insecure`, for labs)."""
        if self.insecure:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


@dataclass(frozen=True)
class Config:
    """The effective configuration of one mirror process."""

    listen: Listen
    upstreams: tuple[UpstreamSettings, ...]
    builtin_upstreams: bool
    data_dir: Path
    redis_url: str | None
    redis_key_prefix: str
    tag_ttl: float
    tag_rules: tuple[TagRule, ...]
    tag_cache_seconds: float
    tags_list_ttl: float
    offline: bool
    ratelimit_floor: int
    request_timeout: float
    workers: int
    connect_timeout: float
    read_timeout: float
    log_level: str
    log_format: str
    tls_cert: Path | None
    tls_key: Path | None
    tls_listen: Listen | None
    max_cache_size: int
    cache_low_water: float
    min_free_space: int
    gc_grace: float
    prefetch: tuple[str, ...]
    prefetch_platforms: tuple[str, ...]
    prefetch_interval: float
    htpasswd: Path | None
    auth_groups: Mapping[str, tuple[str, ...]]
    auth_rules: tuple[AuthRule, ...]
    metrics_auth: bool
    token_ttl: float
    token_secret: str | None
    auth_realm: str | None

    def upstream(self, host: str) -> UpstreamSettings | None:
        return next((u for u in self.upstreams if u.host == host), None)

    def freshness(self, host: str, repo: str, tag: str) -> Freshness:
        """How long a tag of the upstream `host` stays fresh: the first matching rule (the
        upstream's own rules, then the global ones), else the upstream's or global tag_ttl."""
        upstream = self.upstream(host)
        ttl = self.tag_ttl
        rules = self.tag_rules
        if upstream is not None:
            ttl = self.tag_ttl if upstream.tag_ttl is None else upstream.tag_ttl
            rules = upstream.tag_rules + rules
        for rule in rules:
            if rule.matches(repo, tag):
                return Freshness(
                    ttl=ttl if rule.ttl is None else rule.ttl, immutable=rule.immutable
                )
        return Freshness(ttl=ttl, immutable=False)


# --- value parsers: each takes the raw value (TOML-typed or a string from env/flags) ----------


def _listen(value: Any) -> Listen:
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Listen(host.strip("[]") or "0.0.0.0", port)


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the URL; use username and password_env")
    return value.rstrip("/")


def _optional_listen(value: Any) -> Listen | None:
    return _listen(value) if value != "" else None


def _optional_str(value: Any) -> str | None:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value or None


def _redis_url(value: Any) -> str | None:
    text = _optional_str(value)
    if text is not None and urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {text!r}")
    return text


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path")
    return Path(value)


def _optional_path(value: Any) -> Path | None:
    if not isinstance(value, str):
        raise ValueError("expected a path")
    return Path(value) if value else None


def _number_of_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None


def _seconds(value: Any) -> float:
    seconds = _number_of_seconds(value)
    if not seconds > 0:
        raise ValueError("must be greater than 0")
    return seconds


def _non_negative_seconds(value: Any) -> float:
    seconds = _number_of_seconds(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return int(str(value).strip())


def _workers(value: Any) -> int:
    count = _count(value)
    if not 1 <= count <= 64:
        raise ValueError("expected 1 to 64 worker processes")
    return count


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("expected a non-empty string without spaces")
    return value


def _json_or(value: Any, what: str) -> Any:
    """`value` as it came from TOML, or parsed as JSON when it came as a string from the
    environment (None for an empty string)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            raise ValueError(f"expected JSON ({what})") from None
    return value


_RULE_KEYS = {"match", "tag_regex", "ttl", "immutable"}


def _tag_rules(value: Any) -> tuple[TagRule, ...]:
    """A list of tables (TOML `[[tag_rules]]`), or the same as JSON from the environment."""
    value = _json_or(value, "a list of rules")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("expected a list of rules ([[tag_rules]] tables)")
    rules = []
    for index, raw in enumerate(value):
        where = f"rule {index + 1}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a table")
        if unknown := set(raw) - _RULE_KEYS:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if "match" not in raw and "tag_regex" not in raw:
            raise ValueError(f"{where}: needs `match` or `tag_regex`")
        if "ttl" not in raw and not raw.get("immutable"):
            raise ValueError(f"{where}: needs `ttl` or `immutable = true`")
        match = raw.get("match")
        if match is not None and (not isinstance(match, str) or not match):
            raise ValueError(f"{where}: match must be a non-empty glob")
        regex = None
        if "tag_regex" in raw:
            try:
                regex = re.compile(str(raw["tag_regex"]))
            except re.error as exc:
                raise ValueError(f"{where}: tag_regex is not a valid regex: {exc}") from None
        try:
            ttl = None if "ttl" not in raw else _non_negative_seconds(raw["ttl"])
            immutable = _bool(raw.get("immutable", False))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        rules.append(TagRule(match=match, tag_regex=regex, ttl=ttl, immutable=immutable))
    return tuple(rules)


_UPSTREAM_KEYS = {
    "host",
    "url",
    "username",
    "password",
    "password_env",
    "password_file",
    "library_prefix",
    "tag_ttl",
    "tag_rules",
    "ca_file",
    "insecure",
    "enabled",
}
_PASSWORD_KEYS = ("password", "password_env", "password_file")


def _upstream_value(value: Any) -> str | list[Any]:
    """One layer's `upstream`: a bare URL (the upstream for docker.io) or a list of tables
    (TOML `[[upstream]]`, or the same as JSON from the environment)."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = _json_or(value, "a list of upstream tables")
    if isinstance(value, str):
        return _url(value.strip())
    if isinstance(value, list):
        return value
    raise ValueError("expected a URL (the upstream for docker.io) or [[upstream]] tables")


def _host(value: Any) -> str:
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


def _upstream_table(
    raw: Any, source: str, index: int, environ: Mapping[str, str]
) -> tuple[UpstreamSettings, bool]:
    """One `[[upstream]]` table: its settings and whether it is enabled."""
    if not isinstance(raw, dict):
        raise ConfigError(f"upstream {index + 1} (from {source}): expected a table")
    if "host" not in raw:
        raise ConfigError(f"upstream {index + 1} (from {source}): needs `host`")
    try:
        host = _host(raw["host"])
    except ValueError as exc:
        raise ConfigError(f"upstream {index + 1} (from {source}): {exc}") from None
    where = f"upstream {host} (from {source})"
    if unknown := set(raw) - _UPSTREAM_KEYS:
        known = ", ".join(sorted(_UPSTREAM_KEYS))
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known keys: {known})")
    parsers: dict[str, Callable[[Any], Any]] = {
        "url": _url,
        "username": _optional_str,
        "library_prefix": _bool,
        "tag_ttl": _non_negative_seconds,
        "tag_rules": _tag_rules,
        "ca_file": _path,
        "insecure": _bool,
        "enabled": _bool,
    }
    values: dict[str, Any] = {}
    for key, parse in parsers.items():
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
        if values.get("insecure"):
            raise ConfigError(f"{where}: set `ca_file` or `insecure`, not both")
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"{where}: ca_file: {ca_file} is not a usable CA bundle: {reason}"
            ) from None
    settings = UpstreamSettings(
        host=host,
        url=values.get("url", BUILTIN_UPSTREAMS.get(host, f"https://{host}")),
        username=username,
        password=password,
        password_source=password_source,
        library_prefix=values.get("library_prefix", host == DOCKER_HUB),
        tag_ttl=values.get("tag_ttl"),
        tag_rules=values.get("tag_rules", ()),
        ca_file=ca_file,
        insecure=values.get("insecure", False),
        source=source,
    )
    return settings, values.get("enabled", True)


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


def _upstreams(
    layers: list[tuple[str, Any]], builtin: bool, environ: Mapping[str, str]
) -> tuple[UpstreamSettings, ...]:
    """The registries to serve: the built-in public ones (unless switched off), changed,
    added to or disabled by the latest layer's tables; a bare URL in a later layer (such as
    `--upstream URL`) only moves docker.io."""
    by_host: dict[str, UpstreamSettings] = {}
    if builtin:
        for host, url in BUILTIN_UPSTREAMS.items():
            by_host[host] = UpstreamSettings(host, url, library_prefix=host == DOCKER_HUB)
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
        source, items = tables
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


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp](?:i?b)?|b)?\s*", re.IGNORECASE)


def _size(value: Any) -> int:
    """Bytes: a whole number, or a string like "500GB", "20 GiB", "1.5T" (0: no limit).
    Units are decimal (GB = 10^9) unless binary (GiB = 2^30)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 500GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = _SIZE_RE.fullmatch(str(value))
    if not match:
        raise ValueError(f"expected a size such as 500GB or 20GiB, got {value!r}")
    unit = (match.group(2) or "").lower().removesuffix("b")
    base = 1024 if unit.endswith("i") else 1000
    power = "kmgtp".index(unit[0]) + 1 if unit else 0
    return int(float(match.group(1)) * base**power)


def _fraction(value: Any) -> float:
    number = _number_of_seconds(value)
    if not 0 < number < 1:
        raise ValueError("expected a fraction between 0 and 1, such as 0.9")
    return number


def _image_list(value: Any) -> tuple[str, ...]:
    """Image references (`alpine:3.19`, `ghcr.io/org/app:1`): a list, or from the
    environment a comma-separated string."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _log_format(value: Any) -> str:
    text = str(value).lower()
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {value!r}")
    return text


def _log_level(value: Any) -> str:
    text = str(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {value!r}")
    return text


# --- client authentication (see mirror.server.auth) ---------------------------------------

AUTH_ACCESS = ("pull", "deny")
# Docker uses a token for at least this long, whatever `expires_in` says.
MIN_TOKEN_TTL = 60.0
MIN_TOKEN_SECRET = 16


@dataclass(frozen=True)
class AuthRule:
    """Who may pull what: the first rule matching the user (by name, by group, or `*` for
    anyone logged in), the upstream host and the repository glob decides."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ("*",)
    repositories: tuple[str, ...] = ("*",)
    access: str = "pull"  # or "deny"

    def __str__(self) -> str:
        parts = [
            f"{key} = {_toml_value(getattr(self, key))}"
            for key in ("users", "groups", "upstreams", "repositories")
            if getattr(self, key) != getattr(AuthRule, key)
        ]
        parts.append(f"access = {_toml_str(self.access)}")
        return "{" + ", ".join(parts) + "}"


def _htpasswd(value: Any) -> Path | None:
    """An htpasswd file (empty: no client authentication); the server checks its entries."""
    if not isinstance(value, str):
        raise ValueError("expected the path of an htpasswd file")
    return Path(value) if value else None


def _names(value: Any, what: str) -> tuple[str, ...]:
    """A list of non-empty strings (a single string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what}: expected a list of non-empty strings")
    return tuple(value)


def _auth_groups(value: Any) -> dict[str, tuple[str, ...]]:
    """group -> users: a TOML table, or the same as a JSON object from the environment."""
    value = _json_or(value, "an object of group -> list of users")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a table of group = [users]")
    groups = {}
    for name, members in value.items():
        if not name or name == "*":
            raise ValueError(f"invalid group name {name!r}")
        groups[name] = _names(members, f"group {name!r}")
    return groups


_AUTH_RULE_KEYS = {"users", "groups", "upstreams", "repositories", "access"}


def _auth_rules(value: Any) -> tuple[AuthRule, ...]:
    """A list of tables (TOML `[[auth_rules]]`), or the same as JSON from the environment."""
    value = _json_or(value, "a list of rules")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("expected a list of rules ([[auth_rules]] tables)")
    rules = []
    for index, raw in enumerate(value):
        where = f"rule {index + 1}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a table")
        if unknown := set(raw) - _AUTH_RULE_KEYS:
            known = ", ".join(sorted(_AUTH_RULE_KEYS))
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known keys: {known})")
        if "users" not in raw and "groups" not in raw:
            raise ValueError(f'{where}: needs `users` (["*"]: anyone logged in) or `groups`')
        try:
            upstreams = _names(raw.get("upstreams", ["*"]), "upstreams")
            upstreams = tuple(h if h == "*" else _host(h) for h in upstreams)
            rule = AuthRule(
                users=_names(raw.get("users", []), "users") if "users" in raw else (),
                groups=_names(raw["groups"], "groups") if "groups" in raw else (),
                upstreams=upstreams,
                repositories=_names(raw.get("repositories", ["*"]), "repositories"),
                access=raw.get("access", "pull"),
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if rule.access not in AUTH_ACCESS:
            raise ValueError(f'{where}: access must be "pull" or "deny", got {rule.access!r}')
        rules.append(rule)
    return tuple(rules)


def _token_ttl(value: Any) -> float:
    seconds = _number_of_seconds(value)
    if seconds < MIN_TOKEN_TTL:
        raise ValueError(f"must be at least {MIN_TOKEN_TTL:g} seconds (Docker assumes that)")
    return seconds


def _token_secret(value: Any) -> str | None:
    secret = _optional_str(value)
    if secret is not None and len(secret) < MIN_TOKEN_SECRET:
        raise ValueError(f"must be at least {MIN_TOKEN_SECRET} characters")
    return secret


def _auth_realm(value: Any) -> str | None:
    if value == "":
        return None
    url = _url(value)
    if urlsplit(url).query or urlsplit(url).fragment:
        raise ValueError("expected a URL without query or fragment")
    return url


def _check_auth(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Authentication settings only mean something with `htpasswd`; rules name groups that
    exist and registries that are served."""
    if values["htpasswd"] is None:
        for key in ("auth_rules", "auth_groups", "metrics_auth"):
            if values[key]:
                raise ConfigError(
                    f"{key} (from {sources[key]}): needs htpasswd; without it clients are "
                    "not authenticated and anyone may pull"
                )
        return
    served = {upstream.host for upstream in values["upstreams"]}
    for index, rule in enumerate(values["auth_rules"]):
        where = f"auth_rules (from {sources['auth_rules']}): rule {index + 1}"
        for group in rule.groups:
            if group not in values["auth_groups"]:
                defined = ", ".join(values["auth_groups"]) or "none"
                raise ConfigError(f"{where}: unknown group {group!r} (auth_groups: {defined})")
        for host in rule.upstreams:
            if host != "*" and host not in served:
                raise ConfigError(
                    f"{where}: upstream {host!r} is not served (it serves {', '.join(served)})"
                )


@dataclass(frozen=True)
class Setting:
    parse: Callable[[Any], Any]
    default: Any
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "listen": Setting(_listen, "0.0.0.0:5000"),
    "builtin_upstreams": Setting(_bool, True),
    "data_dir": Setting(_path, "./data"),
    "redis_url": Setting(_redis_url, "", secret=True),
    "redis_key_prefix": Setting(_prefix, "mirror:"),
    "tag_ttl": Setting(_non_negative_seconds, 300.0),
    "tag_rules": Setting(_tag_rules, []),
    "tag_cache_seconds": Setting(_non_negative_seconds, 1.0),
    "tags_list_ttl": Setting(_non_negative_seconds, 60.0),
    "offline": Setting(_bool, False),
    "ratelimit_floor": Setting(_count, 10),
    "request_timeout": Setting(_seconds, 5.0),
    "workers": Setting(_workers, 1),
    "connect_timeout": Setting(_seconds, 5.0),
    "read_timeout": Setting(_seconds, 30.0),
    "log_level": Setting(_log_level, "info"),
    "log_format": Setting(_log_format, "text"),
    "tls_cert": Setting(_optional_path, ""),
    "tls_key": Setting(_optional_path, ""),
    "tls_listen": Setting(_optional_listen, ""),
    "max_cache_size": Setting(_size, 0),
    "cache_low_water": Setting(_fraction, 0.9),
    "min_free_space": Setting(_size, "1GiB"),
    "gc_grace": Setting(_non_negative_seconds, 3600.0),
    "prefetch": Setting(_image_list, []),
    "prefetch_platforms": Setting(_image_list, []),
    "prefetch_interval": Setting(_seconds, 3600.0),
    "htpasswd": Setting(_htpasswd, ""),
    "auth_groups": Setting(_auth_groups, {}),
    "auth_rules": Setting(_auth_rules, []),
    "metrics_auth": Setting(_bool, False),
    "token_ttl": Setting(_token_ttl, 300.0),
    "token_secret": Setting(_token_secret, "", secret=True),
    "auth_realm": Setting(_auth_realm, ""),
}
# `upstream` is layered its own way (see `_upstreams`): a URL or a list of tables.
UPSTREAM_KEY = "upstream"
assert set(SETTINGS) | {"upstreams"} == {f.name for f in fields(Config)}


@dataclass(frozen=True)
class LoadedConfig:
    """A config plus where each value came from (shown by `mirror check-config`)."""

    config: Config
    sources: Mapping[str, str]
    file: Path | None


def load(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Build the effective config from defaults, the file, `MIRROR_*` variables and flags.

    `config_file=None` reads ./mirror.toml when it exists; an explicit file must exist.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}
    sources = dict.fromkeys(SETTINGS, "default")
    upstream_layers: list[tuple[str, Any]] = []

    def set_value(key: str, value: Any, source: str) -> None:
        if key == UPSTREAM_KEY:
            upstream_layers.append((source, value))
        else:
            raw[key] = value
            sources[key] = source

    file = config_file
    if file is None and DEFAULT_CONFIG_FILE.is_file():
        file = DEFAULT_CONFIG_FILE
    if file is not None:
        for key, value in _read_file(file).items():
            set_value(key, value, str(file))
    for key in (*SETTINGS, UPSTREAM_KEY):
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            set_value(key, environ[env_name], env_name)
    for key, value in (overrides or {}).items():
        if key not in SETTINGS and key != UPSTREAM_KEY:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            set_value(key, value, "--" + key.replace("_", "-"))

    values: dict[str, Any] = {}
    for key, setting in SETTINGS.items():
        try:
            values[key] = setting.parse(raw[key])
        except ValueError as exc:
            raise ConfigError(f"{key} (from {sources[key]}): {exc}") from None
    _check_tls(values, sources)
    values["upstreams"] = _upstreams(upstream_layers, values["builtin_upstreams"], environ)
    _check_auth(values, sources)
    return LoadedConfig(config=Config(**values), sources=sources, file=file)


def _check_tls(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """`tls_cert` and `tls_key` come together; `tls_listen` needs them and its own address.
    Whether the files make a pair that can be served is the server's check."""
    cert, key = values["tls_cert"], values["tls_key"]
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if cert is not None else ("tls_key", "tls_cert")
        raise ConfigError(
            f"{given} (from {sources[given]}): needs {missing} as well "
            "(the certificate chain and its private key)"
        )
    tls_listen = values["tls_listen"]
    if cert is None:
        if tls_listen is not None:
            raise ConfigError(
                f"tls_listen (from {sources['tls_listen']}): needs tls_cert and tls_key"
            )
        return
    if tls_listen == values["listen"]:
        raise ConfigError(
            f"tls_listen (from {sources['tls_listen']}): {tls_listen} is `listen` as well; "
            "leave tls_listen empty to serve HTTPS on `listen`"
        )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in SETTINGS and key != UPSTREAM_KEY:
            known = ", ".join((*SETTINGS, UPSTREAM_KEY))
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    return data


def render(loaded: LoadedConfig) -> str:
    """The effective config as TOML, secrets masked, each line saying where it came from."""
    lines = []
    for key, setting in SETTINGS.items():
        value = getattr(loaded.config, key)
        text = '"********"' if setting.secret and value else _toml_value(value)
        lines.append(f"{key} = {text}  # {loaded.sources[key]}")
    for upstream in loaded.config.upstreams:
        lines += ["", f"[[upstream]]  # {upstream.source}"]
        lines.append(f"host = {_toml_str(upstream.host)}")
        lines.append(f"url = {_toml_str(upstream.url)}")
        if upstream.username is not None:
            lines.append(f"username = {_toml_str(upstream.username)}")
            lines.append(f'password = "********"  # from {upstream.password_source}')
        lines.append(f"library_prefix = {_toml_value(upstream.library_prefix)}")
        if upstream.tag_ttl is not None:
            lines.append(f"tag_ttl = {upstream.tag_ttl!r}")
        if upstream.tag_rules:
            lines.append(f"tag_rules = {_toml_value(upstream.tag_rules)}")
        if upstream.ca_file is not None:
            lines.append(f"ca_file = {_toml_str(str(upstream.ca_file))}")
        if upstream.insecure:
            lines.append("insecure = true")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        items = (_toml_str(item) if isinstance(item, str) else str(item) for item in value)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return _toml_str(str(value))


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
