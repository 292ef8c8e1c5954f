"""The metadata store's contract: one suite per role (health, tag records, locks, leases,
replicas, rate limits,
access records, links and the catalog read from them, cached responses), each run against
every implementation: SQLite, Redis, and the resilient wrapper over each; and the store loads
no metrics library.

What only one backend has is in `test_meta_backends`; the resilient wrapper's own behaviour
(riding out a Redis that goes away) in `test_meta_resilient`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from mirror.meta.store import (
    Access,
    AccessRecords,
    Health,
    Leases,
    Link,
    Links,
    Locks,
    MetaStore,
    RateLimit,
    RateLimits,
    Replica,
    Replicas,
    TagKey,
    TagRecords,
)
from mirror.reference import Digest
from testkit.clock import FakeClock
from testkit.waiting import wait_until
from tests.meta_fixtures import UNTIL_TIMEOUT
from tests.meta_samples import DIGEST, DOCKER, HUB, KEY, LOCAL, RECORD, SHORT_TTL

# --- health ---------------------------------------------------------------------------------


async def test_ping_answers(meta_store: Health) -> None:
    await meta_store.ping()


async def test_a_store_that_answers_is_available_with_no_errors(meta_store: MetaStore) -> None:
    await meta_store.put_tag(KEY, RECORD)
    assert await meta_store.get_tag(KEY) == RECORD
    assert meta_store.available and meta_store.errors == 0


# --- tag records ----------------------------------------------------------------------------


async def test_tag_round_trip_replace_and_delete(meta_store: TagRecords) -> None:
    assert await meta_store.get_tag(KEY) is None
    await meta_store.put_tag(KEY, RECORD)
    assert await meta_store.get_tag(KEY) == RECORD

    newer = replace(RECORD, digest=Digest.parse("sha256:" + "c" * 64), confirmed_at=2e9)
    await meta_store.put_tag(KEY, newer)
    assert await meta_store.get_tag(KEY) == newer

    await meta_store.delete_tag(KEY)
    assert await meta_store.get_tag(KEY) is None
    await meta_store.delete_tag(KEY)  # deleting what is gone is fine


async def test_tags_differing_only_by_accept_class_or_upstream_are_distinct(
    meta_store: TagRecords,
) -> None:
    docker = replace(KEY, accept=DOCKER)
    local = replace(KEY, upstream=LOCAL)
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(docker, replace(RECORD, size=1))
    assert await meta_store.get_tag(local) is None
    await meta_store.put_tag(local, replace(RECORD, size=2))

    assert await meta_store.get_tag(KEY) == RECORD
    assert await meta_store.get_tag(docker) == replace(RECORD, size=1)
    assert await meta_store.get_tag(local) == replace(RECORD, size=2)
    await meta_store.delete_tag(docker)
    assert await meta_store.get_tag(KEY) == RECORD


async def test_every_tag_record_can_be_listed(meta_store: TagRecords) -> None:
    other = TagKey("registry.example.com:5000", "team/app", "v1", "application/x:y")
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(other, RECORD)
    assert sorted(await meta_store.list_tags(), key=lambda item: item[0].upstream) == [
        (KEY, RECORD),
        (other, RECORD),
    ]
    await meta_store.delete_tag(other)
    assert await meta_store.list_tags() == [(KEY, RECORD)]


async def test_one_tags_records_under_every_accept_class(meta_store: TagRecords) -> None:
    ipv6 = "[::1]:5000"  # glob characters in a Redis key must not match other tags
    other_class = replace(KEY, accept="application/vnd.docker.distribution.manifest.v2+json")
    newer = replace(RECORD, confirmed_at=2e9)
    await meta_store.put_tag(KEY, RECORD)
    await meta_store.put_tag(other_class, newer)
    await meta_store.put_tag(replace(KEY, tag="3.20"), RECORD)
    await meta_store.put_tag(replace(KEY, upstream=ipv6), RECORD)
    await meta_store.put_tag(replace(KEY, upstream="[::2]:5000"), newer)
    found = await meta_store.tag_records(KEY.upstream, KEY.repo, KEY.tag)
    assert sorted(found, key=lambda r: r.confirmed_at) == [RECORD, newer]
    assert await meta_store.tag_records(ipv6, KEY.repo, KEY.tag) == [RECORD]
    assert await meta_store.tag_records(KEY.upstream, KEY.repo, "latest") == []


async def test_tag_records_come_back_with_a_parsed_digest(meta_store: TagRecords) -> None:
    sha512 = replace(RECORD, digest=Digest.parse("sha512:" + "e" * 128))
    await meta_store.put_tag(KEY, sha512)
    record = await meta_store.get_tag(KEY)
    assert record is not None and record.digest == Digest("sha512", "e" * 128)


# --- locks ----------------------------------------------------------------------------------


async def test_a_held_lock_excludes_others_until_unlocked(meta_store: Locks) -> None:
    token = await meta_store.try_lock("revalidate:alpine", ttl=30)
    assert token is not None
    assert await meta_store.try_lock("revalidate:alpine", ttl=30) is None
    other = await meta_store.try_lock("revalidate:busybox", ttl=30)
    assert other is not None and other != token

    await meta_store.unlock("revalidate:alpine", token)
    again = await meta_store.try_lock("revalidate:alpine", ttl=30)
    assert again is not None and again != token


async def test_unlock_with_a_wrong_token_does_nothing(meta_store: Locks) -> None:
    token = await meta_store.try_lock("lock", ttl=30)
    assert token is not None
    await meta_store.unlock("lock", "not-the-token")
    assert await meta_store.try_lock("lock", ttl=30) is None
    await meta_store.unlock("never-taken", "whatever")


async def test_a_lock_expires_after_its_ttl(meta_store: Locks, meta_clock: FakeClock) -> None:
    stale = await meta_store.try_lock("lock", ttl=SHORT_TTL)
    assert stale is not None
    meta_clock.advance(2 * SHORT_TTL)

    async def taken_over() -> bool:
        return await meta_store.try_lock("lock", ttl=30) is not None

    await wait_until(taken_over, within=UNTIL_TIMEOUT, message="the lock was not taken over")
    # The first holder's late unlock must not release the second holder's lock.
    await meta_store.unlock("lock", stale)
    assert await meta_store.try_lock("lock", ttl=30) is None


# --- leases ---------------------------------------------------------------------------------

LEASE = "blob:" + DIGEST
PEER = "http://10.0.0.2:5000"


async def test_a_held_lease_names_its_holder_and_excludes_others(meta_store: Leases) -> None:
    assert await meta_store.lease_holder(LEASE) is None
    lease = await meta_store.acquire_lease(LEASE, "replica-a", PEER, ttl=30)
    assert lease is not None and lease.token
    assert await meta_store.acquire_lease(LEASE, "replica-b", None, ttl=30) is None

    holder = await meta_store.lease_holder(LEASE)
    assert holder is not None
    assert (holder.holder, holder.url, holder.epoch) == ("replica-a", PEER, lease.epoch)
    assert holder.token == "", "the token proves the holding: nobody else reads it"


async def test_every_acquisition_of_a_lease_has_a_higher_epoch(meta_store: Leases) -> None:
    first = await meta_store.acquire_lease(LEASE, "replica-a", PEER, ttl=30)
    assert first is not None
    await meta_store.release_lease(LEASE, first)
    second = await meta_store.acquire_lease(LEASE, "replica-b", None, ttl=30)
    assert second is not None and second.epoch > first.epoch
    holder = await meta_store.lease_holder(LEASE)
    assert holder is not None and (holder.holder, holder.url) == ("replica-b", None)


async def test_only_the_holder_renews_or_releases_a_lease(meta_store: Leases) -> None:
    lease = await meta_store.acquire_lease(LEASE, "replica-a", PEER, ttl=30)
    assert lease is not None
    impostor = replace(lease, token="not-the-token")
    assert not await meta_store.renew_lease(LEASE, impostor, ttl=30)
    await meta_store.release_lease(LEASE, impostor)
    assert await meta_store.lease_holder(LEASE) is not None

    assert await meta_store.renew_lease(LEASE, lease, ttl=30)
    await meta_store.release_lease(LEASE, lease)
    assert await meta_store.lease_holder(LEASE) is None


async def test_an_expired_lease_is_taken_over_and_its_old_holder_fenced(
    meta_store: Leases, meta_clock: FakeClock
) -> None:
    stale = await meta_store.acquire_lease(LEASE, "replica-a", PEER, ttl=SHORT_TTL)
    assert stale is not None
    meta_clock.advance(2 * SHORT_TTL)

    async def expired() -> bool:
        return await meta_store.lease_holder(LEASE) is None

    await wait_until(expired, within=UNTIL_TIMEOUT, message="the lease did not expire")
    successor = await meta_store.acquire_lease(LEASE, "replica-b", None, ttl=30)
    assert successor is not None and successor.epoch > stale.epoch
    # The stale holder can neither extend nor release its successor's lease.
    assert not await meta_store.renew_lease(LEASE, stale, ttl=30)
    await meta_store.release_lease(LEASE, stale)
    holder = await meta_store.lease_holder(LEASE)
    assert holder is not None and holder.epoch == successor.epoch


# --- replicas -------------------------------------------------------------------------------


async def test_replicas_are_live_until_their_heartbeat_runs_out(
    meta_store: Replicas, meta_clock: FakeClock
) -> None:
    assert await meta_store.live_replicas() == []
    await meta_store.heartbeat(Replica("b", None), ttl=SHORT_TTL)
    await meta_store.heartbeat(Replica("a", PEER), ttl=30)
    assert await meta_store.live_replicas() == [Replica("a", PEER), Replica("b", None)]
    meta_clock.advance(2 * SHORT_TTL)

    async def only_a() -> bool:
        return await meta_store.live_replicas() == [Replica("a", PEER)]

    await wait_until(only_a, within=UNTIL_TIMEOUT, message="replica b still counts as live")


# --- rate limits ----------------------------------------------------------------------------


async def test_rate_limits_per_upstream(meta_store: RateLimits) -> None:
    assert await meta_store.get_rate_limit(HUB) is None
    first = RateLimit(limit=100, remaining=99, window=21600, observed_at=1e9)
    await meta_store.put_rate_limit(HUB, first)
    assert await meta_store.get_rate_limit(HUB) == first
    assert await meta_store.get_rate_limit(LOCAL) is None

    later = replace(first, remaining=42, observed_at=1e9 + 60)
    await meta_store.put_rate_limit(HUB, later)
    assert await meta_store.get_rate_limit(HUB) == later


# --- access records -------------------------------------------------------------------------


async def test_access_batches_merge_keeping_the_latest_time_and_all_repos(
    meta_store: AccessRecords,
) -> None:
    other = "sha256:" + "d" * 64
    assert await meta_store.get_access(DIGEST) is None
    await meta_store.record_access({DIGEST: Access(100.0, {"library/alpine"}), other: Access(5.0)})
    await meta_store.record_access({DIGEST: Access(300.0, {"team/base", "library/alpine"})})
    await meta_store.record_access({DIGEST: Access(200.0, {"library/nginx"})})  # older: kept
    await meta_store.record_access({})

    assert await meta_store.get_access(DIGEST) == Access(
        300.0, {"library/alpine", "team/base", "library/nginx"}
    )
    assert await meta_store.get_access(other) == Access(5.0, set())


async def test_access_records_can_be_listed_and_forgotten(meta_store: AccessRecords) -> None:
    await meta_store.record_access({"sha256:a": Access(10.0, {"x/y"}), "sha256:b": Access(20.0)})
    assert await meta_store.list_accesses() == {"sha256:a": 10.0, "sha256:b": 20.0}
    await meta_store.delete_accesses(["sha256:a"])
    await meta_store.delete_accesses([])
    assert await meta_store.list_accesses() == {"sha256:b": 20.0}
    assert await meta_store.get_access("sha256:a") is None


async def test_pull_counts_add_up_and_rank_the_most_pulled_first(
    meta_store: AccessRecords,
) -> None:
    assert await meta_store.top_repositories(10) == []
    await meta_store.record_pulls({"docker.io/library/alpine": 3, "ghcr.io/org/app": 1})
    await meta_store.record_pulls({"ghcr.io/org/app": 4, "quay.io/a/b": 1})
    await meta_store.record_pulls({})
    assert await meta_store.top_repositories(10) == [
        ("ghcr.io/org/app", 5),
        ("docker.io/library/alpine", 3),
        ("quay.io/a/b", 1),
    ]
    assert await meta_store.top_repositories(1) == [("ghcr.io/org/app", 5)]


# --- links and the catalog ------------------------------------------------------------------

OTHER = "sha256:" + "d" * 64


async def test_a_link_is_known_only_for_its_upstream_repository_and_digest(
    meta_store: Links,
) -> None:
    link = Link(HUB, "team/app", DIGEST)
    assert not await meta_store.has_link(link)
    await meta_store.add_links([link, link])
    await meta_store.add_links([])

    assert await meta_store.has_link(link)
    assert not await meta_store.has_link(Link(HUB, "library/alpine", DIGEST))
    assert not await meta_store.has_link(Link(LOCAL, "team/app", DIGEST))
    assert not await meta_store.has_link(Link(HUB, "team/app", OTHER))


async def test_the_repositories_holding_a_digest_are_listed_sorted(meta_store: Links) -> None:
    await meta_store.add_links(
        Link(*held) for held in [(LOCAL, "team/base", DIGEST), (HUB, "b/b", DIGEST)]
    )
    await meta_store.add_links([Link(HUB, "a/a", DIGEST), Link(HUB, "a/a", OTHER)])

    assert await meta_store.links_of(DIGEST) == [
        Link(LOCAL, "team/base", DIGEST),
        Link(HUB, "a/a", DIGEST),
        Link(HUB, "b/b", DIGEST),
    ]
    assert await meta_store.links_of("sha256:" + "e" * 64) == []


async def test_removing_a_digests_links_keeps_the_others(meta_store: Links) -> None:
    await meta_store.add_links(
        [Link(HUB, "a/a", DIGEST), Link(HUB, "a/a", OTHER), Link(HUB, "b/b", DIGEST)]
    )
    await meta_store.remove_links([DIGEST, "sha256:" + "e" * 64])
    await meta_store.remove_links([])

    assert await meta_store.links_of(DIGEST) == []
    assert not await meta_store.has_link(Link(HUB, "b/b", DIGEST))
    assert await meta_store.links_of(OTHER) == [Link(HUB, "a/a", OTHER)]


async def test_removing_a_repository_forgets_only_its_links(meta_store: Links) -> None:
    await meta_store.add_links(
        [Link(HUB, "a/a", DIGEST), Link(HUB, "a/a", OTHER), Link(HUB, "b/b", DIGEST)]
    )
    await meta_store.remove_repository(HUB, "a/a")
    await meta_store.remove_repository(HUB, "not/there")

    assert await meta_store.links_of(DIGEST) == [Link(HUB, "b/b", DIGEST)]
    assert await meta_store.links_of(OTHER) == []
    assert await meta_store.list_repositories(HUB) == ["b/b"]


async def test_the_catalog_is_the_repositories_with_links_sorted_and_per_upstream(
    meta_store: Links,
) -> None:
    assert await meta_store.list_repositories(HUB) == []
    await meta_store.add_links(
        Link(HUB, repo, DIGEST) for repo in ["library/nginx", "library/alpine", "a/b"]
    )
    await meta_store.add_links(
        [Link(HUB, "library/alpine", OTHER), Link(LOCAL, "team/base", OTHER)]
    )

    assert await meta_store.list_repositories(HUB) == ["a/b", "library/alpine", "library/nginx"]
    assert await meta_store.list_repositories(LOCAL) == ["team/base"]


async def test_the_catalog_is_read_a_page_at_a_time(meta_store: Links) -> None:
    await meta_store.add_links(Link(HUB, f"r/{i}", d) for i in range(5) for d in (DIGEST, OTHER))

    assert await meta_store.list_repositories(HUB, n=2) == ["r/0", "r/1"]
    assert await meta_store.list_repositories(HUB, last="r/1", n=2) == ["r/2", "r/3"]
    assert await meta_store.list_repositories(HUB, last="r/3", n=2) == ["r/4"]
    assert await meta_store.list_repositories(HUB, last="r/3") == ["r/4"]
    assert await meta_store.list_repositories(HUB, last="r/4", n=2) == []
    assert await meta_store.list_repositories(HUB, n=0) == []


async def test_a_repository_leaves_the_catalog_with_its_last_link(meta_store: Links) -> None:
    await meta_store.add_links([Link(HUB, "a/a", DIGEST), Link(HUB, "a/a", OTHER)])
    await meta_store.add_links([Link(HUB, "b/b", OTHER)])

    await meta_store.remove_links([DIGEST])
    assert await meta_store.list_repositories(HUB) == ["a/a", "b/b"]
    await meta_store.remove_links([OTHER])
    assert await meta_store.list_repositories(HUB) == []


# --- imports --------------------------------------------------------------------------------


def test_the_store_and_the_layers_above_it_load_no_metrics_library() -> None:
    """prometheus-client is the server's: `mirror serve --workers N` must set up its
    multiprocess mode before anything imports it, and a command needs none of it."""
    modules = [
        "mirror.meta",
        "mirror.cache.manifests",
        "mirror.cache.eviction",
        "mirror.admin",
        "mirror.admin.bundle",
        "mirror.admin.gc",
        "mirror.admin.inventory",
        "mirror.admin.prefetch",
    ]
    code = f"import sys, {', '.join(modules)}; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
