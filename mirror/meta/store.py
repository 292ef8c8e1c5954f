"""The metadata store interface: small, mutable facts the mirror shares between requests,
restarts and (with Redis) processes.

Content lives in the content store, keyed by digest and immutable. Everything that changes
lives here: which digest a tag names and when that was last confirmed upstream, the
upstream's rate-limit budget, who accessed what and when, which repositories hold which
content (links, and the catalog read from them), what the hosted repositories hold (their
tags, content and referrers) and the upload sessions pushing into them, locks that make one
process (of many) do a piece of upstream work, leases that make one replica (of many)
download a blob, and which replicas are alive. (Upstream tag lists are kept beside it, by
`mirror.upstream.lists`.)

The interface is a few roles (`TagRecords`, `Locks`, `Leases`, `Replicas`, `RateLimits`,
`AccessRecords`, `Links`, `HostedContent`, `Uploads`, `Health`); a caller asks for the ones
it uses, and a backend implements all of them (`MetaStore`).

Implementations raise `MetaStoreError` for any backend failure; callers decide how to carry
on without the store (the mirror keeps serving, going to the upstream as if uncached).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from mirror.ratelimit import RateLimit
from mirror.reference import Digest

__all__ = [
    "Access",
    "AccessRecords",
    "CountedHealth",
    "Health",
    "HostedContent",
    "HostedManifest",
    "Lease",
    "Leases",
    "Link",
    "Links",
    "Locks",
    "MetaStore",
    "MetaStoreError",
    "RateLimit",
    "RateLimits",
    "Replica",
    "Replicas",
    "TagKey",
    "TagRecord",
    "TagRecords",
    "Upload",
    "Uploads",
]


class MetaStoreError(Exception):
    """The backend failed (connection lost, timeout, corrupt record). Safe to log."""


@dataclass(frozen=True)
class TagKey:
    """A tag as resolved for one Accept class on one upstream."""

    upstream: str  # the upstream's host[:port]
    repo: str
    tag: str
    accept: str  # mediatypes.accept_class(): the same tag names different manifests per class


@dataclass(frozen=True)
class TagRecord:
    digest: Digest  # parsed where the backend reads it: a record that does not parse is corrupt
    media_type: str
    size: int
    confirmed_at: float  # unix time the upstream last said the tag names this digest


@dataclass(frozen=True, order=True)
class Link:
    """Repository `repo` of upstream `upstream` (host[:port]) holds `digest`: the upstream
    said so (it served or confirmed the digest for that repository), or a manifest cached
    for that repository names it."""

    upstream: str
    repo: str
    digest: str


@dataclass
class Access:
    """Accesses of one digest since the last flush: when, and from which repositories."""

    last_access: float
    repos: set[str] = field(default_factory=set)


class Health(Protocol):
    """Whether the backend answers, asked without calling it: readiness checks, and work
    (eviction, an import) that must not act on answers a failing store left out."""

    @property
    def available(self) -> bool:
        """False from a failed call until one answers again."""

    @property
    def errors(self) -> int:
        """Calls that failed since the store was opened."""

    async def ping(self) -> None:
        """Raise MetaStoreError unless the backend answers."""

    async def close(self) -> None: ...


class TagRecords(Protocol):
    """Which digest a tag names, per upstream, repository and Accept class."""

    async def get_tag(self, key: TagKey) -> TagRecord | None: ...

    async def put_tag(self, key: TagKey, record: TagRecord) -> None: ...

    async def delete_tag(self, key: TagKey) -> None: ...

    async def tag_records(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        """The records of one tag under every Accept class (what an offline mirror can
        still answer a client with whose class has none)."""

    async def list_tags(self) -> list[tuple[TagKey, TagRecord]]:
        """Every tag record (for garbage collection, eviction and `mirror ls`; not for the
        request path)."""


class Locks(Protocol):
    """Coordination: one process does the upstream work, the others wait for its result."""

    async def try_lock(self, name: str, ttl: float) -> str | None:
        """Take the lock `name` for at most `ttl` seconds; a token to release it with, or
        None if someone else holds it."""

    async def unlock(self, name: str, token: str) -> None:
        """Release the lock if `token` still holds it."""


@dataclass(frozen=True)
class Lease:
    """Who holds a lease: the replica (`holder`), where other replicas reach it (`url`, None
    when it advertises none), and the lease's `epoch`, which rises with every acquisition of
    that name, so a stale holder's work can be told from its successor's. `token` proves the
    holding: only the acquirer knows it (a lease read with `lease_holder` has none)."""

    holder: str
    url: str | None
    epoch: int
    token: str = ""


class Leases(Protocol):
    """Who does a piece of work for the whole cluster (a blob's download), for a while: held
    until released or until its ttl runs out without a renewal, so a dead holder is
    replaced. An efficiency lock: two holders at once (a failover) cost duplicate work,
    never a wrong answer."""

    async def acquire_lease(
        self, name: str, holder: str, url: str | None, ttl: float
    ) -> Lease | None:
        """Take the lease for `ttl` seconds with a new, higher epoch; None while someone
        holds it."""

    async def renew_lease(self, name: str, lease: Lease, ttl: float) -> bool:
        """Extend `lease` to `ttl` seconds from now; False (and nothing changed) when it is
        no longer held by that acquisition (expired, and perhaps taken by another)."""

    async def release_lease(self, name: str, lease: Lease) -> None:
        """Give the lease up, if that acquisition still holds it."""

    async def lease_holder(self, name: str) -> Lease | None:
        """The current holding (without its token), or None if nobody holds the lease."""


@dataclass(frozen=True, order=True)
class Replica:
    """A mirror process serving the cluster: its id and where other replicas reach it."""

    id: str
    url: str | None


class Replicas(Protocol):
    """The replicas alive: each says so every little while (`heartbeat`), and counts as
    alive until its last heartbeat's ttl runs out."""

    async def heartbeat(self, replica: Replica, ttl: float) -> None: ...

    async def live_replicas(self) -> list[Replica]:
        """The replicas whose last heartbeat has not run out, sorted by id."""


class RateLimits(Protocol):
    """The upstreams' rate-limit budgets, as they last said."""

    async def put_rate_limit(self, upstream: str, limit: RateLimit) -> None: ...

    async def get_rate_limit(self, upstream: str) -> RateLimit | None: ...


class AccessRecords(Protocol):
    """What was used, when and from where, written in batches off the request path: digests'
    last accesses (eviction, gc) and pulls per repository (the status page)."""

    async def record_access(self, accesses: Mapping[str, Access]) -> None:
        """Merge a batch keyed by digest: keep the later access time, add the repos."""

    async def get_access(self, digest: str) -> Access | None: ...

    async def list_accesses(self) -> dict[str, float]:
        """The last access time of every digest with an access record."""

    async def delete_accesses(self, digests: Iterable[str]) -> None:
        """Forget the access records of content that is gone."""

    async def record_pulls(self, pulls: Mapping[str, int]) -> None:
        """Add a batch of pull counts, keyed by qualified repository (`docker.io/library/x`)."""

    async def top_repositories(self, limit: int) -> list[tuple[str, int]]:
        """The most-pulled repositories with their counts, most first."""


class Links(Protocol):
    """Which repositories hold which content: the mirror serves a cached digest to a
    repository only through a link (see `mirror.cache.scope`), and the catalog is the
    repositories with links, so a name enters it only through content the upstream
    confirmed for it, never because a client typed it."""

    async def add_links(self, links: Iterable[Link]) -> None:
        """Record a batch (idempotent)."""

    async def has_link(self, link: Link) -> bool: ...

    async def links_of(self, digest: str) -> list[Link]:
        """Every repository holding `digest`, sorted."""

    async def remove_links(self, digests: Iterable[str]) -> None:
        """Forget the links of content that is gone (gc, eviction, `mirror rm`); a
        repository left with none leaves the catalog."""

    async def remove_repository(self, upstream: str, repo: str) -> None:
        """Forget every link of one repository (`mirror rm` of its last tag)."""

    async def list_repositories(
        self, upstream: str, *, last: str = "", n: int | None = None
    ) -> list[str]:
        """The repositories of `upstream` with at least one link: sorted, those after
        `last` only, at most `n` (a page read from the store, never the whole table)."""


@dataclass(frozen=True)
class HostedManifest:
    """The manifest a hosted tag names."""

    digest: Digest
    media_type: str
    size: int


class HostedContent(Protocol):
    """What the hosted repositories hold: the only record of it (nothing upstream to ask
    again), so unlike the cache's roles a failure here must fail the request, never read as
    "nothing held". Content a hosted repository holds is never evicted."""

    async def add_hosted(self, repo: str, digests: Iterable[str]) -> None:
        """Record that hosted `repo` holds these blobs and manifests (idempotent), stamped
        now: gc leaves content added within its grace period alone (a push in progress)."""

    async def touch_hosted(self, repo: str, digests: Iterable[str]) -> set[str]:
        """Those of `digests` that `repo` holds, their stamps moved to now: a client that
        was just told the repository holds them (a blob `HEAD`, a manifest's check) is about
        to rely on it, so gc must not take them from under it."""

    async def hosted_holds(self, repo: str, digest: str) -> bool: ...

    async def hosted_digests(self) -> set[str]:
        """Every digest any hosted repository holds (what eviction must keep)."""

    async def all_hosted_repositories(self) -> list[str]:
        """Every hosted repository holding content or tags, sorted (for gc)."""

    async def hosted_content(self, repo: str) -> dict[str, float]:
        """What `repo` holds: each digest with the unix time it was last added or touched."""

    async def remove_hosted(
        self, repo: str, digests: Iterable[str], *, added_before: float | None = None
    ) -> set[str]:
        """Take these digests from `repo` (only those stamped before `added_before`, when
        given, so content added or touched meanwhile stays), and every tag of `repo` naming
        one of them, in one step; the digests removed."""

    async def put_hosted_tag(self, repo: str, tag: str, manifest: HostedManifest) -> None:
        """Point `tag` of `repo` at `manifest` (creating or moving it)."""

    async def get_hosted_tag(self, repo: str, tag: str) -> HostedManifest | None: ...

    async def hosted_tags(self, repo: str, *, last: str = "", n: int | None = None) -> list[str]:
        """`repo`'s tags: sorted, those after `last` only, at most `n`."""

    async def hosted_repositories(self, *, last: str = "", n: int | None = None) -> list[str]:
        """The hosted repositories with at least one tag (the catalog, `mirror ls`, the
        status page): sorted, those after `last` only, at most `n`."""

    async def hosted_tagged(self, repo: str) -> dict[str, HostedManifest]:
        """Every tag of `repo` with the manifest it names (for deletes and gc)."""

    async def delete_hosted_tag(self, repo: str, tag: str) -> bool:
        """Remove one tag (the manifest stays); False when `repo` had no such tag."""

    async def add_referrer(self, repo: str, subject: str, referrer: str, descriptor: str) -> None:
        """Record that manifest `referrer` of `repo` names `subject` as its subject;
        `descriptor` is its OCI descriptor as JSON, as the referrers API lists it."""

    async def referrers(self, repo: str, subject: str) -> list[str]:
        """The descriptors (JSON) of `repo`'s manifests whose subject is `subject`, sorted by
        referrer digest."""

    async def remove_referrer(self, repo: str, subject: str, referrer: str) -> None:
        """Forget that `referrer` of `repo` names `subject` (the referrer was deleted)."""


@dataclass(frozen=True)
class Upload:
    """A blob upload in progress into a hosted repository: `size` bytes received so far
    (kept in the content store's upload spool, see `mirror.cache.uploads`)."""

    id: str
    repo: str
    size: int


class Uploads(Protocol):
    """Upload sessions, shared by processes and kept across restarts; each expires `ttl`
    seconds after its last write (an abandoned upload)."""

    async def put_upload(self, upload: Upload, ttl: float) -> None: ...

    async def get_upload(self, upload_id: str) -> Upload | None:
        """The session, or None when it is unknown, finished, cancelled or expired."""

    async def delete_upload(self, upload_id: str) -> None: ...


class MetaStore(
    Health,
    TagRecords,
    Locks,
    Leases,
    Replicas,
    RateLimits,
    AccessRecords,
    Links,
    HostedContent,
    Uploads,
    Protocol,
):
    """Every role: what a backend implements. Callers ask for the roles they use."""


class CountedHealth:
    """`Health`'s numbers for a backend that counts its own failures (both do, by inheriting
    this): every MetaStoreError raised inside `_counted()` is a failed call, and the next
    call that answers makes the store available again."""

    _answering = True
    _failed_calls = 0

    @property
    def available(self) -> bool:
        return self._answering

    @property
    def errors(self) -> int:
        return self._failed_calls

    @contextmanager
    def _counted(self) -> Iterator[None]:
        try:
            yield
        except MetaStoreError:
            self._answering = False
            self._failed_calls += 1
            raise
        self._answering = True
