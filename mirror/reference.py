"""Repository names, tags and digests: the spec's grammars, checked before anything touches
disk or the upstream.

Everything the mirror derives a file path or an upstream URL from passes through here, so a
value that gets past these parsers cannot contain `/..`, NUL, upper-case hex or any other
surprise.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mirror import errors
from mirror.errors import RegistryError

# OCI distribution-spec: path components separated by "/", each lower-case alphanumerics
# joined by ".", "_", "__" or runs of "-".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# OCI image-spec descriptor grammar: algorithm ":" encoded.
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# A registry host as it appears first in an image reference: DNS labels, an IPv4 address or
# a bracketed IPv6 address, with an optional port.
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::[0-9]{{1,5}})?")
# Docker clients reject references over 255 characters including the host part.
MAX_NAME_LENGTH = 255

#: Algorithms the mirror can verify, with the exact length of their lower-case hex encoding.
SUPPORTED_ALGORITHMS = {"sha256": 64, "sha512": 128}


def parse_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            errors.NAME_INVALID, f"repository name is longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(errors.NAME_INVALID, "invalid repository name", detail={"name": name})
    return name


def looks_like_host(component: str) -> bool:
    """Docker's rule for the first component of a reference: it names a registry host when
    it has a "." or a ":" or is "localhost" (`ghcr.io/org/app`, `localhost:5000/app`);
    otherwise the reference is on Docker Hub (`bitnami/redis`)."""
    return "." in component or ":" in component or component == "localhost"


def is_registry_host(text: str) -> bool:
    """Whether `text` is a well-formed registry host (lower-case) by Docker's rule."""
    if not looks_like_host(text) or _HOST_RE.fullmatch(text) is None:
        return False
    if text.startswith("["):  # the pattern admits "[..]": the address itself must parse
        try:
            ipaddress.IPv6Address(text[1 : text.index("]")])
        except ValueError:
            return False
    return True


def parse_tag(tag: str) -> str:
    """Return `tag` if it matches the tag grammar, else raise TAG_INVALID."""
    if not _TAG_RE.fullmatch(tag):
        raise RegistryError(errors.TAG_INVALID, "invalid tag", detail={"tag": tag[:200]})
    return tag


@dataclass(frozen=True, order=True)
class Digest:
    """A content digest the mirror can verify (sha256 or sha512, lower-case hex)."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; a grammatical digest with an unknown algorithm is refused
        clearly, because the mirror could not verify bytes against it."""
        match = _DIGEST_RE.fullmatch(value)
        if not match:
            raise RegistryError(
                errors.DIGEST_INVALID, "invalid digest", detail={"digest": value[:200]}
            )
        algorithm, encoded = match.groups()
        length = SUPPORTED_ALGORITHMS.get(algorithm)
        if length is None:
            raise RegistryError(
                errors.DIGEST_INVALID,
                f"unsupported digest algorithm {algorithm!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
                detail={"digest": value[:200]},
            )
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise RegistryError(
                errors.DIGEST_INVALID,
                f"{algorithm} digests are {length} lower-case hex characters",
                detail={"digest": value[:200]},
            )
        return cls(algorithm, encoded)


def is_digest(reference: str) -> bool:
    """A manifest reference is a digest exactly when it contains ':' (tags never do)."""
    return ":" in reference


@dataclass(frozen=True)
class ImageRef:
    """An image reference as users write it (`alpine:3.19`, `ghcr.io/org/app@sha256:...`),
    normalised Docker's way: registry host, repository name, and a tag or a digest."""

    host: str
    name: str
    tag: str | None
    digest: Digest | None

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.host}/{self.name}{at}"


DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def parse_image(text: str) -> ImageRef:
    """Parse a reference: no host means docker.io, whose one-segment names are official
    images (`alpine` is `library/alpine`), and no tag or digest means `latest`."""
    rest, _, digest_text = text.strip().partition("@")
    digest = Digest.parse(digest_text) if digest_text else None
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], parse_tag(rest[colon + 1 :])
    first, sep, remainder = rest.partition("/")
    if sep and looks_like_host(first):
        if not is_registry_host(first):
            raise RegistryError(errors.NAME_INVALID, f"invalid registry host in {text!r}")
        host, name = ("docker.io" if first in DOCKER_HUB_ALIASES else first), remainder
    else:
        host, name = "docker.io", rest
    name = parse_name(name)
    if host == "docker.io" and "/" not in name:
        name = f"library/{name}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(host, name, tag, digest)
