"""What the clients asked the mirror, read back from its access log."""

from __future__ import annotations

import re
from dataclasses import dataclass

# One access-log line of the mirror (the text format of `mirror.server.middleware`), e.g.
# `mirror.access: 127.0.0.1 "GET /v2/library/alpine/manifests/3.19?ns=docker.io" 200 9B 0.4ms
# cache=hit upstream=docker.io id=46f2535b435e4bc3`
_ACCESS_LINE = re.compile(
    r'mirror\.access: \S+ "(?P<method>[A-Z]+) (?P<target>\S+)" (?P<status>\d{3}) '
)


@dataclass(frozen=True)
class MirrorRequest:
    """One request in the mirror's access log."""

    method: str
    path: str
    query: str  # the raw query string, "" if none
    status: int


def mirror_requests(log: str, path_contains: str = "") -> list[MirrorRequest]:
    """The requests in the mirror's log text (`MirrorServer.stderr`), oldest first; only those
    whose path contains `path_contains`, if given."""
    found = []
    for match in _ACCESS_LINE.finditer(log):
        path, _, query = match["target"].partition("?")
        if path_contains in path:
            found.append(MirrorRequest(match["method"], path, query, int(match["status"])))
    return found
