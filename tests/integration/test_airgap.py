"""An air-gapped site: images pulled through one mirror are exported from its data dir,
imported into a second mirror's, and skopeo copies them from that mirror, which runs with
`--offline` and an upstream nobody listens on, getting exactly the upstream's digests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.mirrorproc import mirror_env
from testkit.mirrorserver import MirrorServer, free_port
from testkit.skopeo import skopeo
from testkit.upstream import RealUpstream
from tests.integration.conftest import StartMirror
from tests.integration.skopeocopy import check_dir_copy, check_oci_copy, copy

pytestmark = pytest.mark.skopeo


def mirror_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` on a data dir (run in `cwd`, where no mirror.toml is)."""
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        cwd=cwd,
        env=mirror_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_images_exported_from_one_mirror_are_served_by_an_offline_one_to_skopeo(
    start_mirror: StartMirror, upstream: RealUpstream, tmp_path: Path
) -> None:
    small, multi = upstream.images["small"], upstream.images["multiarch"]
    connected = start_mirror()
    copy(connected, small, f"dir:{tmp_path / 'warm-small'}")
    copy(connected, multi, f"oci:{tmp_path / 'warm-multi'}:{multi.tag}", "--all")
    assert connected.stop() == 0, connected.stderr

    bundle = tmp_path / "bundle.tar"
    exported = mirror_command(
        "export",
        "--data-dir",
        str(connected.data_dir),
        "-o",
        str(bundle),
        "alpine:3.19",
        "library/multi:1",
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    assert "2 images" in exported.stdout

    airgapped = tmp_path / "airgapped" / "data"
    imported = mirror_command("import", "--data-dir", str(airgapped), str(bundle), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    again = mirror_command("import", "--data-dir", str(airgapped), str(bundle), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing new" in again.stdout

    upstream.reset_counts()
    nowhere = f"http://127.0.0.1:{free_port()}"
    with MirrorServer(nowhere, airgapped, ["--offline"]) as offline:
        copy(offline, small, f"dir:{tmp_path / 'small'}")
        manifest = check_dir_copy(tmp_path / "small", small.digest)
        assert [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])] == (
            small.blobs
        )
        copy(offline, small, f"oci:{tmp_path / 'small-oci'}:{small.tag}")
        assert check_oci_copy(tmp_path / "small-oci", small.digest) == set(small.blobs)
        copy(offline, multi, f"oci:{tmp_path / 'multi'}:{multi.tag}", "--all")
        assert check_oci_copy(tmp_path / "multi", multi.digest) == set(multi.blobs)

        # Not in the bundle: refused at once, never looked for upstream.
        missing = skopeo("inspect", "--tls-verify=false", f"docker://{offline.host}/library/app:a")
        assert missing.returncode != 0
        assert "unreachable" not in offline.stderr, offline.stderr
        assert offline.stop() == 0, offline.stderr
    assert upstream.requests() == []
