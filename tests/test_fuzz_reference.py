"""Property tests of mirror/reference.py against the specs' grammars, on hostile input.

The grammars (tests/specgrammar.py) are written out from the specs themselves (OCI
distribution-spec "Pulling manifests" for `<name>` and tags, OCI image-spec "Digests" for
digests), not taken from the code under test, so a parser that drifts from the spec fails
here. Every parser either accepts a value the grammar allows, or raises `RegistryError` with
a 4xx status; any other exception fails the test.
"""

from __future__ import annotations

import ipaddress
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mirror.errors import RegistryError
from mirror.reference import (
    MAX_NAME_LENGTH,
    Digest,
    ImageRef,
    is_registry_host,
    looks_like_host,
    parse_image,
    parse_name,
    parse_tag,
)
from tests.specgrammar import (
    SPEC_DIGEST,
    SPEC_HOST,
    SPEC_NAME,
    SPEC_TAG,
    VERIFIABLE_DIGEST,
    components,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# --- strategies -----------------------------------------------------------------------------

# Characters that break parsers: separators, traversal, NUL and other controls, encodings
# of them, upper case, whitespace and non-ASCII look-alikes (Kelvin sign, fullwidth, digits
# of other scripts, a lone surrogate as aiohttp makes from undecodable bytes).
NASTY = "./:_-@+=%\x00\n\r\t \\AZaz09\u212a\uff0e\u0663\u00b2\udcff"
SNIPPETS = [
    "..",
    "../",
    "/..",
    "./",
    "//",
    "/",
    "%2e%2e",
    "%2F",
    "\x00",
    "\n",
    " ",
    "A",
    "__",
    "___",
    "--",
    ":",
    "@",
    "localhost",
    "sha256:",
    "\u212a",
]

nasty_text = st.text(alphabet=NASTY, max_size=40)
any_text = st.one_of(st.text(max_size=60), nasty_text)
valid_names = st.lists(components, min_size=1, max_size=4).map("/".join)
valid_tags = st.from_regex(SPEC_TAG, fullmatch=True)
hexes = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: f"sha256:{b.hex()}"),
    st.binary(min_size=64, max_size=64).map(lambda b: f"sha512:{b.hex()}"),
)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).map(
    lambda label: label.strip("-") or "x"
)
dns_hosts = st.tuples(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["", ":1", ":5000", ":65535", ":99999"]),
).map("".join)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid value with a hostile snippet inserted, or part of it upper-cased or cut."""
    value = draw(base)
    position = draw(st.integers(0, len(value)))
    how = draw(st.sampled_from(["insert", "upper", "cut", "double"]))
    if how == "insert":
        return value[:position] + draw(st.sampled_from(SNIPPETS)) + value[position:]
    if how == "upper":
        return value[:position] + value[position:].upper()
    if how == "cut":
        return value[:position]
    return value + value


names = st.one_of(valid_names, mutated(valid_names), any_text, st.just("a" * 256))
tags = st.one_of(valid_tags, mutated(valid_tags), any_text, st.just("a" * 129))
digests = st.one_of(
    hexes,
    mutated(hexes),
    any_text,
    st.from_regex(SPEC_DIGEST, fullmatch=True),
    hexes.map(lambda d: d + "\n"),
)
hosts = st.one_of(
    st.sampled_from(["docker.io", "ghcr.io", "localhost", "localhost:5000", "[::1]:5000"]),
    dns_hosts,
    mutated(st.sampled_from(["registry.example.com:443", "127.0.0.1:1", "quay.io"])),
    any_text,
)


@st.composite
def image_texts(draw: st.DrawFn) -> str:
    """`[host/]name[:tag][@digest]`, each part valid or hostile, or plain noise."""
    if draw(st.booleans()):
        return draw(any_text)
    text = draw(names)
    if draw(st.booleans()):
        text = f"{draw(hosts)}/{text}"
    if draw(st.booleans()):
        text = f"{text}:{draw(tags)}"
    if draw(st.booleans()):
        text = f"{text}@{draw(digests)}"
    return text


def assert_client_error(error: RegistryError, code: str | None = None) -> None:
    assert 400 <= error.status < 500
    if code is not None:
        assert error.error.code == code
    entry = json.loads(error.body())["errors"][0]
    assert isinstance(entry["code"], str) and isinstance(entry["message"], str)


def assert_safe_name(name: str) -> None:
    """What every accepted name guarantees, whatever the grammar says."""
    assert name and len(name) <= MAX_NAME_LENGTH
    assert not name.startswith("/") and not name.endswith("/")
    assert ".." not in name.split("/") and "." not in name.split("/")
    assert "//" not in name and "\x00" not in name
    assert name.isascii() and name == name.lower()


# --- properties -----------------------------------------------------------------------------


@FUZZ
@given(names)
@example("a" * MAX_NAME_LENGTH)
@example("library/../etc")
@example("a/./b")
@example("alpine\n")
def test_parse_name_accepts_exactly_the_spec_grammar(name: str) -> None:
    try:
        parsed = parse_name(name)
    except RegistryError as error:
        assert_client_error(error, "NAME_INVALID")
        assert not SPEC_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH
    else:
        assert parsed == name
        assert SPEC_NAME.fullmatch(name)
        assert_safe_name(name)


@FUZZ
@given(tags)
@example("A" * 128)
@example("latest\n")
@example(".hidden")
def test_parse_tag_accepts_exactly_the_spec_grammar(tag: str) -> None:
    try:
        parsed = parse_tag(tag)
    except RegistryError as error:
        assert_client_error(error, "TAG_INVALID")
        assert not SPEC_TAG.fullmatch(tag)
    else:
        assert parsed == tag
        assert SPEC_TAG.fullmatch(tag)
        assert "/" not in tag and "\x00" not in tag and tag[0] not in ".-"


@FUZZ
@given(digests)
@example("sha256:" + "A" * 64)
@example("sha256:" + "a" * 64 + "\n")
@example("sha256:../../etc/passwd")
@example("md5:d41d8cd98f00b204e9800998ecf8427e")
def test_digest_parse_accepts_only_verifiable_digests_and_round_trips(value: str) -> None:
    try:
        digest = Digest.parse(value)
    except RegistryError as error:
        assert_client_error(error, "DIGEST_INVALID")
        assert not VERIFIABLE_DIGEST.fullmatch(value)
    else:
        assert SPEC_DIGEST.fullmatch(value) and VERIFIABLE_DIGEST.fullmatch(value)
        assert digest.hex == digest.hex.lower() and "/" not in str(digest)
        assert str(digest) == value
        assert Digest.parse(str(digest)) == digest


@FUZZ
@given(hosts)
@example("bad..host")
@example("ghcr.io/")
@example("GHCR.IO")
@example("localhost")
@example("[..]")
@example("[::1]:5000")
@example("[::ffff:127.0.0.1]")
def test_registry_hosts_are_well_formed_and_lower_case(text: str) -> None:
    accepted = is_registry_host(text)
    assert isinstance(accepted, bool)
    if accepted:
        assert looks_like_host(text)
        assert SPEC_HOST.fullmatch(text)
        assert text == text.lower() and text.isascii()
        assert "/" not in text and ".." not in text and "\x00" not in text
        if text.startswith("["):
            ipaddress.IPv6Address(text[1 : text.index("]")])


@FUZZ
@given(st.one_of(hosts, names))
def test_looks_like_host_is_dockers_rule(component: str) -> None:
    expected = "." in component or ":" in component or component == "localhost"
    assert looks_like_host(component) is expected


@FUZZ
@given(image_texts())
@example("alpine")
@example("ghcr.io/org/app:1@sha256:" + "a" * 64)
@example("localhost:5000/a")
@example("docker.io/../etc")
@example("evil.example/%2e%2e/x")
@example("a:b/c")
@example("@sha256:" + "a" * 64)
def test_parse_image_yields_only_safe_references(text: str) -> None:
    try:
        ref = parse_image(text)
    except RegistryError as error:
        assert_client_error(error)
        return
    assert isinstance(ref, ImageRef)
    assert is_registry_host(ref.host) or ref.host == "docker.io"
    assert_safe_name(ref.name)
    assert SPEC_NAME.fullmatch(ref.name)
    if ref.host == "docker.io":
        assert "/" in ref.name  # official images are library/<name>
    assert ref.tag is not None or ref.digest is not None
    if ref.tag is not None:
        assert SPEC_TAG.fullmatch(ref.tag)
    if ref.digest is not None:
        assert VERIFIABLE_DIGEST.fullmatch(str(ref.digest))
    again = parse_image(str(ref))
    assert (again.host, again.name, again.digest) == (ref.host, ref.name, ref.digest)
    if ref.digest is None:
        assert again.tag == ref.tag
