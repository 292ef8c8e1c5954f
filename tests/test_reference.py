"""The spec's grammars for names, tags and digests, as the mirror enforces them."""

from __future__ import annotations

import pytest

from mirror.errors import RegistryError
from mirror.reference import Digest, is_digest, parse_name, parse_tag

SHA256 = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "name",
    ["alpine", "library/alpine", "a/b/c/d", "my-org/my_app", "a__b", "a---b", "x.y/z9", "0"],
)
def test_valid_names_are_accepted(name: str) -> None:
    assert parse_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alpine",
        "library//alpine",
        "/alpine",
        "alpine/",
        "..",
        "../etc",
        "library/../../etc",
        "a/./b",
        "-alpine",
        "alpine-",
        "a___b",
        "a..b",
        "a\x00b",
        "host:5000/alpine",
        "a" * 256,
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_name(name)
    assert caught.value.error.code == "NAME_INVALID"
    assert caught.value.status == 400


@pytest.mark.parametrize("tag", ["latest", "3.19", "v1.2.3-rc.1", "_x", "A" * 128])
def test_valid_tags_are_accepted(tag: str) -> None:
    assert parse_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".hidden", "-x", "a" * 129, "a/b", "a b", "a\x00"])
def test_invalid_tags_are_refused(tag: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_tag(tag)
    assert caught.value.error.code == "TAG_INVALID"


def test_digests_parse_to_algorithm_and_hex() -> None:
    digest = Digest.parse(SHA256)
    assert (digest.algorithm, digest.hex, str(digest)) == ("sha256", "a" * 64, SHA256)
    assert Digest.parse("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sha256:" + "A" * 64, "lower-case hex"),
        ("sha256:" + "a" * 63, "64 lower-case hex"),
        ("sha256:" + "g" * 64, "lower-case hex"),
        ("sha256", "invalid digest"),
        ("sha256:", "invalid digest"),
        (":abc", "invalid digest"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm 'md5'"),
        ("blake3:" + "a" * 64, "unsupported digest algorithm 'blake3'"),
        ("sha256:../../etc/passwd", "invalid digest"),
    ],
)
def test_bad_digests_are_refused_with_a_reason(value: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as caught:
        Digest.parse(value)
    assert caught.value.error.code == "DIGEST_INVALID"
    assert fragment in str(caught.value)


def test_a_reference_is_a_digest_exactly_when_it_has_a_colon() -> None:
    assert is_digest(SHA256)
    assert not is_digest("latest")
