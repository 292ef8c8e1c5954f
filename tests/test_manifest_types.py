"""The type a manifest is kept as: its own `mediaType` when it declares one (the upstream's
header, if sent, must agree), else the header's; either must be a manifest type."""

from __future__ import annotations

import pytest

from mirror import mediatypes
from mirror.mediatypes import MediaTypeError, manifest_type

OCI, DOCKER = mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("declared", "header", "kept"),
    [
        (OCI, OCI, OCI),
        (OCI, f"{OCI}; charset=utf-8", OCI),
        (OCI, "", OCI),  # no header: the manifest's own word
        (None, DOCKER, DOCKER),
        (None, mediatypes.DOCKER_SCHEMA1_SIGNED, mediatypes.DOCKER_SCHEMA1_SIGNED),
    ],
)
def test_the_kept_type(declared: str | None, header: str, kept: str) -> None:
    assert manifest_type(declared, header) == kept


@pytest.mark.parametrize(
    ("declared", "header", "why"),
    [
        (OCI, DOCKER, "but was sent as"),
        (None, "text/html", "'text/html', not a manifest type"),
        (None, "application/json", "not a manifest type"),
        (None, "", "not a manifest type"),
        ("text/html", "text/html", "declares media type 'text/html', not a manifest type"),
    ],
)
def test_types_off_the_list_or_in_disagreement_are_refused(
    declared: str | None, header: str, why: str
) -> None:
    with pytest.raises(MediaTypeError, match=why):
        manifest_type(declared, header)
