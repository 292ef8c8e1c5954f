"""A metadata store that never fails a request: the mirror works without its backend.

Everything in the metadata store is an optimisation (a tag the upstream need not be asked
about, a lock that saves duplicate upstream work), so when the backend fails the answer is
the one that means "not known": no record, no repositories, nothing stored, and a lock (or
lease) the caller may proceed under alone: without the backend, each replica leads its own
downloads. The mirror then behaves as if uncached, which is correct,
just slower.

Links are the one role where "not known" costs more than speed: no link means the mirror
does not know the repository holds the content, so it asks the upstream (a HEAD) before
serving cached bytes to it, and an offline mirror, or one whose upstream fails too, serves
no cached content to a repository it cannot confirm. Never the other way round: a failing
store never makes content servable.

The hosted repositories' records and upload sessions are the exception: they are the only
record of what was pushed, so "not known" would be a wrong answer (a tag gone, an upload
lost). Those calls go straight to the backend and its failures reach the caller, which
answers 503.

After a failure the backend is left alone for `retry_after` seconds, so an outage costs
each request nothing rather than a timeout; then one call probes it, and the store recovers
by itself once the backend answers. One warning per outage, one line when it ends, and a
counter for every failed call.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from mirror import observe
from mirror.meta.store import (
    Access,
    HostedManifest,
    Lease,
    Link,
    MetaStore,
    MetaStoreError,
    RateLimit,
    Replica,
    TagKey,
    TagRecord,
    Upload,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Lock tokens say who issued them, so `unlock` knows which ones the backend has never seen.
_LOCAL_TOKEN = "local:"  # taken without the backend: proceed without coordination
_BACKEND_TOKEN = "store:"  # followed by the backend's own token


class ResilientMetaStore:
    """A `MetaStore` in front of another that answers "not known" while that one fails."""

    def __init__(
        self,
        inner: MetaStore,
        *,
        retry_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._retry_after = retry_after
        self._clock = clock  # seconds, for the rest after a failure; tests pass their own
        self._skip_until = 0.0  # clock() before which the backend is not asked
        self._outage_since: float | None = None
        self._errors = 0

    @property
    def available(self) -> bool:
        """False from a failure until the backend next answers."""
        return self._outage_since is None

    @property
    def errors(self) -> int:
        """Backend calls that failed since this store was made."""
        return self._errors

    async def _guard(self, operation: str, neutral: T, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, or `neutral` if the backend fails or is resting after a failure."""
        now = self._clock()
        if now < self._skip_until:
            return neutral
        if self._outage_since is not None:
            # This call probes the backend; concurrent ones keep skipping it meanwhile.
            self._skip_until = now + self._retry_after
        try:
            result = await call()
        except MetaStoreError as exc:
            self._errors += 1
            observe.meta_store_failed(operation)
            self._skip_until = self._clock() + self._retry_after
            if self._outage_since is None:
                self._outage_since = now
                log.warning(
                    "metadata store unavailable, serving without it (retrying every %g s): %s",
                    self._retry_after,
                    exc,
                )
            return neutral
        if self._outage_since is not None:
            outage = self._clock() - self._outage_since
            log.info("metadata store recovered after %.1f s", outage)
            self._outage_since = None
            self._skip_until = 0.0
        return result

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        await self._inner.close()

    async def get_tag(self, key: TagKey) -> TagRecord | None:
        return await self._guard("get_tag", None, lambda: self._inner.get_tag(key))

    async def put_tag(self, key: TagKey, record: TagRecord) -> None:
        await self._guard("put_tag", None, lambda: self._inner.put_tag(key, record))

    async def delete_tag(self, key: TagKey) -> None:
        await self._guard("delete_tag", None, lambda: self._inner.delete_tag(key))

    async def tag_records(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        return await self._guard(
            "tag_records", [], lambda: self._inner.tag_records(upstream, repo, tag)
        )

    async def list_tags(self) -> list[tuple[TagKey, TagRecord]]:
        return await self._guard("list_tags", [], self._inner.list_tags)

    async def try_lock(self, name: str, ttl: float) -> str | None:
        async def take() -> str | None:
            token = await self._inner.try_lock(name, ttl)
            return None if token is None else _BACKEND_TOKEN + token

        return await self._guard("try_lock", _LOCAL_TOKEN + secrets.token_hex(8), take)

    async def unlock(self, name: str, token: str) -> None:
        if token.startswith(_BACKEND_TOKEN):
            inner_token = token.removeprefix(_BACKEND_TOKEN)
            await self._guard("unlock", None, lambda: self._inner.unlock(name, inner_token))

    async def acquire_lease(
        self, name: str, holder: str, url: str | None, ttl: float
    ) -> Lease | None:
        """A local lease (epoch 0, known to nobody else) while the backend fails."""

        async def take() -> Lease | None:
            lease = await self._inner.acquire_lease(name, holder, url, ttl)
            return None if lease is None else replace(lease, token=_BACKEND_TOKEN + lease.token)

        local = Lease(holder, url, 0, _LOCAL_TOKEN + secrets.token_hex(8))
        return await self._guard("acquire_lease", local, take)

    async def renew_lease(self, name: str, lease: Lease, ttl: float) -> bool:
        """A local lease stays held; a backend lease is held while the backend cannot say
        otherwise (its renewal resumes when the backend answers)."""
        if lease.token.startswith(_LOCAL_TOKEN):
            return True
        if not lease.token.startswith(_BACKEND_TOKEN):
            return False  # not a lease this store gave out
        inner = replace(lease, token=lease.token.removeprefix(_BACKEND_TOKEN))
        return await self._guard(
            "renew_lease", True, lambda: self._inner.renew_lease(name, inner, ttl)
        )

    async def release_lease(self, name: str, lease: Lease) -> None:
        if lease.token.startswith(_BACKEND_TOKEN):
            inner = replace(lease, token=lease.token.removeprefix(_BACKEND_TOKEN))
            await self._guard("release_lease", None, lambda: self._inner.release_lease(name, inner))

    async def lease_holder(self, name: str) -> Lease | None:
        return await self._guard("lease_holder", None, lambda: self._inner.lease_holder(name))

    async def heartbeat(self, replica: Replica, ttl: float) -> None:
        await self._guard("heartbeat", None, lambda: self._inner.heartbeat(replica, ttl))

    async def live_replicas(self) -> list[Replica]:
        return await self._guard("live_replicas", [], self._inner.live_replicas)

    async def put_rate_limit(self, upstream: str, limit: RateLimit) -> None:
        await self._guard(
            "put_rate_limit", None, lambda: self._inner.put_rate_limit(upstream, limit)
        )

    async def get_rate_limit(self, upstream: str) -> RateLimit | None:
        return await self._guard(
            "get_rate_limit", None, lambda: self._inner.get_rate_limit(upstream)
        )

    async def record_access(self, accesses: Mapping[str, Access]) -> None:
        await self._guard("record_access", None, lambda: self._inner.record_access(accesses))

    async def get_access(self, digest: str) -> Access | None:
        return await self._guard("get_access", None, lambda: self._inner.get_access(digest))

    async def list_accesses(self) -> dict[str, float]:
        return await self._guard("list_accesses", {}, self._inner.list_accesses)

    async def delete_accesses(self, digests: Iterable[str]) -> None:
        await self._guard("delete_accesses", None, lambda: self._inner.delete_accesses(digests))

    async def add_links(self, links: Iterable[Link]) -> None:
        await self._guard("add_links", None, lambda: self._inner.add_links(links))

    async def has_link(self, link: Link) -> bool:
        """False while the backend fails: not known to be linked (see the module's doc)."""
        return await self._guard("has_link", False, lambda: self._inner.has_link(link))

    async def links_of(self, digest: str) -> list[Link]:
        return await self._guard("links_of", [], lambda: self._inner.links_of(digest))

    async def remove_links(self, digests: Iterable[str]) -> None:
        await self._guard("remove_links", None, lambda: self._inner.remove_links(digests))

    async def remove_repository(self, upstream: str, repo: str) -> None:
        await self._guard(
            "remove_repository", None, lambda: self._inner.remove_repository(upstream, repo)
        )

    async def list_repositories(
        self, upstream: str, *, last: str = "", n: int | None = None
    ) -> list[str]:
        return await self._guard(
            "list_repositories", [], lambda: self._inner.list_repositories(upstream, last=last, n=n)
        )

    async def record_pulls(self, pulls: Mapping[str, int]) -> None:
        await self._guard("record_pulls", None, lambda: self._inner.record_pulls(pulls))

    async def top_repositories(self, limit: int) -> list[tuple[str, int]]:
        return await self._guard(
            "top_repositories", [], lambda: self._inner.top_repositories(limit)
        )

    # --- hosted repositories and uploads: failures reach the caller (see above)

    async def add_hosted(self, repo: str, digests: Iterable[str]) -> None:
        await self._inner.add_hosted(repo, digests)

    async def touch_hosted(self, repo: str, digests: Iterable[str]) -> set[str]:
        return await self._inner.touch_hosted(repo, digests)

    async def hosted_holds(self, repo: str, digest: str) -> bool:
        return await self._inner.hosted_holds(repo, digest)

    async def hosted_digests(self) -> set[str]:
        return await self._inner.hosted_digests()

    async def all_hosted_repositories(self) -> list[str]:
        return await self._inner.all_hosted_repositories()

    async def hosted_content(self, repo: str) -> dict[str, float]:
        return await self._inner.hosted_content(repo)

    async def remove_hosted(
        self, repo: str, digests: Iterable[str], *, added_before: float | None = None
    ) -> set[str]:
        return await self._inner.remove_hosted(repo, digests, added_before=added_before)

    async def put_hosted_tag(self, repo: str, tag: str, manifest: HostedManifest) -> None:
        await self._inner.put_hosted_tag(repo, tag, manifest)

    async def get_hosted_tag(self, repo: str, tag: str) -> HostedManifest | None:
        return await self._inner.get_hosted_tag(repo, tag)

    async def hosted_tags(self, repo: str, *, last: str = "", n: int | None = None) -> list[str]:
        return await self._inner.hosted_tags(repo, last=last, n=n)

    async def hosted_repositories(self, *, last: str = "", n: int | None = None) -> list[str]:
        return await self._inner.hosted_repositories(last=last, n=n)

    async def hosted_tagged(self, repo: str) -> dict[str, HostedManifest]:
        return await self._inner.hosted_tagged(repo)

    async def delete_hosted_tag(self, repo: str, tag: str) -> bool:
        return await self._inner.delete_hosted_tag(repo, tag)

    async def add_referrer(self, repo: str, subject: str, referrer: str, descriptor: str) -> None:
        await self._inner.add_referrer(repo, subject, referrer, descriptor)

    async def referrers(self, repo: str, subject: str) -> list[str]:
        return await self._inner.referrers(repo, subject)

    async def remove_referrer(self, repo: str, subject: str, referrer: str) -> None:
        await self._inner.remove_referrer(repo, subject, referrer)

    async def put_upload(self, upload: Upload, ttl: float) -> None:
        await self._inner.put_upload(upload, ttl)

    async def get_upload(self, upload_id: str) -> Upload | None:
        return await self._inner.get_upload(upload_id)

    async def delete_upload(self, upload_id: str) -> None:
        await self._inner.delete_upload(upload_id)
