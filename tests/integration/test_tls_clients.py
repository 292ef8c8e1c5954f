"""Real clients pull through the mirror over HTTPS, trusting a private CA the way their users
would: Docker Engine through `/etc/docker/certs.d/<host:port>/ca.crt`, skopeo through
`--src-cert-dir`. Without the CA, both refuse the mirror.

The HTTPS listener is on this machine's own non-loopback address: Docker treats registries
that resolve into 127.0.0.0/8 (localhost included) as insecure by default and would not
verify their certificate at all, which would prove nothing. The plain-HTTP listener stays on
127.0.0.1, where the test harness checks the mirror is up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.mirrorserver import MirrorServer
from testkit.skopeo import skopeo
from testkit.tls import PrivateCA, make_private_ca
from testkit.upstream import RealUpstream
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.dockerd import DOCKER_CLI, DockerDaemon
from tests.integration.skopeocopy import check_oci_copy

DOCKER_CERTS_D = Path("/etc/docker/certs.d")
UNTRUSTED = "x509: certificate signed by unknown authority"
# Docker falls back to Docker Hub after the mirror fails; Hub is unreachable here.
REFUSAL_BUDGET = 60.0


def host_address() -> str:
    """This machine's first non-loopback IPv4 address."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(word)
            if address.version == 4 and not address.is_loopback:
                return word
    pytest.fail(f"this machine has no non-loopback IPv4 address (hostname -I: {out!r})")


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TLSMirror:
    server: MirrorServer
    ca: PrivateCA
    address: str  # this machine's address, where the HTTPS listener is
    host: str  # address:port of the HTTPS listener

    @property
    def url(self) -> str:
        return f"https://{self.host}"


@pytest.fixture
def tls_mirror(start_mirror: StartMirror, tmp_path: Path) -> TLSMirror:
    """A mirror serving HTTPS on <this machine's address>:<port> with a certificate from a
    private CA (HTTP on 127.0.0.1 as usual)."""
    address = host_address()
    host = f"{address}:{free_port_on(address)}"
    ca = make_private_ca(tmp_path / "ca", extra_ips=[address])
    server = start_mirror(
        ["--tls-cert", str(ca.cert_file), "--tls-key", str(ca.key_file), "--tls-listen", host]
    )
    assert f"listening on {host} (https)" in server.stderr
    return TLSMirror(server, ca, address, host)


def served_over_https(mirror: TLSMirror, path_contains: str) -> bool:
    """Whether the mirror logged a request for `path_contains` that came in over HTTPS: its
    client address is the HTTPS listener's own (a client of the loopback HTTP listener
    would be 127.0.0.1)."""
    access = f"mirror.access: {mirror.address} "
    lines = mirror.server.stderr.splitlines()
    return any(access in line and path_contains in line for line in lines)


@contextlib.contextmanager
def docker_trusts(host: str, ca_file: Path) -> Iterator[Path]:
    """`/etc/docker/certs.d/<host>/ca.crt` for the duration; afterwards only what this
    created is removed (directories only if they are empty)."""
    directory = DOCKER_CERTS_D / host
    created = [d for d in (DOCKER_CERTS_D.parent, DOCKER_CERTS_D, directory) if not d.exists()]
    ca_path = directory / "ca.crt"
    assert not ca_path.exists(), f"{ca_path} exists already; not touching it"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_file, ca_path)
        yield ca_path
    finally:
        ca_path.unlink(missing_ok=True)
        for made in reversed(created):
            with contextlib.suppress(OSError):
                made.rmdir()


def test_docker_pulls_through_the_https_mirror_once_it_trusts_the_ca(
    tls_mirror: TLSMirror, upstream: RealUpstream
) -> None:
    require("dockerd", "containerd", "ctr", DOCKER_CLI)
    image = upstream.images["small"]
    name = image.repo.removeprefix("library/")  # how Docker users name Hub images
    ref = f"{name}:{image.tag}"
    with DockerDaemon([tls_mirror.url]) as dockerd:
        # Not trusted yet: the mirror fails verification, Docker moves on to Docker Hub
        # (unreachable here), and the pull fails.
        refused = dockerd.docker("pull", ref, timeout=REFUSAL_BUDGET)
        assert refused.returncode != 0, refused.describe()
        assert any(
            f"{tls_mirror.url}/v2/" in line and UNTRUSTED in line
            for line in dockerd.log().splitlines()
        ), refused.describe()
        assert not mirror_requests(tls_mirror.server.stderr, "/manifests/")

        with docker_trusts(tls_mirror.host, tls_mirror.ca.ca_file):
            dockerd.docker("pull", ref).check()

        inspected = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        assert f"@{image.digest}" in inspected.check().stdout
        assert f"Trying to pull {name} from {tls_mirror.url}/ v2" in dockerd.log()
    assert not (DOCKER_CERTS_D / tls_mirror.host).exists()
    assert served_over_https(tls_mirror, f"/v2/{image.repo}/manifests/")
    for blob in image.blobs:
        assert upstream.blob_gets(blob) == 1, blob


def test_skopeo_copies_from_the_https_mirror_with_the_ca_in_its_cert_dir(
    tls_mirror: TLSMirror, upstream: RealUpstream, tmp_path: Path
) -> None:
    image = upstream.images["small"]
    source = f"docker://{tls_mirror.host}/{image.repo}:{image.tag}"
    refused = skopeo("copy", source, f"oci:{tmp_path / 'refused'}:{image.tag}")
    assert refused.returncode != 0
    assert UNTRUSTED in refused.stderr, refused.stderr

    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    shutil.copyfile(tls_mirror.ca.ca_file, cert_dir / "ca.crt")
    layout = tmp_path / "layout"
    copied = skopeo("copy", "--src-cert-dir", str(cert_dir), source, f"oci:{layout}:{image.tag}")

    assert copied.returncode == 0, f"{copied.stderr}\nmirror log:\n{tls_mirror.server.stderr}"
    assert check_oci_copy(layout, image.digest) == set(image.blobs)
    assert served_over_https(tls_mirror, f"/v2/{image.repo}/manifests/")
