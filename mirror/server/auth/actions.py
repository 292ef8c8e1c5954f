"""The action a registry request needs, from its method and the shape of its path, and the
scope a token must carry for it.

Keyed on the path rather than on the routes that serve it, so a route added later (or one
that refuses the request) is guarded the same way:

- anything under `/v2/<name>/blobs/uploads` is `push`: starting, sending, finishing,
  checking and cancelling an upload all belong to a push, and an upload session is no one
  else's business;
- otherwise `GET` and `HEAD` are `pull`, `DELETE` (a manifest, a tag, a blob) is `delete`,
  and every other method (a manifest `PUT`, say) is `push`.

A blob mount (`POST .../blobs/uploads/?mount=<digest>&from=<repository>`) needs `pull` on
its source as well; the push routes ask `mirror.server.auth.may_pull` for it and fall back
to a plain upload when the answer is no, as registries do.
"""

from __future__ import annotations

from aiohttp import web

from mirror.config import Action

READ_METHODS = frozenset({"GET", "HEAD"})
UPLOADS = "/blobs/uploads"


def needed_action(request: web.Request, name: str) -> Action:
    """The action `request`, addressing the repository `name` (its route's `{name}`),
    needs."""
    prefix = f"/v2/{name}"
    rest = request.path[len(prefix) :] if request.path.startswith(prefix) else ""
    if rest == UPLOADS or rest.startswith(f"{UPLOADS}/"):
        return "push"
    if request.method in READ_METHODS:
        return "pull"
    if request.method == "DELETE":
        return "delete"
    return "push"


def scope_actions(action: Action) -> str:
    """The actions a challenge asks a token for, for a request needing `action`: a push
    asks for pull too, since every client's push reads as well (distribution does the
    same)."""
    return "pull,push" if action == "push" else action
