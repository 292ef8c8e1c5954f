"""A mirror hosting `local/*` behind an htpasswd file, and the users the push tests log in as:
`dev` may push to the hosted repositories and pull everything, `reader` may only pull
(anonymous clients never push). Plus a look at a hosted manifest over the Registry API with
a user's Basic credentials, as a client without a CLI for it (a delete, say) would send."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from testkit.mirrorserver import HttpResponse, MirrorServer, http_request
from tests.client_auth.helpers import write_htpasswd
from tests.clients import ALL_MANIFESTS
from tests.integration.conftest import StartMirror

HOSTED = "local/*"
PASSWORDS = {"dev": "dev-pw-integration", "reader": "reader-pw-integration"}
RULES = [
    {"users": ["dev"], "repositories": [HOSTED], "access": "push"},
    {"users": ["*"], "access": "pull"},
]


def start_hosting_mirror(start_mirror: StartMirror, tmp_path: Path) -> MirrorServer:
    """A mirror in front of the upstream that hosts `local/*`, with `dev` and `reader`."""
    users = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return start_mirror(
        ["--hosted", HOSTED, "--htpasswd", str(users)],
        env={"MIRROR_AUTH_RULES": json.dumps(RULES)},
    )


def as_user(user: str) -> dict[str, str]:
    """The Basic `Authorization` header of one of the users."""
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def registry_call(mirror: MirrorServer, method: str, path: str, user: str) -> HttpResponse:
    """One Registry API request as `user` (`path` below `/v2/`); fails if no answer came."""
    headers = as_user(user) | {"Accept": ALL_MANIFESTS}
    response = http_request(f"{mirror.url}/v2/{path}", method, headers)
    assert response is not None, f"{method} /v2/{path}: no answer\n{mirror.stderr}"
    return response


def error_codes(response: HttpResponse) -> list[str]:
    """The `code`s of a spec error body."""
    return [entry["code"] for entry in json.loads(response.body)["errors"]]
