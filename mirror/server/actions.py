"""The access a registry request needs, derived from its method and route alone, so the
authorisation middleware and the token endpoint agree on it (the scopes clients ask for
follow the same rule: distribution's `app.go`).

`pull` reads; `push` writes (uploads, a manifest `PUT`), and cancelling one's own upload
is part of pushing (distribution demands `delete` for it, which no pusher holds);
`delete` removes manifests, tags and blobs. Each implies the ones before it.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

Action = Literal["pull", "push", "delete"]

READS = frozenset({"GET", "HEAD", "OPTIONS"})
UPLOAD_ROUTES = frozenset({"push", "push.session"})


def required_action(request: web.Request) -> Action:
    """What the request does to the repository it addresses."""
    if request.method in READS:
        return "pull"
    if request.method == "DELETE" and request.match_info.route.name not in UPLOAD_ROUTES:
        return "delete"
    return "push"
