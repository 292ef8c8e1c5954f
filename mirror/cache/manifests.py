"""Manifests: immutable by digest, resolved by tag with a freshness time.

A manifest addressed by digest is answered from the store whenever it is there and never
asks the upstream. A tag is answered from its record while the record is fresh (no upstream
request at all); after that it is revalidated with an upstream HEAD, which Docker Hub does
not count against its pull limit, and a GET follows only for a digest the mirror does not
hold yet. When the upstream fails, a tag that was ever resolved is served stale instead.

Tag records are keyed by Accept class too: the same tag names different manifests for
different Accept sets (a manifest list vs one platform's manifest).

Manifests are served to a repository only through a link (`scope`): a manifest fetched for
it, and what that manifest names, is linked before it is stored; a tag resolved for it links
the digest the tag names; a manifest cached for another repository is served only once the
upstream confirms it for this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mirror import errors, mediatypes, observe
from mirror.cache.access import AccessRecorder
from mirror.cache.graph import held_with
from mirror.cache.scope import RepositoryScope
from mirror.config import Config, Freshness
from mirror.errors import RegistryError
from mirror.manifestjson import declared_type, parse_manifest
from mirror.meta.store import Locks, RateLimits, TagKey, TagRecord, TagRecords
from mirror.ratelimit import RateLimit
from mirror.reference import Digest
from mirror.singleflight import SingleFlight
from mirror.storage import ContentStore, StoredManifest, StoreUnavailable
from mirror.upstream.client import FetchedManifest, UpstreamClient, UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

T = TypeVar("T")

# Tag records kept in memory at most (see `tag_cache_seconds`).
HOT_TAGS = 10_000
# Digests named by a tag's HEAD and not fetched yet, remembered at most (see `_unverified`).
UNVERIFIED_DIGESTS = 10_000
# How often a process waiting for another process's revalidation looks for its result.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Resolved:
    """What a tag names now; `manifest` holds the bytes when they were asked for, and
    `stale` says why the answer was not confirmed upstream just now (None when it was or
    when the record is still fresh)."""

    digest: Digest
    media_type: str
    size: int
    manifest: StoredManifest | None
    stale: str | None = None


class ManifestRecords(TagRecords, Locks, RateLimits, Protocol):
    """What the manifest cache uses of the metadata store: tag records, the lock that makes
    one process revalidate a tag, and the upstream's rate limit (links go through `scope`)."""


