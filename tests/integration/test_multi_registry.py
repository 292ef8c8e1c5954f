"""One mirror in front of two registries, with the clients configured by the real
`mirror client-config` output.

Two real registries (the Go distribution registry behind our token server) stand for
docker.io (the suite's `upstream`) and ghcr.io (a second one, seeded here). Both hold
`library/app:a`, with different content, so an answer from the wrong registry would show.
One `mirror serve` serves both, from a config file with two `[[upstream]]` tables, and
`mirror client-config ... --config <that file>` writes the clients' configuration.

The generated files keep the real registries as the clients' fallback (`server =
"https://registry-1.docker.io"` and `"https://ghcr.io"` for containerd; `location` for
podman), which are unreachable from here: an image that pulls came through the mirror.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.layout import Layout, random_bytes
from testkit.mirrorproc import mirror_env
from testkit.mirrorserver import MirrorServer
from testkit.skopeo import skopeo
from testkit.upstream import RealUpstream, SeededImage, TokenServer
from tests.integration.accesslog import mirror_requests
from tests.integration.conftest import StartMirror, require
from tests.integration.containerd import Containerd
from tests.integration.inventory import image_row
from tests.integration.podman import Podman
from tests.integration.processes import Result, host_platform, run

REPO, TAG = "library/app", "a"  # on both registries, with different content
SEED_TIMEOUT = 60.0
CLIENT_CONFIG_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def ghcr(
    token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealUpstream]:
    """A second registry, standing for ghcr.io: `images["app"]` is its library/app:a, which
    shares no blob with docker.io's."""
    require("docker-registry", "skopeo")
    registry = RealUpstream(tmp_path_factory.mktemp("ghcr"), token_server)
    registry.start()
    try:
        registry.images = {"app": push_app(registry, tmp_path_factory.mktemp("ghcr-layout"))}
        yield registry
    finally:
        registry.stop()


def push_app(registry: RealUpstream, root: Path) -> SeededImage:
    """Build library/app:a for this machine's platform (its own bytes) and push it."""
    layout = Layout(root)
    layer = layout.add_layer(
        {"app/ghcr.bin": random_bytes(64 * 1024, seed=60), "app/name": b"ghcr.io app\n"}
    )
    image = layout.add_image([layer], arch=host_platform().split("/")[1], cmd=("/app/ghcr.bin",))
    layout.tag(TAG, image.descriptor)
    user, password = registry.credentials
    pushed = skopeo(
        "copy",
        "--dest-creds",
        f"{user}:{password}",
        "--dest-tls-verify=false",
        f"oci:{layout.root}:{TAG}",
        f"docker://{registry.host}/{REPO}:{TAG}",
        timeout=SEED_TIMEOUT,
    )
    assert pushed.returncode == 0, f"seeding the ghcr.io registry failed:\n{pushed.stderr}"
    assert registry.head_manifest(REPO, TAG) == image.descriptor.digest
    return SeededImage(
        repo=REPO,
        tag=TAG,
        digest=image.descriptor.digest,
        blobs=[blob.digest for blob in image.blobs],
        size=sum(blob.size for blob in image.blobs),
    )


@dataclass(frozen=True)
class Setup:
    """The mirror serving both registries, its config file, and each registry's image."""

    mirror: MirrorServer
    config_file: Path
    hub: RealUpstream
    ghcr: RealUpstream
    hub_image: SeededImage
    ghcr_image: SeededImage


@pytest.fixture
def setup(
    upstream: RealUpstream, ghcr: RealUpstream, start_mirror: StartMirror, tmp_path: Path
) -> Setup:
    config_file = tmp_path / "mirror.toml"
    config_file.write_text(
        "builtin_upstreams = false\n"
        f'\n[[upstream]]\nhost = "docker.io"\nurl = "{upstream.url}"\n'
        f'\n[[upstream]]\nhost = "ghcr.io"\nurl = "{ghcr.url}"\n'
    )
    mirror = start_mirror(extra_args=("--config", str(config_file)))
    ghcr.reset_counts()  # (the suite's upstream is reset for every test already)
    setup = Setup(mirror, config_file, upstream, ghcr, upstream.images["tag_a"], ghcr.images["app"])
    assert setup.hub_image.ref == setup.ghcr_image.ref == f"{REPO}:{TAG}"
    assert setup.hub_image.digest != setup.ghcr_image.digest
    assert not set(setup.hub_image.blobs) & set(setup.ghcr_image.blobs)
    return setup


