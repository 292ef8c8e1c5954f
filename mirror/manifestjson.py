"""The one parse of manifest bytes: every reader of a manifest goes through `parse_manifest`.

Manifests come from upstreams and bundles, so their bytes are hostile input: Python's `json`
raises `RecursionError` (not `ValueError`) on a value nested a thousand levels deep, and a
caller that only expects `ValueError` crashes. Real manifests nest a handful of levels; a
document nested deeper than `MAX_DEPTH` is refused before it is parsed at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A real manifest nests about six levels (index -> manifests -> descriptor -> platform ->
# features, annotations); this leaves room for anything a registry sends.
MAX_DEPTH = 64
# Strings are skipped when counting nesting: a bracket inside one opens nothing.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class ManifestError(ValueError):
    """Bytes that are not a manifest the mirror can read; the message says why."""


def parse_manifest(data: bytes) -> dict[str, Any]:
    """The manifest's JSON object; `ManifestError` for anything else (invalid JSON, too
    deeply nested, not an object)."""
    if _too_deep(data):
        raise ManifestError(f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        document: Any = json.loads(data)
    except RecursionError:
        raise ManifestError("JSON nested too deeply to parse") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ManifestError(f"not valid JSON ({_short(exc)})") from None
    if not isinstance(document, dict):
        raise ManifestError(f"a JSON {type(document).__name__}, not an object")
    return document


def declared_type(document: dict[str, Any]) -> str | None:
    """The `mediaType` a manifest gives itself, if it gives one."""
    value = document.get("mediaType")
    return value if isinstance(value, str) and value else None


def _too_deep(data: bytes) -> bool:
    """Whether brackets outside strings nest past MAX_DEPTH (a scan with `re`, cheap next
    to the parse; unbalanced input is left for the parser to refuse)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _short(exc: ValueError) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
