"""`/api/status` shows a logged-in user only the repositories the rules let them pull: the
most-pulled list names no repository a user could not pull themselves."""

from __future__ import annotations

from pathlib import Path

from testkit.fakeupstream import FakeRegistry, Manifest, make_image
from tests.client_auth.helpers import PASSWORDS, basic
from tests.clients import ALL_MANIFESTS
from tests.conftest import Client, StartMirror


async def top_repositories(mirror: Client, user: str) -> list[str]:
    resp = await mirror.get("/api/status", headers=basic(user, PASSWORDS[user]))
    assert resp.status == 200
    return [row["repository"] for row in (await resp.json())["top_repositories"]]


async def test_the_top_list_names_only_what_the_user_may_pull(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, alpine: Manifest
) -> None:
    upstream.push_image("team/secret", "1", make_image(seed=11))
    mirror = await start_mirror(
        upstream.url,
        htpasswd=str(users_file),
        auth_rules=[
            {"users": ["alice"]},
            {"users": ["*"], "upstreams": ["docker.io"], "repositories": ["library/*"]},
        ],
    )
    alice = {"Accept": ALL_MANIFESTS, **basic("alice", PASSWORDS["alice"])}
    for path in ("/v2/library/alpine/manifests/3.19", "/v2/team/secret/manifests/1"):
        assert (await mirror.get(path, headers=alice)).status == 200

    assert sorted(await top_repositories(mirror, "alice")) == [
        "docker.io/library/alpine",
        "docker.io/team/secret",
    ]
    assert await top_repositories(mirror, "bob") == ["docker.io/library/alpine"]
