"""The SeaweedFS the S3 tests share: one `weed mini` per test session (it takes about two
seconds to start), each test under a key prefix of its own. The session's AWS environment
(credentials, endpoint, region) points at it while it runs, as the standard AWS chain reads
it in this process and in the processes it starts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.storage.s3client import S3Location
from mirror.storage.s3store import S3Store
from testkit.seaweed import SeaweedFS

BUCKET = "mirror"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"), BUCKET)
    saved = {key: os.environ.get(key) for key in server.env()}
    with server:
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def prefix_of(root: Path) -> str:
    """The key prefix a test rooted at `root` uses (the same in the processes it starts)."""
    return "t-" + hashlib.sha256(str(root).encode()).hexdigest()[:12]


def s3_store(root: Path, data_dir: Path | None = None, local_cache_size: int = 1 << 30) -> S3Store:
    """An S3 store on the session's SeaweedFS (found through the environment), its prefix
    named by `root`, its local part in `data_dir` (default `root/data`: pass another for a
    second replica, with an empty hot cache)."""
    location = S3Location.from_settings(f"s3://{BUCKET}/{prefix_of(root)}", None, None, None)
    return S3Store(location, data_dir or root / "data", local_cache_size)
