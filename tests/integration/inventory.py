"""What a client says it holds after a pull: containerd's `ctr images ls` row of an image,
the Docker daemon's RepoDigests."""

from __future__ import annotations

import json

from tests.integration.containerd import Containerd
from tests.integration.dockerd import DockerDaemon


def image_row(containerd: Containerd, ref: str) -> dict[str, str]:
    """REF, TYPE and DIGEST of `ref` in `ctr images ls`, and its whole ROW (the columns
    after those may hold spaces: SIZE is "1.2 KiB")."""
    listing = containerd.ctr("images", "ls").check().stdout
    lines = listing.splitlines()
    header = lines[0].split()[:3]
    assert header == ["REF", "TYPE", "DIGEST"], listing
    for line in lines[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            return dict(zip(header, fields[:3], strict=True)) | {"ROW": line}
    raise AssertionError(f"{ref} is not among the images:\n{listing}")


def repo_digests(dockerd: DockerDaemon, ref: str) -> list[str]:
    """The digests in the image's RepoDigests (`alpine@sha256:...` entries)."""
    inspected = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    entries: list[str] = json.loads(inspected.check().stdout)
    return [entry.partition("@")[2] for entry in entries]
