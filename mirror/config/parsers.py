"""Value parsers: each takes a raw value (TOML-typed, or a string from the environment or a
flag) and returns it typed, or raises ValueError saying what it expected. The loader adds
the key and the layer to the message."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# A repository glob with its wildcards filled in: a name, perhaps behind a host[:port].
_GLOB_SAMPLE = re.compile(rf"(?:[a-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_listen(value: Any) -> Listen:
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Listen(host.strip("[]") or "0.0.0.0", port)


def parse_optional_listen(value: Any) -> Listen | None:
    return parse_listen(value) if value != "" else None


def parse_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the URL; use username and password_env")
    return value.rstrip("/")


def parse_optional_str(value: Any) -> str | None:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value or None


def parse_redis_url(value: Any) -> str | None:
    text = parse_optional_str(value)
    if text is not None and urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {text!r}")
    return text


def parse_storage(value: Any) -> str:
    """`file` (the data dir) or `s3://BUCKET/PREFIX` (the prefix may be empty)."""
    text = str(value).strip()
    if text == "file":
        return text
    parts = urlsplit(text)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"expected `file` or s3://BUCKET/PREFIX, got {text!r}")
    return text


def parse_optional_url(value: Any) -> str | None:
    """An http(s) URL, or None when empty."""
    text = parse_optional_str(value)
    if text is not None and (urlsplit(text).scheme not in ("http", "https") or "@" in text):
        raise ValueError(f"expected an http:// or https:// URL without credentials, got {text!r}")
    return text


def parse_optional_bool(value: Any) -> bool | None:
    """true or false, or None (empty or `auto`: decided from other settings)."""
    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return None
    return parse_bool(value)


def parse_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path")
    return Path(value)


def parse_optional_path(value: Any) -> Path | None:
    if not isinstance(value, str):
        raise ValueError("expected a path")
    return Path(value) if value else None


def number_of_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None


def parse_seconds(value: Any) -> float:
    seconds = number_of_seconds(value)
    if not seconds > 0:
        raise ValueError("must be greater than 0")
    return seconds


def parse_non_negative_seconds(value: Any) -> float:
    seconds = number_of_seconds(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_count(value: Any) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return int(str(value).strip())


def parse_positive_count(value: Any) -> int:
    count = parse_count(value)
    if count < 1:
        raise ValueError("expected a whole number >= 1")
    return count


def parse_prefix(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("expected a non-empty string without spaces")
    return value


def json_or(value: Any, what: str) -> Any:
    """`value` as it came from TOML, or parsed as JSON when it came as a string from the
    environment (None for an empty string)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            raise ValueError(f"expected JSON ({what})") from None
    return value


def parse_rules(value: Any, table: str, parse_rule: Callable[[Any, str], T]) -> tuple[T, ...]:
    """A list of tables (TOML `[[table]]`), or the same as JSON from the environment; each
    parsed by `parse_rule(raw, "rule N")`, which names the rule in its errors."""
    value = json_or(value, "a list of rules")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"expected a list of rules ([[{table}]] tables)")
    return tuple(parse_rule(raw, f"rule {index + 1}") for index, raw in enumerate(value))


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp](?:i?b)?|b)?\s*", re.IGNORECASE)


def parse_size(value: Any) -> int:
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


def parse_fraction(value: Any) -> float:
    number = number_of_seconds(value)
    if not 0 < number < 1:
        raise ValueError("expected a fraction between 0 and 1, such as 0.9")
    return number


def parse_image_list(value: Any) -> tuple[str, ...]:
    """Image references (`alpine:3.19`, `ghcr.io/org/app:1`): a list, or from the
    environment a comma-separated string."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def parse_repository_globs(value: Any) -> tuple[str, ...]:
    """Repository globs (`local/*`, `registry.local/team/*`): a list, or from the
    environment a comma-separated string. `*` and `?` aside, each must read as a
    repository name (lower case, `/`-separated components), perhaps behind a host."""
    globs = parse_image_list(value)
    for glob in globs:
        sample = glob.replace("*", "a").replace("?", "a")
        if not _GLOB_SAMPLE.fullmatch(sample):
            raise ValueError(f"{glob!r} is not a repository glob (like `local/*`)")
    return globs


def parse_networks(value: Any) -> tuple[str, ...]:
    """Addresses or CIDR networks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`): a list, or
    from the environment a comma-separated string. Kept in their canonical spelling."""
    networks = []
    for item in parse_image_list(value):
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def parse_names(value: Any, what: str) -> tuple[str, ...]:
    """A list of non-empty strings (a single string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what}: expected a list of non-empty strings")
    return tuple(value)


def parse_log_format(value: Any) -> str:
    text = str(value).lower()
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {value!r}")
    return text


def parse_log_level(value: Any) -> str:
    text = str(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {value!r}")
    return text
