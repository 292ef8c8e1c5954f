"""Client authentication settings (enforced by mirror.server.auth): the htpasswd file's
path, groups, access rules, tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from mirror.config.parsers import (
    json_or,
    number_of_seconds,
    parse_names,
    parse_optional_str,
    parse_rules,
    parse_url,
)
from mirror.config.toml import toml_str, toml_value
from mirror.config.upstreams import parse_host

Action = Literal["pull", "push", "delete"]
# The actions of the Registry API in order: each access level implies the ones before it.
ACTIONS: tuple[Action, ...] = ("pull", "push", "delete")
AUTH_ACCESS = (*ACTIONS, "deny")
# Docker uses a token for at least this long, whatever `expires_in` says.
MIN_TOKEN_TTL = 60.0
MIN_TOKEN_SECRET = 16


@dataclass(frozen=True)
class AuthRule:
    """Who may do what: the first rule matching the user (by name, by group, or `*` for
    anyone logged in), the upstream host and the repository glob decides, with its
    `access` (`pull`, `push` or `delete`, each implying the ones before; or `deny`)."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ("*",)
    repositories: tuple[str, ...] = ("*",)
    access: str = "pull"  # one of AUTH_ACCESS

    @property
    def actions(self) -> tuple[Action, ...]:
        """The actions this rule allows: its access and every one before it."""
        if self.access not in ACTIONS:
            return ()  # deny
        return ACTIONS[: ACTIONS.index(self.access) + 1]

    def __str__(self) -> str:
        parts = [
            f"{key} = {toml_value(getattr(self, key))}"
            for key in ("users", "groups", "upstreams", "repositories")
            if getattr(self, key) != getattr(AuthRule, key)
        ]
        parts.append(f"access = {toml_str(self.access)}")
        return "{" + ", ".join(parts) + "}"


def parse_htpasswd(value: Any) -> Path | None:
    """An htpasswd file (empty: no client authentication); the server checks its entries."""
    if not isinstance(value, str):
        raise ValueError("expected the path of an htpasswd file")
    return Path(value) if value else None


def parse_auth_groups(value: Any) -> dict[str, tuple[str, ...]]:
    """group -> users: a TOML table, or the same as a JSON object from the environment."""
    value = json_or(value, "an object of group -> list of users")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a table of group = [users]")
    groups = {}
    for name, members in value.items():
        if not name or name == "*":
            raise ValueError(f"invalid group name {name!r}")
        groups[name] = parse_names(members, f"group {name!r}")
    return groups


_AUTH_RULE_KEYS = {"users", "groups", "upstreams", "repositories", "access"}


def parse_auth_rules(value: Any) -> tuple[AuthRule, ...]:
    return parse_rules(value, "auth_rules", _auth_rule)


def _auth_rule(raw: Any, where: str) -> AuthRule:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table")
    if unknown := set(raw) - _AUTH_RULE_KEYS:
        known = ", ".join(sorted(_AUTH_RULE_KEYS))
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known keys: {known})")
    if "users" not in raw and "groups" not in raw:
        raise ValueError(f'{where}: needs `users` (["*"]: anyone logged in) or `groups`')
    try:
        upstreams = parse_names(raw.get("upstreams", ["*"]), "upstreams")
        upstreams = tuple(h if h == "*" else parse_host(h) for h in upstreams)
        rule = AuthRule(
            users=parse_names(raw.get("users", []), "users") if "users" in raw else (),
            groups=parse_names(raw["groups"], "groups") if "groups" in raw else (),
            upstreams=upstreams,
            repositories=parse_names(raw.get("repositories", ["*"]), "repositories"),
            access=raw.get("access", "pull"),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if rule.access not in AUTH_ACCESS:
        allowed = ", ".join(f'"{access}"' for access in AUTH_ACCESS)
        raise ValueError(f"{where}: access must be one of {allowed}, got {rule.access!r}")
    return rule


def parse_token_ttl(value: Any) -> float:
    seconds = number_of_seconds(value)
    if seconds < MIN_TOKEN_TTL:
        raise ValueError(f"must be at least {MIN_TOKEN_TTL:g} seconds (Docker assumes that)")
    return seconds


def parse_token_secret(value: Any) -> str | None:
    secret = parse_optional_str(value)
    if secret is not None and len(secret) < MIN_TOKEN_SECRET:
        raise ValueError(f"must be at least {MIN_TOKEN_SECRET} characters")
    return secret


def parse_auth_realm(value: Any) -> str | None:
    if value == "":
        return None
    url = parse_url(value)
    if urlsplit(url).query or urlsplit(url).fragment:
        raise ValueError("expected a URL without query or fragment")
    return url
