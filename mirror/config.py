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
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})
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
class Config:
    """The effective configuration of one mirror process."""

    listen: Listen
    upstream: str
    upstream_username: str | None
    upstream_password: str | None
    library_prefix: bool
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

    def freshness(self, repo: str, tag: str) -> Freshness:
        """How long a tag stays fresh: the first matching rule, else `tag_ttl`."""
        for rule in self.tag_rules:
            if rule.matches(repo, tag):
                return Freshness(
                    ttl=self.tag_ttl if rule.ttl is None else rule.ttl, immutable=rule.immutable
                )
        return Freshness(ttl=self.tag_ttl, immutable=False)


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
        raise ValueError("credentials do not belong in the URL; use upstream_username/password")
    return value.rstrip("/")


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


def _auto_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f'expected true, false or "auto", got {value!r}')


def _non_negative_seconds(value: Any) -> float:
    seconds = _number_of_seconds(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _bool(value: Any) -> bool:
    parsed = _auto_bool(value)
    if parsed is None:
        raise ValueError(f"expected true or false, got {value!r}")
    return parsed


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


_RULE_KEYS = {"match", "tag_regex", "ttl", "immutable"}


def _tag_rules(value: Any) -> tuple[TagRule, ...]:
    """A list of tables (TOML `[[tag_rules]]`), or the same as JSON from the environment."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError("expected a JSON list of rules") from None
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


def _log_level(value: Any) -> str:
    text = str(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {value!r}")
    return text


@dataclass(frozen=True)
class Setting:
    parse: Callable[[Any], Any]
    default: Any
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "listen": Setting(_listen, "0.0.0.0:5000"),
    "upstream": Setting(_url, DOCKER_HUB_URL),
    "upstream_username": Setting(_optional_str, ""),
    "upstream_password": Setting(_optional_str, "", secret=True),
    "library_prefix": Setting(_auto_bool, "auto"),
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
}
assert set(SETTINGS) == {f.name for f in fields(Config)}


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

    file = config_file
    if file is None and DEFAULT_CONFIG_FILE.is_file():
        file = DEFAULT_CONFIG_FILE
    if file is not None:
        for key, value in _read_file(file).items():
            raw[key] = value
            sources[key] = str(file)

    for key in SETTINGS:
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            raw[key] = environ[env_name]
            sources[key] = env_name
    for key, value in (overrides or {}).items():
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            raw[key] = value
            sources[key] = "--" + key.replace("_", "-")

    values: dict[str, Any] = {}
    for key, setting in SETTINGS.items():
        try:
            values[key] = setting.parse(raw[key])
        except ValueError as exc:
            raise ConfigError(f"{key} (from {sources[key]}): {exc}") from None
    config = Config(**values) if values["library_prefix"] is not None else _auto_prefix(values)
    return LoadedConfig(config=config, sources=sources, file=file)


def _auto_prefix(values: dict[str, Any]) -> Config:
    """`library_prefix = "auto"` means: on exactly when the upstream is Docker Hub."""
    host = urlsplit(values["upstream"]).hostname or ""
    return Config(**{**values, "library_prefix": host in DOCKER_HUB_HOSTS})


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
        if key not in SETTINGS:
            known = ", ".join(SETTINGS)
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    return data


def render(loaded: LoadedConfig) -> str:
    """The effective config as TOML, secrets masked, each line saying where it came from."""
    lines = []
    for key, setting in SETTINGS.items():
        value = getattr(loaded.config, key)
        if setting.secret and value:
            text = '"********"'
        elif value is None:
            text = '""'
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, tuple):
            text = "[" + ", ".join(str(item) for item in value) + "]"
        else:
            text = _toml_str(str(value))
        lines.append(f"{key} = {text}  # {loaded.sources[key]}")
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
