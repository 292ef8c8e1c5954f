"""A stored object that is no manifest the mirror can parse (from before it refused them, or
a damaged file) is skipped by every walk with one warning: gc's and eviction's view of what
is named, `ls`, pinning and export's walk; it never stops eviction."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.cache.eviction import Evictor
from mirror.cache.graph import reachable, walk_store
from mirror.cache.references import named_blobs, references
from mirror.manifestjson import MAX_DEPTH, ManifestError, parse_manifest
from mirror.mediatypes import OCI_MANIFEST
from mirror.meta import open_meta_store
from mirror.meta.store import MetaStore
from mirror.reference import Digest
from mirror.storage import StoredManifest
from mirror.storage.filesystem import FilesystemStore
from testkit.clock import FakeClock

NESTED = b"[" * 2000 + b"]" * 2000


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    "data",
    [NESTED, b'{"a": ' * 5000 + b"1" + b"}" * 5000, b"{", b"null", b"\xff"],
    ids=["list-2000", "object-5000", "invalid", "null", "not-utf8"],
)
def test_the_one_parse_refuses_what_is_no_manifest(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_nesting_counts_brackets_outside_strings_only() -> None:
    deep_text = json.dumps({"annotation": "[" * 500, "layers": []}).encode()
    assert parse_manifest(deep_text)["layers"] == []
    at_limit = b'{"x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert "x" in parse_manifest(at_limit)
    with pytest.raises(ManifestError, match="nested more than"):
        parse_manifest(b'{"x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}")


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    store = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=tmp_path)
    yield store
    await store.close()


async def test_walks_and_eviction_skip_an_unparseable_manifest_with_one_warning(
    tmp_path: Path, meta: MetaStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = FilesystemStore(tmp_path)
    layer = b"a layer" * 1000
    layer_digest = digest_of(layer)
    writer = store.blob_writer(layer_digest)
    await writer.write(layer)
    await writer.commit(len(layer))
    good = json.dumps({"schemaVersion": 2, "layers": [{"digest": str(layer_digest)}]}).encode()
    bad = digest_of(NESTED)
    for data in (good, NESTED):
        await store.write_manifest(StoredManifest(data, OCI_MANIFEST, digest_of(data)))

    with caplog.at_level(logging.WARNING, logger="mirror.cache.references"):
        assert references(NESTED, bad).unparseable
        assert await named_blobs(store, [digest_of(good), bad]) == {layer_digest}
        assert await reachable(store, [bad, digest_of(good)]) == {
            bad,
            digest_of(good),
            layer_digest,
        }
        walk, manifests = await walk_store(store, [bad])
        assert walk.unparseable == {bad} and set(manifests) == {bad}
    warnings = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(warnings) == 1, "one warning per object, however many walks meet it"

    clock = FakeClock(time.time() + 3600)  # nothing is recent any more

    async def nothing_pinned() -> set[Digest]:
        return set()

    store.measure()
    evictor = Evictor(store, meta, max_bytes=1, low_water=0.5, pinned=nothing_pinned, clock=clock)
    result = await evictor.evict()
    assert result is not None and result.objects == 3
    assert await store.read_manifest(bad) is None
    assert await store.blob_size(layer_digest) is None
