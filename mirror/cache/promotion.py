"""Promotion by retag (`mirror tag SOURCE TARGET`): point a tag of a hosted repository at an
image that is already a tag of a hosted repository, or that the mirror can pull.

Content is stored once by digest, so promoting copies no bytes between repositories: what
the store lacks is pulled through the cache as `mirror prefetch` pulls it (an upstream
source only), then the target repository is recorded as holding every blob and manifest
of the image, children first, and only then is the tag moved, so the tag never names an
image the repository does not wholly hold. Nothing is uploaded, and a blob the target
already holds is not even recorded again.

SOURCE and TARGET are written as a client pulling from the mirror writes them, without
the mirror's host: `local/app:dev`, `nginx:1.27`, `docker.io/library/nginx@sha256:...`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror import errors
from mirror.cache.graph import walk_store
from mirror.cache.hosted import HostedRepositories
from mirror.cache.prefetch.engine import Puller, prefetch_image
from mirror.errors import RegistryError
from mirror.reference import Digest, parse_tag
from mirror.storage import StoredManifest
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import UpstreamRepo


class PromotionError(Exception):
    """The promotion could not be done (the message says why); `usage` when the command
    was asked for something it never does (a target that is not a hosted tag)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Address:
    """An image as addressed on the mirror: the repository name a client's path carries,
    and a tag or a digest."""

    name: str
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        return str(self.digest) if self.digest is not None else self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.reference}"


def parse_address(text: str) -> Address:
    """`name[:tag][@digest]`; neither tag nor digest means `latest`. Raises RegistryError
    for a malformed tag or digest (the name is checked where it is resolved)."""
    rest, _, digest_text = text.strip().partition("@")
    digest = Digest.parse(digest_text) if digest_text else None
    tag = None
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag_text = rest.rpartition(":")
        tag = parse_tag(tag_text)
    return Address(rest, tag, digest)


@dataclass(frozen=True)
class Promotion:
    """What a promotion did."""

    target: str  # the tag promoted to, as `name:tag`
    digest: Digest  # the manifest it names now
    previous: Digest | None  # the manifest it named before, if any
    manifests_recorded: int  # manifests the target repository did not hold before
    blobs_recorded: int  # blobs it did not hold before
    already_held: int  # manifests and blobs it held already
    blobs_fetched: int  # pulled from upstream because the store lacked them
    bytes_fetched: int


async def promote(
    puller: Puller, hosted: HostedRepositories, source: str, target: str
) -> Promotion:
    """Point the hosted tag `target` at the image `source` names (see the module)."""
    into, to = _target(puller, target)
    address = _address(source)
    origin = _resolve(puller, address, source)
    fetched, fetched_bytes = 0, 0
    if isinstance(origin, HostedRepo):
        root = (await _hosted_manifest(hosted, origin, address)).digest
    else:
        result = await prefetch_image(puller, _upstream_text(origin, address))
        if result.error is not None or result.digest is None:
            raise PromotionError(f"cannot pull {source}: {result.error}")
        root, fetched, fetched_bytes = result.digest, result.blobs_fetched, result.bytes_fetched
    previous = await _tagged(hosted, into, to)
    manifests, blobs = await _image(puller, root, source)
    held = {d for d in [*blobs, *manifests] if await hosted.holds(into, d)}
    try:
        for blob in blobs:
            if blob not in held:
                await hosted.add_blob(into, blob)
        for manifest in manifests.values():  # children first
            await hosted.adopt_manifest(into, manifest, None)
        await _check_stored(puller, blobs, manifests)
        await hosted.adopt_manifest(into, manifests[root], to)
    except RegistryError as exc:
        raise PromotionError(f"cannot tag {into.name}:{to}: {exc}") from None
    return Promotion(
        f"{into.name}:{to}",
        root,
        previous,
        manifests_recorded=sum(1 for d in manifests if d not in held),
        blobs_recorded=sum(1 for d in blobs if d not in held),
        already_held=len(held),
        blobs_fetched=fetched,
        bytes_fetched=fetched_bytes,
    )


def _target(puller: Puller, text: str) -> tuple[HostedRepo, str]:
    """The hosted repository and tag `text` names; a usage error for anything else."""
    address = _address(text)
    if address.digest is not None:
        raise PromotionError(f"{text}: the target is a tag, not a digest", usage=True)
    repo = _resolve(puller, address, text)
    if not isinstance(repo, HostedRepo):
        patterns = puller.router.hosting.patterns
        hosted = (
            "the hosted repositories are " + ", ".join(patterns)
            if patterns
            else "no repository is hosted (see the `hosted` setting)"
        )
        raise PromotionError(
            f"{text}: the target must be a hosted repository; {hosted}", usage=True
        )
    return repo, address.reference


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except RegistryError as exc:
        raise PromotionError(f"{text}: {exc}", usage=True) from None


def _resolve(puller: Puller, address: Address, text: str) -> HostedRepo | UpstreamRepo:
    """The repository `address` names on the mirror, as a request path naming it would."""
    try:
        return puller.router.resolve(address.name, None)
    except RegistryError as exc:
        raise PromotionError(f"{text}: {exc}", usage=True) from None


async def _hosted_manifest(
    hosted: HostedRepositories, repo: HostedRepo, address: Address
) -> StoredManifest:
    try:
        return await hosted.manifest(repo, address.reference)
    except RegistryError as exc:
        if exc.error == errors.MANIFEST_UNKNOWN:
            raise PromotionError(f"{address}: no such tag or manifest in {repo.name}") from None
        raise PromotionError(f"{address}: {exc}") from None


def _upstream_text(repo: UpstreamRepo, address: Address) -> str:
    """The reference `mirror prefetch` pulls the source by."""
    at = f"@{address.digest}" if address.digest is not None else f":{address.reference}"
    return repo.qualified + at


async def _tagged(hosted: HostedRepositories, repo: HostedRepo, tag: str) -> Digest | None:
    try:
        return (await hosted.manifest(repo, tag)).digest
    except RegistryError as exc:
        if exc.error == errors.MANIFEST_UNKNOWN:
            return None
        raise PromotionError(f"{repo.name}:{tag}: {exc}") from None


async def _image(
    puller: Puller, root: Digest, source: str
) -> tuple[dict[Digest, StoredManifest], list[Digest]]:
    """The image's manifests from the store, children before the index naming them, and
    its blobs; an error when the store lacks a manifest."""
    lacking: list[Digest] = []
    walk, read = await walk_store(
        puller.store, [root], missing=lambda edge: lacking.append(edge.digest)
    )
    if lacking:
        raise PromotionError(f"{source}: the store lacks its manifest {lacking[0]}")
    return {digest: read[digest] for digest in walk.finished}, list(walk.blobs)


async def _check_stored(
    puller: Puller, blobs: list[Digest], manifests: dict[Digest, StoredManifest]
) -> None:
    """Every blob and manifest is (still) in the store. Once recorded as hosted nothing is
    evicted; this catches what eviction took between the pull and the records (a run
    again fetches it) and a hosted source whose content the store lost."""
    for blob in blobs:
        if await puller.store.blob_size(blob) is None:
            raise PromotionError(f"the store lacks blob {blob}; run the command again")
    for digest in manifests:
        if not await puller.store.has_manifest(digest):
            raise PromotionError(f"the store lacks manifest {digest}; run the command again")