def client_config(client: str, setup: Setup, output_dir: Path) -> Result:
    """The real `mirror client-config CLIENT` for the mirror's own config file and URL."""
    return run(
        [
            sys.executable,
            "-m",
            "mirror",
            "client-config",
            client,
            "--config",
            str(setup.config_file),
            "--mirror-url",
            setup.mirror.url,
            "--output-dir",
            str(output_dir),
        ],
        env=mirror_env(),
        timeout=CLIENT_CONFIG_TIMEOUT,
    ).check()


def assert_each_registry_served_only_its_own_blobs(setup: Setup) -> None:
    for registry, image in ((setup.hub, setup.hub_image), (setup.ghcr, setup.ghcr_image)):
        assert registry.manifest_requests() > 0
        for blob in image.blobs:
            assert registry.blob_gets(blob) == 1, blob
        assert registry.blob_gets() == len(image.blobs)  # and nothing else


# --------------------------------------------------------------------------- containerd


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    require("containerd", "ctr")
    with Containerd() as daemon:
        yield daemon


def test_containerd_pulls_the_same_name_from_two_registries_through_one_mirror(
    setup: Setup, containerd: Containerd, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / "certs.d"
    written = client_config("containerd", setup, hosts_dir)
    assert sorted(written.stdout.splitlines()) == [
        f"wrote {hosts_dir / 'docker.io' / 'hosts.toml'}",
        f"wrote {hosts_dir / 'ghcr.io' / 'hosts.toml'}",
    ]

    logs = {}
    for registry in ("docker.io", "ghcr.io"):
        log_before = setup.mirror.stderr
        pulled = containerd.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(hosts_dir),
            "--snapshotter",
            containerd.snapshotter,
            f"{registry}/{REPO}:{TAG}",
        ).check()
        assert f"unpacking {host_platform()} " in pulled.stdout, pulled.describe()
        logs[registry] = setup.mirror.stderr[len(log_before) :]

    # Each reference resolved to its own registry's image.
    assert image_row(containerd, f"docker.io/{REPO}:{TAG}")["DIGEST"] == setup.hub_image.digest
    assert image_row(containerd, f"ghcr.io/{REPO}:{TAG}")["DIGEST"] == setup.ghcr_image.digest
    # Every request of each pull named its registry (containerd adds `ns` for a mirror).
    for registry, image in (("docker.io", setup.hub_image), ("ghcr.io", setup.ghcr_image)):
        requests = mirror_requests(logs[registry], f"/v2/{REPO}/")
        assert {r.query for r in requests} == {f"ns={registry}"}, requests
        fetched = {r.path.rsplit("/", 1)[1] for r in requests if r.method == "GET"}
        assert set(image.blobs) <= fetched, (registry, requests)
    assert_each_registry_served_only_its_own_blobs(setup)


# --------------------------------------------------------------------------- podman


def test_podman_pulls_the_same_name_from_two_registries_by_path_prefix(
    setup: Setup, tmp_path: Path
) -> None:
    require("podman")
    generated = tmp_path / "podman"
    client_config("podman", setup, generated)

    with Podman(setup.mirror.host) as podman:
        # The generated tables, after the globals the private podman needs (TOML wants
        # top-level keys before the first table).
        podman.registries_conf.write_text(
            'unqualified-search-registries = []\nshort-name-mode = "disabled"\n\n'
            + (generated / "registries.conf").read_text()
        )
        for registry in ("docker.io", "ghcr.io"):
            podman.podman("pull", f"{registry}/{REPO}:{TAG}").check()

        for registry, image in (("docker.io", setup.hub_image), ("ghcr.io", setup.ghcr_image)):
            ref = f"{registry}/{REPO}:{TAG}"
            inspected = podman.podman("image", "inspect", "--format", "{{.Digest}}", ref)
            assert inspected.check().stdout.strip() == image.digest, ref
    # podman sends no `ns`: the registry is the first component of the path.
    for registry, image in (("docker.io", setup.hub_image), ("ghcr.io", setup.ghcr_image)):
        requests = mirror_requests(setup.mirror.stderr, f"/v2/{registry}/{REPO}/")
        assert all(r.query == "" for r in requests), requests
        fetched = {r.path.rsplit("/", 1)[1] for r in requests if r.status == 200}
        assert {TAG, *image.blobs} <= fetched, (registry, requests)
    assert not mirror_requests(setup.mirror.stderr, f"/v2/{REPO}/")  # nothing unprefixed
    assert_each_registry_served_only_its_own_blobs(setup)
