"""Who may do what: `auth_rules` and `auth_groups`, asked at every use."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from mirror.config import ACTIONS, Action, AuthRule


class Policy:
    """`auth_rules` and `auth_groups`: the first rule matching decides; none denies; no
    rules at all let every authenticated user do everything (pull, push and delete, as a
    registry with only an htpasswd file does)."""

    def __init__(self, rules: tuple[AuthRule, ...], groups: Mapping[str, tuple[str, ...]]) -> None:
        self._rules = rules
        self._groups_of: dict[str, set[str]] = {}
        for group, members in groups.items():
            for member in members:
                self._groups_of.setdefault(member, set()).add(group)

    def actions(self, user: str, host: str, repository: str) -> tuple[Action, ...]:
        """What `user` may do in `host`'s `repository`, in the order of `ACTIONS`."""
        if not self._rules:
            return ACTIONS
        groups = self._groups_of.get(user, set())
        for rule in self._rules:
            if _matches(rule, user, groups, host, repository):
                return rule.actions
        return ()

    def allows(self, user: str, action: Action, host: str, repository: str) -> bool:
        return action in self.actions(user, host, repository)


def _matches(rule: AuthRule, user: str, groups: set[str], host: str, repository: str) -> bool:
    who = user in rule.users or "*" in rule.users or not groups.isdisjoint(rule.groups)
    return (
        who
        and ("*" in rule.upstreams or host in rule.upstreams)
        and any(fnmatch.fnmatchcase(repository, glob) for glob in rule.repositories)
    )
