"""What the client-auth tests say to the mirror: users and their passwords, credentials in
headers, a pull with them, a token from the realm, and how to read the answers."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import bcrypt

from mirror.server import auth
from mirror.server.auth import CLIENT_AUTH, ClientAuth
from testkit.fakeupstream import Manifest
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, sha256

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}


def hash_password(password: str, prefix: bytes = b"$2b$") -> str:
    """A bcrypt hash at the lowest cost (fast tests); `$2y$` is what `htpasswd -B` writes."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return (prefix + hashed[4:]).decode()


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{user}:{hash_password(pw)}\n" for user, pw in users.items()))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


async def error_of(resp: Any) -> tuple[int, str, str]:
    """(status, code, message) of a spec error answer."""
    body = await resp.json()
    (entry,) = body["errors"]
    return resp.status, entry["code"], entry["message"]


async def pull(
    mirror: Client, name: str, tag: str, headers: dict[str, str], query: str = ""
) -> Manifest | None:
    """HEAD the tag, GET the manifest by digest and every blob, all with `headers`."""
    accept = {"Accept": ALL_MANIFESTS, **headers}
    head = await mirror.head(f"/v2/{name}/manifests/{tag}{query}", headers=accept)
    assert head.status == 200, head.status
    digest = head.headers["Docker-Content-Digest"]
    resp = await mirror.get(f"/v2/{name}/manifests/{digest}{query}", headers=accept)
    assert resp.status == 200, await resp.text()
    manifest = json.loads(await resp.read())
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = await mirror.get(f"/v2/{name}/blobs/{descriptor['digest']}{query}", headers=headers)
        assert blob.status == 200, await blob.text()
        assert sha256(await blob.read()) == descriptor["digest"]
    return None


async def get_token(
    mirror: Client, user: str, password: str, scope: str | None = None
) -> dict[str, Any]:
    query = {"service": "mirror"} | ({"scope": scope} if scope else {})
    resp = await mirror.get(auth.TOKEN_PATH, params=query, headers=basic(user, password))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def client_auth(mirror: Client) -> ClientAuth:
    return mirror.app[CLIENT_AUTH]
