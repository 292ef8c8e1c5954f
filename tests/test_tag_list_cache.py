"""Tag lists are kept through aiohttp-client-cache beside the metadata (Redis or SQLite):
fresh for `tags_list_ttl`, asked again after, served stale when the upstream fails, never
kept from a refusal or an error, kept per credential, shared by replicas on one Redis, and
reached only from the tag-list path."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mirror import errors
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.failures import UpstreamError
from mirror.upstream.lists import ListAnswer, ListCache
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Fault, Manifest
from tests.conftest import StartMirror
from tests.kept_lists import kept_lists

TAGS = "/v2/library/alpine/tags/list"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def asked(upstream: FakeRegistry) -> int:
    return upstream.count(kind="tags", method="GET")


async def test_a_list_is_answered_from_the_cache_within_the_ttl_and_asked_for_after(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, tags_list_ttl=30, **meta_settings)
    assert (await (await mirror.get(TAGS)).json())["tags"] == ["3.19"]
    upstream.reset_counts()
    clock.advance(29)
    assert (await (await mirror.get(TAGS)).json())["tags"] == ["3.19"]
    assert upstream.requests == []

    upstream.tag("library/alpine", "3.20", alpine)
    clock.advance(2)
    resp = await mirror.get(TAGS)
    assert (await resp.json())["tags"] == ["3.19", "3.20"]
    assert "Warning" not in resp.headers
    assert asked(upstream) >= 1


async def test_an_unreachable_upstream_gets_the_kept_list_served_stale(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    clock: FakeClock,
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, tags_list_ttl=30, **meta_settings)
    await (await mirror.get(TAGS)).read()
    await upstream.close()
    clock.advance(24 * 3600)
    stale = await mirror.get(TAGS)
    assert stale.status == 200
    assert (await stale.json())["tags"] == ["3.19"]
    assert "unreachable" in stale.headers["Warning"]


async def test_errors_and_refusals_are_never_kept_and_a_refusal_is_not_served_stale(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    data_dir: Path,
    clock: FakeClock,
) -> None:
    mirror = await start_mirror(upstream.url, clock=clock, tags_list_ttl=30, **meta_settings)
    for status in (503, 401):
        upstream.add_fault(Fault("status", status=status, path_contains="/tags/", times=None))
        failed = await mirror.get(TAGS)
        assert failed.status >= 400
        assert await kept_lists(meta_settings, data_dir) == {}
        upstream.clear_faults()

    assert (await mirror.get(TAGS)).status == 200
    clock.advance(31)
    upstream.add_fault(Fault("status", status=401, path_contains="/tags/", times=None))
    refused = await mirror.get(TAGS)
    assert refused.status == 403
    assert (await refused.json())["errors"][0]["code"] == "DENIED"


async def test_replicas_on_one_redis_share_the_kept_list(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    redis_url: str,
    clock: FakeClock,
) -> None:
    settings = {"redis_url": redis_url, "redis_key_prefix": "shared-lists:", "tags_list_ttl": 30}
    first = await start_mirror(upstream.url, clock=clock, **settings)
    second = await start_mirror(upstream.url, clock=clock, **settings)
    await (await first.get(TAGS)).read()
    upstream.reset_counts()
    assert (await (await second.get(TAGS)).json())["tags"] == ["3.19"]
    assert upstream.requests == []


async def test_only_tag_lists_are_kept_as_json_without_request_headers(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    alpine: Manifest,
    meta_settings: dict[str, Any],
    data_dir: Path,
) -> None:
    """Manifests and blobs are the mirror's own, verified: nothing of theirs is kept here."""
    mirror = await start_mirror(upstream.url, **meta_settings)
    assert (await mirror.get("/v2/library/alpine/manifests/3.19")).status == 200
    for blob in alpine.blobs:
        await (await mirror.get(f"/v2/library/alpine/blobs/{blob.digest}")).read()
    assert await kept_lists(meta_settings, data_dir) == {}

    await (await mirror.get(TAGS)).read()
    [entry] = (await kept_lists(meta_settings, data_dir)).values()
    kept = json.loads(entry)  # never pickle
    assert json.loads(base64.b64decode(kept["body"]))["tags"] == ["3.19"]
    assert {name for name, _ in kept["headers"]} <= {"Content-Type", "Link"}
    assert b"Bearer" not in entry and b"Authorization" not in entry


async def test_a_list_kept_for_one_credential_is_never_served_to_another(
    tmp_path: Path, clock: FakeClock
) -> None:
    lists = ListCache.open(
        redis_url=None, key_prefix="", data_dir=tmp_path, ttl=60, offline=False, clock=clock
    )
    url, query = "https://registry.example/v2/org/app/tags/list", [("n", "2")]
    alice = ClientCredential.of("alice", "alice-secret")
    bob = ClientCredential.of("bob", "bob-secret")
    keys = {lists.key("registry.example", url, query, who) for who in (alice, bob, None)}
    assert len(keys) == 3
    assert not any("secret" in key or "alice" in key for key in keys)

    async def alices_list() -> ListAnswer:
        return ListAnswer(b'{"tags": ["private"]}', None)

    async def upstream_down() -> ListAnswer:
        raise UpstreamError(errors.UPSTREAM_UNAVAILABLE, "upstream down")

    try:
        alice_key = lists.key("registry.example", url, query, alice)
        await lists.get(alice_key, url, alices_list)
        bob_key = lists.key("registry.example", url, query, bob)
        with pytest.raises(UpstreamError):  # nothing kept for bob: alice's list is not his
            await lists.get(bob_key, url, upstream_down)
        clock.advance(61)
        stale = await lists.get(alice_key, url, upstream_down)
        assert (stale.body, stale.stale) == (b'{"tags": ["private"]}', "upstream down")
    finally:
        await lists.close()
