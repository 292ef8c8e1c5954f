"""The metadata store's contract for the hosted repositories (`HostedContent`) and their
upload sessions (`Uploads`), run against every implementation like `test_meta_store`."""

from __future__ import annotations

import time

from mirror.meta.store import HostedContent, HostedManifest, Upload, Uploads
from mirror.reference import Digest
from testkit.clock import FakeClock
from testkit.waiting import wait_until
from tests.meta_fixtures import UNTIL_TIMEOUT
from tests.meta_samples import SHORT_TTL

LAYER = "sha256:" + "1" * 64
CONFIG = "sha256:" + "2" * 64
INDEX = Digest.parse("sha256:" + "3" * 64)
OTHER = "sha256:" + "4" * 64
# Stamps come from the backend's clock (Redis's own): allow it to differ from this one's.
CLOCK_SKEW = 5.0
MANIFEST = HostedManifest(INDEX, "application/vnd.oci.image.index.v1+json", 512)

# --- hosted content -------------------------------------------------------------------------


async def test_hosted_content_is_held_per_repository(meta_store: HostedContent) -> None:
    assert not await meta_store.hosted_holds("local/app", LAYER)
    await meta_store.add_hosted("local/app", [LAYER, CONFIG])
    await meta_store.add_hosted("local/app", [LAYER])  # idempotent
    await meta_store.add_hosted("local/other", [])

    assert await meta_store.hosted_holds("local/app", LAYER)
    assert not await meta_store.hosted_holds("local/other", LAYER)


async def test_hosted_digests_are_those_of_every_hosted_repository(
    meta_store: HostedContent,
) -> None:
    assert await meta_store.hosted_digests() == set()
    await meta_store.add_hosted("local/a", [LAYER])
    await meta_store.add_hosted("local/b", [LAYER, CONFIG])
    assert await meta_store.hosted_digests() == {LAYER, CONFIG}


async def test_a_hosted_tag_is_created_moved_and_listed_in_pages(
    meta_store: HostedContent,
) -> None:
    assert await meta_store.get_hosted_tag("local/app", "1") is None
    for tag in ("b", "a", "c"):
        await meta_store.put_hosted_tag("local/app", tag, MANIFEST)
    moved = HostedManifest(Digest.parse(LAYER), "application/vnd.oci.image.manifest.v1+json", 9)
    await meta_store.put_hosted_tag("local/app", "a", moved)

    assert await meta_store.get_hosted_tag("local/app", "a") == moved
    assert await meta_store.get_hosted_tag("local/app", "b") == MANIFEST
    assert await meta_store.hosted_tags("local/app") == ["a", "b", "c"]
    assert await meta_store.hosted_tags("local/app", last="a", n=1) == ["b"]
    assert await meta_store.hosted_tags("local/app", n=0) == []
    assert await meta_store.hosted_tags("local/other") == []


async def test_the_hosted_repositories_are_those_with_a_tag_listed_in_pages(
    meta_store: HostedContent,
) -> None:
    assert await meta_store.hosted_repositories() == []
    for repo in ("local/b", "local/a", "local/c"):
        await meta_store.put_hosted_tag(repo, "1", MANIFEST)
        await meta_store.put_hosted_tag(repo, "2", MANIFEST)
    await meta_store.add_hosted("local/untagged", [LAYER])

    assert await meta_store.hosted_repositories() == ["local/a", "local/b", "local/c"]
    assert await meta_store.hosted_repositories(last="local/a", n=1) == ["local/b"]
    assert await meta_store.hosted_repositories(last="local/c") == []
    assert await meta_store.hosted_repositories(n=0) == []


async def test_referrers_are_listed_per_repository_and_subject(meta_store: HostedContent) -> None:
    await meta_store.add_referrer("local/app", LAYER, "sha256:" + "b" * 64, '{"b": 1}')
    await meta_store.add_referrer("local/app", LAYER, "sha256:" + "a" * 64, '{"a": 1}')
    await meta_store.add_referrer("local/other", LAYER, "sha256:" + "c" * 64, '{"c": 1}')

    assert await meta_store.referrers("local/app", LAYER) == ['{"a": 1}', '{"b": 1}']
    assert await meta_store.referrers("local/app", CONFIG) == []


async def test_hosted_content_is_stamped_when_added_and_when_touched(
    meta_store: HostedContent,
) -> None:
    before = time.time()
    await meta_store.add_hosted("local/app", [LAYER, CONFIG])
    added = await meta_store.hosted_content("local/app")
    assert set(added) == {LAYER, CONFIG}
    assert all(before - CLOCK_SKEW <= stamp <= time.time() + CLOCK_SKEW for stamp in added.values())

    assert await meta_store.touch_hosted("local/app", [LAYER, OTHER]) == {LAYER}
    touched = await meta_store.hosted_content("local/app")
    assert touched[LAYER] >= added[LAYER]
    assert OTHER not in touched  # touching never adds
    assert await meta_store.touch_hosted("local/app", []) == set()


