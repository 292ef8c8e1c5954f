"""Platforms: which children of an index a list such as `--platform linux/arm64` selects.

One parser and one matcher for every command and the server (prefetch, export, pinning), so
`mirror prefetch --platform P` and `mirror export --platform P` always agree.

Platforms are written "os/arch[/variant]" (`linux/amd64`, `linux/arm/v7`) and compared the
way containerd and Docker compare them, after normalising both sides:

- architecture aliases: `aarch64` is `arm64`, `x86_64` is `amd64`, `i386` is `386`,
  `armhf` is `arm/v7`, `armel` is `arm/v6`;
- a missing variant is the architecture's default: `v8` for arm64 (so `linux/arm64` and
  `linux/arm64/v8` are one platform), `v7` for arm (so `linux/arm` is `linux/arm/v7`, and
  not `linux/arm/v6`); `amd64/v1` is plain `amd64`;
- then os, architecture and variant must all be equal (`linux/amd64` does not select an
  `amd64/v3` child, as a linux/amd64 client would not pull it).

An index child that names no platform (an attestation or signature manifest, say) is
selected when no platforms are asked for, as every child is, and never when some are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?")
_ARCH_ALIASES = {
    "aarch64": ("arm64", ""),
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "i386": ("386", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
# (architecture, variant as written) -> the variant it means.
_VARIANTS = {
    ("arm64", ""): "v8",
    ("arm64", "8"): "v8",
    ("arm64", "v8.0"): "v8",
    ("arm", ""): "v7",
    ("arm", "5"): "v5",
    ("arm", "6"): "v6",
    ("arm", "7"): "v7",
    ("arm", "8"): "v8",
    ("amd64", "v1"): "",
}

# Whether an index child with this platform ("os/arch[/variant]", None when it names none)
# is wanted.
Selector = Callable[[str | None], bool]


def parse_platform(text: str) -> str:
    """A platform as "os/arch[/variant]", lower-cased; ValueError if it is not one."""
    platform = text.strip().lower()
    if not _PLATFORM_RE.fullmatch(platform):
        raise ValueError(f"{text!r} is not a platform such as linux/amd64 or linux/arm64/v8")
    return platform


def normalise(platform: str) -> tuple[str, str, str]:
    """(os, architecture, variant) as containerd normalises them; see the module doc."""
    os_, _, rest = platform.lower().partition("/")
    arch, _, variant = rest.partition("/")
    if os_ == "macos":
        os_ = "darwin"
    if arch in _ARCH_ALIASES:
        arch, implied = _ARCH_ALIASES[arch]
        variant = variant or implied
    return os_, arch, _VARIANTS.get((arch, variant), variant)


def platform_matches(wanted: Sequence[str], platform: str | None) -> bool:
    """Whether an index child for `platform` is selected by `wanted` (empty: every child)."""
    if not wanted:
        return True
    if platform is None:
        return False
    have = normalise(platform)
    return any(normalise(item) == have for item in wanted)


def selector(wanted: Sequence[str]) -> Selector:
    """`platform_matches` for one list of wanted platforms, as walks of the manifest graph
    take it."""
    chosen = tuple(wanted)
    return lambda platform: platform_matches(chosen, platform)
