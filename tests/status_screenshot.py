"""Makes docs/status-page.png: the status page of a mirror that has served a few pulls.

Run through `scripts/screenshot-status [OUTPUT]`. The mirror runs in this process on a
loopback port, in front of two fake registries: docker.io, which reports a pull rate limit
as Docker Hub does, and ghcr.io. A few images are pulled (some twice, so there are hits),
and each registry fails one request, so every part of the page has something to show.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from mirror import config
from mirror.server.app import create_app
from testkit.fakeupstream import FakeRegistry, Fault, make_image, random_layer
from tests.chromium import Chromium
from tests.clients import pull_like_docker
from tests.conftest import Client, toml_value

MiB = 1024 * 1024
WIDTH, HEIGHT = 1280, 900

# (registry, repository, tag, layer sizes, pulls)
PULLS = [
    ("docker.io", "library/alpine", "3.19", [3 * MiB + 400_000], 6),
    ("docker.io", "library/nginx", "1.27", [27 * MiB, 12 * MiB, 1 * MiB], 4),
    ("docker.io", "library/python", "3.12-slim", [28 * MiB, 14 * MiB], 3),
    ("docker.io", "library/redis", "7", [29 * MiB, 9 * MiB], 2),
    ("ghcr.io", "acme/api", "2.4.1", [31 * MiB, 6 * MiB], 3),
    ("ghcr.io", "acme/worker", "2.4.1", [31 * MiB, 2 * MiB], 1),
]


async def start_mirror(workdir: Path, hub: FakeRegistry, ghcr: FakeRegistry) -> Client:
    settings = {
        "data_dir": str(workdir / "data"),
        "upstream": [
            {"host": "docker.io", "url": hub.url},
            {"host": "ghcr.io", "url": ghcr.url},
        ],
    }
    file = workdir / "mirror.toml"
    file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    app = await create_app(config.load(config_file=file, environ={}).config)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def make_traffic(mirror: Client, hub: FakeRegistry, ghcr: FakeRegistry) -> None:
    seed = 0
    for registry, repo, tag, sizes, pulls in PULLS:
        layers = []
        for size in sizes:
            seed += 1
            layers.append(random_layer(size, seed))
        upstream = hub if registry == "docker.io" else ghcr
        upstream.push_image(repo, tag, make_image(layers=layers, seed=seed))
        # docker.io is the default; other registries are named by path prefix.
        name = repo if registry == "docker.io" else f"{registry}/{repo}"
        for _ in range(pulls):
            await pull_like_docker(mirror, name, tag)
    hub.add_fault(Fault("status", status=503, path_contains="/library/node/"))
    await mirror.get("/v2/library/node/manifests/22")
    ghcr.add_fault(Fault("status", status=500, path_contains="/acme/web/"))
    await mirror.get("/v2/ghcr.io/acme/web/manifests/latest")


async def screenshot() -> bytes:
    """The page as PNG, once it has rendered the mirror's status."""
    with tempfile.TemporaryDirectory(prefix="status-screenshot-") as tmp:
        workdir = Path(tmp)
        async with FakeRegistry(ratelimit=(200, 160)) as hub, FakeRegistry() as ghcr:
            mirror = await start_mirror(workdir, hub, ghcr)
            try:
                await make_traffic(mirror, hub, ghcr)
                async with Chromium.launch(workdir / "chromium") as browser:
                    page = await browser.new_page(width=WIDTH, height=HEIGHT)
                    await page.navigate(str(mirror.make_url("/")))
                    async with asyncio.timeout(10):
                        await page.wait_until(
                            "document.body !== null && document.body.dataset.loaded === 'true'"
                        )
                    problems = page.problems()
                    png = await page.screenshot()
            finally:
                await mirror.close()
    if problems:
        sys.exit("the page reported problems:\n" + "\n".join(problems))
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output", nargs="?", type=Path, default=Path("docs/status-page.png"))
    output: Path = parser.parse_args().output
    png = asyncio.run(screenshot())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png)
    print(f"wrote {output} ({WIDTH}x{HEIGHT}, {len(png)} bytes)")


if __name__ == "__main__":
    main()