async def test_all_hosted_repositories_are_those_with_content_or_tags(
    meta_store: HostedContent,
) -> None:
    assert await meta_store.all_hosted_repositories() == []
    await meta_store.add_hosted("local/b", [LAYER])
    await meta_store.put_hosted_tag("local/a", "1", MANIFEST)
    assert await meta_store.all_hosted_repositories() == ["local/a", "local/b"]


async def test_removing_a_manifest_takes_every_tag_naming_it(meta_store: HostedContent) -> None:
    await meta_store.add_hosted("local/app", [str(INDEX), LAYER])
    await meta_store.add_hosted("local/other", [str(INDEX)])
    for tag in ("1", "latest"):
        await meta_store.put_hosted_tag("local/app", tag, MANIFEST)
    elsewhere = HostedManifest(Digest.parse(CONFIG), MANIFEST.media_type, 1)
    await meta_store.put_hosted_tag("local/app", "2", elsewhere)
    await meta_store.put_hosted_tag("local/other", "1", MANIFEST)

    assert await meta_store.remove_hosted("local/app", [str(INDEX), OTHER]) == {str(INDEX)}

    assert not await meta_store.hosted_holds("local/app", str(INDEX))
    assert await meta_store.hosted_holds("local/app", LAYER)
    assert await meta_store.hosted_tagged("local/app") == {"2": elsewhere}
    assert await meta_store.hosted_tags("local/app") == ["2"]
    assert await meta_store.hosted_tagged("local/other") == {"1": MANIFEST}
    assert await meta_store.hosted_digests() == {LAYER, str(INDEX)}  # local/other's
    assert await meta_store.remove_hosted("local/app", []) == set()


async def test_removal_spares_content_added_since_the_given_time(
    meta_store: HostedContent,
) -> None:
    await meta_store.add_hosted("local/app", [LAYER])
    long_ago = time.time() - 3600
    assert await meta_store.remove_hosted("local/app", [LAYER], added_before=long_ago) == set()
    assert await meta_store.hosted_holds("local/app", LAYER)

    later = time.time() + CLOCK_SKEW
    assert await meta_store.remove_hosted("local/app", [LAYER], added_before=later) == {LAYER}
    assert await meta_store.hosted_content("local/app") == {}


async def test_deleting_a_tag_leaves_the_manifest(meta_store: HostedContent) -> None:
    await meta_store.add_hosted("local/app", [str(INDEX)])
    await meta_store.put_hosted_tag("local/app", "1", MANIFEST)
    await meta_store.put_hosted_tag("local/app", "2", MANIFEST)

    assert await meta_store.delete_hosted_tag("local/app", "1")
    assert not await meta_store.delete_hosted_tag("local/app", "1")

    assert await meta_store.hosted_tagged("local/app") == {"2": MANIFEST}
    assert await meta_store.hosted_tags("local/app") == ["2"]
    assert await meta_store.hosted_holds("local/app", str(INDEX))


async def test_a_removed_referrer_is_no_longer_listed(meta_store: HostedContent) -> None:
    await meta_store.add_referrer("local/app", LAYER, "sha256:" + "a" * 64, '{"a": 1}')
    await meta_store.add_referrer("local/app", LAYER, "sha256:" + "b" * 64, '{"b": 1}')

    await meta_store.remove_referrer("local/app", LAYER, "sha256:" + "a" * 64)
    await meta_store.remove_referrer("local/app", CONFIG, "sha256:" + "b" * 64)  # not its subject

    assert await meta_store.referrers("local/app", LAYER) == ['{"b": 1}']


# --- upload sessions ------------------------------------------------------------------------


async def test_an_upload_session_round_trips_and_is_deleted(meta_store: Uploads) -> None:
    assert await meta_store.get_upload("u1") is None
    await meta_store.put_upload(Upload("u1", "local/app", 0), ttl=60)
    await meta_store.put_upload(Upload("u1", "local/app", 1024), ttl=60)
    assert await meta_store.get_upload("u1") == Upload("u1", "local/app", 1024)

    await meta_store.delete_upload("u1")
    assert await meta_store.get_upload("u1") is None
    await meta_store.delete_upload("u1")  # deleting what is gone is fine


async def test_an_idle_upload_session_expires(meta_store: Uploads, meta_clock: FakeClock) -> None:
    await meta_store.put_upload(Upload("idle", "local/app", 5), ttl=SHORT_TTL)
    await meta_store.put_upload(Upload("busy", "local/app", 5), ttl=60)
    meta_clock.advance(2 * SHORT_TTL)

    async def expired() -> bool:
        return await meta_store.get_upload("idle") is None

    await wait_until(expired, within=UNTIL_TIMEOUT, message="the idle upload did not expire")
    assert await meta_store.get_upload("busy") == Upload("busy", "local/app", 5)
