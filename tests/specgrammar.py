"""The OCI specs' grammars for names, tags, digests and registry hosts, written out from the
specs themselves (OCI distribution-spec "Pulling manifests" for `<name>` and tags, OCI
image-spec "Digests" for digests, distribution/reference for hosts), not taken from the code
under test, so a parser that drifts from the spec fails the tests that use them; and a
hypothesis strategy for valid name components."""

from __future__ import annotations

import re

from hypothesis import strategies as st

# distribution-spec: path components of lower-case alphanumerics, joined by one ".", one or
# two "_" or any number of "-"; components separated by "/".
SPEC_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = re.compile(rf"{SPEC_COMPONENT}(?:/{SPEC_COMPONENT})*")
# distribution-spec: a word character first, then up to 127 word characters, "." or "-".
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# image-spec: algorithm ":" encoded, the algorithm's components joined by one of "+._-".
SPEC_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# image-spec's registered algorithms the mirror verifies: lower-case hex of a fixed length.
VERIFIABLE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
# distribution/reference's registry host: DNS labels (letters, digits, inner "-") joined
# by ".", or a bracketed IPv6 address (here also with an IPv4 tail); an optional ":port".
SPEC_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:.]+\])(?::[0-9]+)?"
)

# Built from the grammar's parts (`from_regex` on the whole name grammar is very slow).
alnums = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
separators = st.sampled_from([".", "_", "__", "-", "--", "---"])
components = st.tuples(alnums, st.lists(st.tuples(separators, alnums), max_size=3)).map(
    lambda parts: parts[0] + "".join(sep + run for sep, run in parts[1])
)
