"""How long a cached tag stays fresh: tag rules (`[[tag_rules]]`, global or per upstream)
and the first-match decision over them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mirror.config.parsers import parse_bool, parse_non_negative_seconds, parse_rules
from mirror.config.toml import toml_str


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
            parts.append(f"match = {toml_str(self.match)}")
        if self.tag_regex is not None:
            parts.append(f"tag_regex = {toml_str(self.tag_regex.pattern)}")
        if self.ttl is not None:
            parts.append(f"ttl = {self.ttl!r}")
        if self.immutable:
            parts.append("immutable = true")
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class Freshness:
    ttl: float
    immutable: bool


def decide(rules: Iterable[TagRule], ttl: float, repo: str, tag: str) -> Freshness:
    """The first rule matching `repo:tag` decides (its ttl, else `ttl`); no match: `ttl`."""
    for rule in rules:
        if rule.matches(repo, tag):
            return Freshness(ttl=ttl if rule.ttl is None else rule.ttl, immutable=rule.immutable)
    return Freshness(ttl=ttl, immutable=False)


_RULE_KEYS = {"match", "tag_regex", "ttl", "immutable"}


def parse_tag_rules(value: Any) -> tuple[TagRule, ...]:
    return parse_rules(value, "tag_rules", _tag_rule)


def _tag_rule(raw: Any, where: str) -> TagRule:
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
        ttl = None if "ttl" not in raw else parse_non_negative_seconds(raw["ttl"])
        immutable = parse_bool(raw.get("immutable", False))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return TagRule(match=match, tag_regex=regex, ttl=ttl, immutable=immutable)