class ManifestCache:
    """The manifest side of the pull-through cache."""

    def __init__(
        self,
        store: ContentStore,
        meta: ManifestRecords,
        access: AccessRecorder,
        scope: RepositoryScope,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._meta = meta
        self._access = access
        self._scope = scope
        self._config = config
        self._clock = clock
        # Per repository: a fetch for one repository is no proof that another holds it.
        self._fetches: SingleFlight[tuple[str, str, Digest], StoredManifest] = SingleFlight()
        self._revalidations: SingleFlight[TagKey, TagRecord] = SingleFlight()
        self._record_reads: SingleFlight[TagKey, TagRecord | None] = SingleFlight()
        # Recently read tag records: (record, time.monotonic() until which it may be used).
        self._hot: dict[TagKey, tuple[TagRecord, float]] = {}
        self._freshness_rules: dict[tuple[str, str, str], Freshness] = {}
        self._reported_ratelimit: dict[str, RateLimit] = {}  # by upstream host
        # A HEAD's Docker-Content-Digest cannot be checked against bytes, so a tag record
        # made from one is a claim until its manifest is fetched: if the upstream then has
        # no such manifest, the records that named it are dropped (not kept for the tag's
        # freshness time) and the client is told the upstream contradicted itself.
        self._unverified: dict[Digest, set[TagKey]] = {}

    async def _stored(self, digest: Digest) -> StoredManifest | None:
        """The stored manifest; None also while the store is unreachable: the manifest is
        then fetched from the upstream (and served, verified, without being kept)."""
        try:
            return await self._store.read_manifest(digest)
        except StoreUnavailable as exc:
            log.debug("manifest %s not looked up: %s", digest, exc)
            return None

    async def _stored_for(self, repo: UpstreamRepo, digest: Digest) -> StoredManifest | None:
        """The stored manifest if `repo` is linked to it: what another process fetching it
        for `repo` leaves (it links before it stores). Stored for another repository only,
        it is not `repo`'s to serve without asking its upstream."""
        manifest = await self._stored(digest)
        return manifest if manifest is not None and await self._scope.linked(repo, digest) else None

    async def _holds(self, digest: Digest) -> bool:
        try:
            return await self._store.has_manifest(digest)
        except StoreUnavailable as exc:
            log.debug("manifest %s not looked up: %s", digest, exc)
            return False

    async def by_digest(self, repo: UpstreamRepo, digest: Digest) -> StoredManifest:
        """The manifest with this digest; fetched (once per repository, however many ask)
        and verified if the store lacks it. Stored once whichever upstream it came from, but
        served from the store only to a repository that holds it (`RepositoryScope.check`:
        404 otherwise)."""
        manifest = self._held_in_memory(repo, digest)  # the common hit, without an await
        if manifest is None and (manifest := await self._stored(digest)) is not None:
            await self._scope.check(repo, digest, "manifest")
        if manifest is not None:
            observe.cache_lookup("manifest", "hit")
        else:
            if self._config.freshness.offline:
                raise RegistryError(
                    errors.MANIFEST_UNKNOWN, "manifest not in the cache, and the mirror is offline"
                )
            key = (repo.upstream.host, repo.name, digest)
            joined = self._fetches.in_flight(key)
            observe.cache_lookup("manifest", "coalesced" if joined else "miss")
            manifest = await self._fetches.run(key, lambda: self._fetch_by_digest(repo, digest))
        self._access.touch(str(digest), repo)
        return manifest

    async def resolve(
        self,
        repo: UpstreamRepo,
        tag: str,
        accept: frozenset[str],
        *,
        with_bytes: bool,
        revalidate: bool = False,
        count_pull: bool = True,
    ) -> Resolved:
        """What `tag` names for this Accept class: from a fresh record without asking
        anyone, else revalidated upstream, else (upstream failing) from a stale record.
        Records are per upstream: the same name on two registries never shares one.

        `revalidate` asks the upstream however fresh the record is (unless a rule makes the
        tag immutable), still once however many ask and still answering stale when the
        upstream fails: what a prefetch wants. `count_pull=False` leaves it out of the
        pull counts, which are about clients."""
        hit = None if revalidate else self._fresh_in_memory(repo, tag, accept, with_bytes)
        resolved = hit or await self._resolve(
            repo, tag, accept, with_bytes=with_bytes, revalidate=revalidate
        )
        if count_pull:
            self._access.pulled(repo)  # counted only when it worked
        return resolved

    def _fresh_in_memory(
        self, repo: UpstreamRepo, tag: str, accept: frozenset[str], with_bytes: bool
    ) -> Resolved | None:
        """A fresh tag's answer when everything it takes is in this process's memory: the
        record (read within `tag_cache_seconds`), the repository's link and the manifest's
        bytes. What `_resolve` answers from the same memory, counted the same, without its
        awaits (a hot tag is most of a mirror's manifest traffic); None sends the request
        the long way."""
        key = TagKey(repo.upstream.host, repo.name, tag, mediatypes.accept_class(accept))
        hot = self._hot.get(key)
        if hot is None or hot[1] <= time.monotonic():
            return None
        record = hot[0]
        freshness = self._freshness(key)
        if not freshness.immutable and self._clock() - record.confirmed_at >= freshness.ttl:
            return None
        if not self._scope.remembers(repo, record.digest):
            return None
        if not with_bytes:
            observe.cache_lookup("tag", "hit")
            return Resolved(record.digest, record.media_type, record.size, None)
        manifest = self._store.recent_manifest(record.digest)
        if manifest is None:
            return None
        observe.cache_lookup("tag", "hit")
        observe.cache_lookup("manifest", "hit")
        self._access.touch(str(record.digest), repo)
        return Resolved(record.digest, manifest.media_type, record.size, manifest)

    def _held_in_memory(self, repo: UpstreamRepo, digest: Digest) -> StoredManifest | None:
        """`by_digest`'s hit when manifest and link are both in memory (no await)."""
        if not self._scope.remembers(repo, digest):
            return None
        return self._store.recent_manifest(digest)

    def _freshness(self, key: TagKey) -> Freshness:
        """The tag's freshness rule (rules are patterns: matched once per tag)."""
        rule_key = (key.upstream, key.repo, key.tag)
        freshness = self._freshness_rules.get(rule_key)
        if freshness is None:
            if len(self._freshness_rules) >= HOT_TAGS:
                self._freshness_rules.clear()  # crude but bounded
            freshness = self._config.tag_freshness(key.upstream, key.repo, key.tag)
            self._freshness_rules[rule_key] = freshness
        return freshness

    async def _resolve(
        self,
        repo: UpstreamRepo,
        tag: str,
        accept: frozenset[str],
        *,
        with_bytes: bool,
        revalidate: bool,
    ) -> Resolved:
        upstream = repo.upstream
        key = TagKey(upstream.host, repo.name, tag, mediatypes.accept_class(accept))
        record = await self._get_record(key, from_memory=not revalidate)
        if record is not None:
            freshness = self._freshness(key)
            fresh = not revalidate and self._clock() - record.confirmed_at < freshness.ttl
            if freshness.immutable or fresh:
                observe.cache_lookup("tag", "hit")
                return await self._answer(repo, record, with_bytes)
            if self._config.freshness.offline:
                observe.cache_lookup("tag", "stale")
                return await self._answer(repo, record, with_bytes, stale="the mirror is offline")
            if await self._budget_exhausted(upstream):
                observe.cache_lookup("tag", "stale")
                reason = f"upstream {upstream.name} rate limit nearly used up"
                return await self._answer(repo, record, with_bytes, stale=reason)
        elif self._config.freshness.offline:
            # Cached for other clients (another Accept class): one of those manifests may
            # be one this client accepts too.
            fallback = await self._offline_record(key, accept)
            if fallback is None:
                raise RegistryError(
                    errors.MANIFEST_UNKNOWN, "tag not in the cache, and the mirror is offline"
                )
            observe.cache_lookup("tag", "stale")
            return await self._answer(repo, fallback, with_bytes, stale="the mirror is offline")

        joined = self._revalidations.in_flight(key)
        try:
            current = await self._revalidations.run(
                key, lambda: self._revalidate(repo, key, accept, record)
            )
        except UpstreamError as exc:
            if record is None or (with_bytes and not await self._holds(record.digest)):
                observe.cache_lookup("tag", "miss")
                raise
            log.warning("serving %s:%s stale: %s", repo.qualified, tag, exc)
            observe.cache_lookup("tag", "stale")
            return await self._answer(repo, record, with_bytes, stale=str(exc))
        except RegistryError as exc:
            observe.cache_lookup("tag", "miss")
            if record is not None and exc.status == 404:  # the tag is gone upstream
                self._hot.pop(key, None)
                await self._meta.delete_tag(key)
            raise
        observe.cache_lookup("tag", "coalesced" if joined else "miss")
        self._keep_hot(key, current)
        return await self._answer(repo, current, with_bytes)

    async def _offline_record(self, key: TagKey, accept: frozenset[str]) -> TagRecord | None:
        """The most recently confirmed record of this tag, under any Accept class, whose
        manifest the client accepts and the store holds."""
        records = await self._meta.tag_records(key.upstream, key.repo, key.tag)
        usable = [
            record
            for record in records
            if record.media_type in accept and await self._holds(record.digest)
        ]
        return max(usable, key=lambda record: record.confirmed_at, default=None)

    async def _get_record(self, key: TagKey, *, from_memory: bool = True) -> TagRecord | None:
        """The tag's record: from memory if read within `tag_cache_seconds` (and
        `from_memory`), else the store (one read however many requests find the memory
        expired at once)."""
        hot = self._hot.get(key) if from_memory else None
        if hot is not None and hot[1] > time.monotonic():
            return hot[0]
        return await self._record_reads.run(key, lambda: self._read_record(key))

    async def _read_record(self, key: TagKey) -> TagRecord | None:
        record = await self._meta.get_tag(key)
        if record is not None:
            self._keep_hot(key, record)
        return record

    def _keep_hot(self, key: TagKey, record: TagRecord) -> None:
        if self._config.freshness.tag_cache_seconds <= 0:
            return
        if len(self._hot) >= HOT_TAGS:
            self._hot.clear()  # crude but bounded; the store still has everything
        self._hot[key] = (record, time.monotonic() + self._config.freshness.tag_cache_seconds)

    async def _answer(
        self, repo: UpstreamRepo, record: TagRecord, with_bytes: bool, *, stale: str | None = None
    ) -> Resolved:
        # The record is the upstream's answer for this repository's tag: it links the digest.
        if not await self._scope.linked(repo, record.digest):
            await self._link(repo, record.digest)
        if not with_bytes:
            return Resolved(record.digest, record.media_type, record.size, None, stale)
        manifest = await self.by_digest(repo, record.digest)  # its stored type is the one
        return Resolved(record.digest, manifest.media_type, record.size, manifest, stale)

    async def _revalidate(
        self, repo: UpstreamRepo, key: TagKey, accept: frozenset[str], known: TagRecord | None
    ) -> TagRecord:
        """Ask the upstream what the tag names now, and record it. Across processes sharing
        the metadata store only one asks; the others wait for its record."""
        lock = f"revalidate:{key.upstream}/{key.repo}:{key.tag}#{key.accept}"
        token = await self._meta.try_lock(lock, ttl=self._config.registries.request_timeout * 2)
        if token is None:
            newer = await self._wait_for_record(key, newer_than=known)
            if newer is not None:
                return newer
        try:
            header = mediatypes.upstream_accept_header(accept)
            try:
                head = await repo.upstream.head_manifest(
                    repo.name, key.tag, header, credential=repo.credential
                )
                if head is not None:
                    record = TagRecord(head.digest, head.media_type, head.size, self._clock())
                    if (stored := await self._stored(head.digest)) is None:
                        self._claimed(head.digest, key)
                    elif stored.media_type != head.media_type:
                        raise self._type_conflict(repo, stored, head.media_type)
                else:
                    manifest = await self._fetch_by_tag(repo, key.tag, header)
                    record = TagRecord(
                        manifest.digest,
                        manifest.media_type,
                        len(manifest.data),
                        self._clock(),
                    )
            except UpstreamError:
                if known is not None:
                    cached = await self._holds(known.digest)
                    observe.revalidated(key.upstream, "stale" if cached else "failed")
                raise
            if known is not None:
                changed = record.digest != known.digest
                observe.revalidated(key.upstream, "changed" if changed else "unchanged")
            await self._meta.put_tag(key, record)
            return record
        finally:
            await self._report_ratelimit(repo.upstream)
            if token is not None:
                await self._meta.unlock(lock, token)

    async def _wait_for_record(self, key: TagKey, newer_than: TagRecord | None) -> TagRecord | None:
        """Wait (bounded) for another process's revalidation to land in the store."""
        since = newer_than.confirmed_at if newer_than is not None else 0.0

        async def newer() -> TagRecord | None:
            record = await self._meta.get_tag(key)
            return record if record is not None and record.confirmed_at > since else None

        return await self._poll(newer)

    async def _poll(self, look: Callable[[], Awaitable[T | None]]) -> T | None:
        """`look()` until it finds something, for at most `request_timeout`: how a process
        waits for the result of upstream work another process holds the lock for."""
        try:
            async with asyncio.timeout(self._config.registries.request_timeout):
                # Another process does the work: there is no event to wait on, only the store.
                while (found := await look()) is None:  # noqa: ASYNC110
                    await asyncio.sleep(_POLL_SECONDS)
                return found
        except TimeoutError:
            return None

    async def _budget_exhausted(self, upstream: UpstreamClient) -> bool:
        """Whether the upstream's pull budget is at the configured floor: the shared record
        first (another process may have seen it fall), else what this process saw."""
        ratelimit = await self._meta.get_rate_limit(upstream.host)
        ratelimit = ratelimit or upstream.ratelimit
        return ratelimit is not None and ratelimit.exhausted(
            self._config.freshness.ratelimit_floor, self._clock()
        )

    async def _report_ratelimit(self, upstream: UpstreamClient) -> None:
        ratelimit = upstream.ratelimit
        if ratelimit is not None and ratelimit is not self._reported_ratelimit.get(upstream.host):
            self._reported_ratelimit[upstream.host] = ratelimit
            await self._meta.put_rate_limit(upstream.host, ratelimit)

    async def _fetch_by_digest(self, repo: UpstreamRepo, digest: Digest) -> StoredManifest:
        """GET a manifest once, even when several processes want it at the same moment: one
        takes the lock and fetches, the others wait for it to appear in the store."""
        lock = f"manifest:{repo.upstream.host}/{repo.name}@{digest}"
        token = await self._meta.try_lock(lock, ttl=self._config.registries.request_timeout * 2)
        if token is None and (manifest := await self._poll(lambda: self._stored_for(repo, digest))):
            return manifest
        # Ask for every type: a digest names exactly one manifest, whatever the client accepts.
        accept = mediatypes.accept_header(frozenset(mediatypes.MANIFEST_TYPES))
        try:
            # The process that held the lock may have stored it and let go between the
            # caller's look and this lock: look again before asking the upstream.
            if token is not None and (manifest := await self._stored_for(repo, digest)):
                return manifest
            try:
                fetched = await repo.upstream.get_manifest(
                    repo.name,
                    str(digest),
                    accept,
                    algorithm=digest.algorithm,
                    credential=repo.credential,
                )
            except RegistryError as exc:
                if exc.status == 404 and (claimed_by := self._unverified.pop(digest, None)):
                    return await self._fetch_claimed(repo, digest, claimed_by)
                raise
            self._unverified.pop(digest, None)
            if fetched.digest != digest:
                raise self._integrity_error(repo, digest, fetched)
            return await self._keep(repo, fetched)
        finally:
            await self._report_ratelimit(repo.upstream)
            if token is not None:
                await self._meta.unlock(lock, token)

    async def _fetch_claimed(
        self, repo: UpstreamRepo, digest: Digest, keys: set[TagKey]
    ) -> StoredManifest:
        """A tag's HEAD named `digest`, which the upstream does not serve by digest (a
        registry that rewrites manifests on the fly for the client's Accept does that): GET
        the tag as the HEAD asked it, and keep what comes only if it is that manifest (its
        bytes hash to the digest named). Otherwise the upstream contradicts itself (or the tag
        moved meanwhile): the records are dropped and the client told."""
        mine = sorted(
            (key for key in keys if (key.upstream, key.repo) == (repo.upstream.host, repo.name)),
            key=lambda key: (key.tag, key.accept),
        )
        if mine:
            key = mine[0]
            header = mediatypes.upstream_accept_header(mediatypes.accept_types(key.accept))
            try:
                fetched: FetchedManifest | None = await repo.upstream.get_manifest(
                    repo.name,
                    key.tag,
                    header,
                    algorithm=digest.algorithm,
                    credential=repo.credential,
                )
            except RegistryError as exc:  # the tag gone, or the upstream failing: told below
                log.warning("upstream %s: tag %s: %s", repo.upstream.name, key.tag, exc)
                fetched = None
            if fetched is not None and fetched.digest == digest:
                log.info(
                    "upstream %s serves %s only by tag (%s:%s); kept from the tag's answer",
                    repo.upstream.name,
                    digest,
                    key.repo,
                    key.tag,
                )
                return await self._keep(repo, fetched)
        raise await self._disown(repo, digest, keys)

    def _claimed(self, digest: Digest, key: TagKey) -> None:
        if len(self._unverified) >= UNVERIFIED_DIGESTS:
            self._unverified.clear()  # bounded; a claim forgotten is kept for its TTL
        self._unverified.setdefault(digest, set()).add(key)

    async def _disown(self, repo: UpstreamRepo, digest: Digest, keys: set[TagKey]) -> UpstreamError:
        """The upstream named `digest` for these tags but has no such manifest: forget the
        records (the next pull asks again) and say so."""
        for key in keys:
            self._hot.pop(key, None)
            await self._meta.delete_tag(key)
        tags = ", ".join(sorted(f"{key.repo}:{key.tag}" for key in keys))
        log.error(
            "upstream %s named %s for %s but does not have it; tag records dropped",
            repo.upstream.name,
            digest,
            tags,
        )
        error = UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {repo.upstream.name} named {digest} for {tags} but does not have it",
        )
        observe.upstream_failed(repo.upstream.host, str(error))
        return error

    async def _fetch_by_tag(self, repo: UpstreamRepo, tag: str, accept: str) -> StoredManifest:
        fetched = await repo.upstream.get_manifest(
            repo.name, tag, accept, credential=repo.credential
        )
        if fetched.claimed is not None and fetched.claimed != fetched.digest:
            raise self._integrity_error(repo, fetched.claimed, fetched)
        return await self._keep(repo, fetched)

    async def _keep(self, repo: UpstreamRepo, fetched: FetchedManifest) -> StoredManifest:
        """Store verified bytes fetched for `repo`, linked to it (and what they name) first,
        so they are never servable to it unlinked. When they cannot be stored (a full
        disk), they are answered all the same. Bytes already stored keep the type they were
        stored with: another upstream cannot change what that one's clients are told."""
        manifest = StoredManifest(fetched.data, self._checked_type(repo, fetched), fetched.digest)
        if (stored := await self._stored(fetched.digest)) is not None:
            if stored.media_type != manifest.media_type:
                raise self._type_conflict(repo, stored, manifest.media_type)
            await self._link(repo, stored.digest, stored.data)
            return stored
        await self._link(repo, manifest.digest, manifest.data)
        try:
            await self._store.write_manifest(manifest)
        except OSError as exc:
            log.error("storing manifest %s failed, served uncached: %s", manifest.digest, exc)
        return manifest

    def _checked_type(self, repo: UpstreamRepo, fetched: FetchedManifest) -> str:
        """The type to keep verified bytes as; refused (never stored) when they are no
        manifest the mirror can parse or their type is off the allow-list."""
        try:
            document = parse_manifest(fetched.data)
            return mediatypes.manifest_type(declared_type(document), fetched.media_type)
        except ValueError as exc:  # ManifestError, MediaTypeError
            error = UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {repo.upstream.name} sent a manifest the mirror refuses: {exc}",
            )
        log.error("%s (%s)", error, repo.name)
        observe.upstream_failed(repo.upstream.host, str(error))
        raise error

    def _type_conflict(
        self, repo: UpstreamRepo, stored: StoredManifest, sent: str
    ) -> UpstreamError:
        error = UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {repo.upstream.name} sends manifest {stored.digest} as {sent}; the "
            f"mirror holds it as {stored.media_type} and keeps that type",
        )
        log.error("%s", error)
        observe.upstream_failed(repo.upstream.host, str(error))
        return error

    async def _link(self, repo: UpstreamRepo, digest: Digest, data: bytes | None = None) -> None:
        """Link `repo` to the manifest and what it names (the store's manifests walked)."""
        held = await held_with(self._store, digest, data)
        await self._scope.link(repo, held)

    def _integrity_error(
        self, repo: UpstreamRepo, expected: Digest, got: FetchedManifest
    ) -> UpstreamError:
        log.error(
            "upstream integrity error: manifest %s of %s from %s hashes to %s; discarded",
            expected,
            repo.name,
            repo.upstream.name,
            got.digest,
        )
        error = UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {repo.upstream.name} sent a manifest that does not match {expected}",
        )
        observe.upstream_failed(repo.upstream.host, str(error))
        return error
