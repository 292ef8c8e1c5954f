"""Repository-scoped content: a cached blob or manifest is served to repository R of
upstream U only when the mirror knows that R holds it.

Content is stored once by digest, whichever repository it came from, but a digest is not a
capability: `team/app`'s layers must not be readable as `library/alpine`'s, nor probed with a
HEAD through a name that holds nothing. What the mirror knows is a link (U, R, digest) in
the metadata store (`mirror.meta.store.Links`), shared by every worker: written when the
upstream serves or confirms the digest for R, and when a manifest cached for R names it
(registries refuse a pushed manifest whose blobs the repository lacks, so a configured
upstream's manifest is trusted to name only what R holds).

Without a link the upstream is asked for R with a HEAD (the mirror's credentials, no body;
Docker Hub does not count it against the pull limit): a 200 records the link and the cached
bytes are served with no download; a 404 (or a refusal: 401/403) is answered 404
`BLOB_UNKNOWN` / `MANIFEST_UNKNOWN`. Offline, only linked content is served (404 otherwise).
An upstream that fails while asked (unreachable, 5xx, 429) gets its own clean 502/503/504/429
through: the mirror cannot tell, and says so rather than pretending the content is absent.

HEAD answers are remembered in this process for `PROBE_MEMORY_SECONDS` per (U, R, digest),
at most `PROBE_MEMORY_ENTRIES` of them, so a flood of the same probe costs the upstream one
request; a link in the store always wins over a remembered "no".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal

from mirror import errors, mediatypes
from mirror.errors import RegistryError
from mirror.meta.store import Link, Links
from mirror.reference import Digest
from mirror.singleflight import SingleFlight
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo

PROBE_MEMORY_SECONDS = 30.0
PROBE_MEMORY_ENTRIES = 10_000

Kind = Literal["blob", "manifest"]


def link_of(repo: UpstreamRepo, digest: Digest) -> Link:
    return Link(repo.upstream.host, repo.name, str(digest))


class RepositoryScope:
    """Whether a repository holds a digest: links first, the upstream when none."""

    def __init__(
        self, meta: Links, *, offline: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._meta = meta
        self._offline = offline
        self._clock = clock
        self._remembered: dict[Link, tuple[bool, float]] = {}  # -> (held, until clock())
        self._probes: SingleFlight[Link, bool] = SingleFlight()

    async def linked(self, repo: UpstreamRepo, digest: Digest) -> bool:
        """Whether a link says `repo` holds `digest` (no upstream request)."""
        link = link_of(repo, digest)
        if self._recall(link) is True:
            return True
        if await self._meta.has_link(link):
            self._remember(link, True)
            return True
        return False

    def remembers(self, repo: UpstreamRepo, digest: Digest) -> bool:
        """Whether this process knows from lately that `repo` holds `digest` (no I/O):
        `linked` would say so without asking the store."""
        return self._recall(link_of(repo, digest)) is True

    async def link(self, repo: UpstreamRepo, digests: Iterable[Digest]) -> None:
        """Record that `repo` holds `digests` (the upstream served or confirmed them for
        it, or a manifest cached for it names them)."""
        links = [link_of(repo, digest) for digest in digests]
        links = [link for link in links if self._recall(link) is not True]
        if not links:
            return  # written by this process moments ago
        await self._meta.add_links(links)
        for link in links:
            self._remember(link, True)

    async def check(self, repo: UpstreamRepo, digest: Digest, kind: Kind) -> None:
        """Return if `repo` holds `digest`: a link, or the upstream confirms it now (one HEAD
        however many ask at once, recorded as a link). Otherwise raise: 404 when it is not
        known to be there (not linked, and the upstream said no or the mirror is offline),
        the upstream's own failure when it could not answer."""
        if await self.linked(repo, digest):
            return
        link = link_of(repo, digest)
        if self._recall(link) is False:
            raise _unknown(kind, repo, "upstream does not have it")
        if self._offline:
            raise _unknown(kind, repo, "the mirror is offline")
        if not await self._probes.run(link, lambda: self._probe(repo, digest, kind)):
            raise _unknown(kind, repo, "upstream does not have it")

    async def _probe(self, repo: UpstreamRepo, digest: Digest, kind: Kind) -> bool:
        """Ask the upstream whether `repo` holds `digest`; remember the answer."""
        link = link_of(repo, digest)
        try:
            held = await self._ask(repo, digest, kind)
        except UpstreamError as exc:
            if exc.error != errors.DENIED:
                raise  # the upstream could not answer: nothing learned
            held = False  # 401/403: not for the mirror's credentials, so not servable
        except RegistryError as exc:
            if exc.status != 404:
                raise
            held = False
        if held:
            await self.link(repo, [digest])
        elif repo.credential is None:  # a passthrough client's "no" is that client's alone
            self._remember(link, False)
        return held

    async def _ask(self, repo: UpstreamRepo, digest: Digest, kind: Kind) -> bool:
        upstream = repo.upstream
        if kind == "blob":
            await upstream.head_blob(repo.name, digest, credential=repo.credential)
            return True
        accept = mediatypes.accept_header(frozenset(mediatypes.MANIFEST_TYPES))
        head = await upstream.head_manifest(
            repo.name, str(digest), accept, credential=repo.credential
        )
        if head is not None:
            return True
        # The upstream's HEAD cannot tell (405, or headers missing): its GET can, verified.
        fetched = await upstream.get_manifest(
            repo.name, str(digest), accept, algorithm=digest.algorithm, credential=repo.credential
        )
        return fetched.digest == digest

    def _recall(self, link: Link) -> bool | None:
        remembered = self._remembered.get(link)
        if remembered is None:
            return None
        held, until = remembered
        if until <= self._clock():
            del self._remembered[link]
            return None
        return held

    def _remember(self, link: Link, held: bool) -> None:
        if len(self._remembered) >= PROBE_MEMORY_ENTRIES:
            self._remembered.clear()  # crude but bounded; the store keeps the links
        self._remembered[link] = (held, self._clock() + PROBE_MEMORY_SECONDS)


def _unknown(kind: Kind, repo: UpstreamRepo, why: str) -> RegistryError:
    code = errors.BLOB_UNKNOWN if kind == "blob" else errors.MANIFEST_UNKNOWN
    return RegistryError(code, f"{kind} unknown to repository {repo.name} ({why})")
