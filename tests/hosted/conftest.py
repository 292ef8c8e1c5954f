"""The hosted tests push as a user: anonymous clients never push or delete, so each mirror
here has an htpasswd file of one user, `PUSHER`, whose Basic credentials its client sends
with every request."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from tests.conftest import StartMirror
from tests.hosted.pushing import logged_in_mirrors


@pytest.fixture
def start_mirror(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    """`start_mirror`, logged in as `PUSHER` (no auth rules: a user may push and delete)."""
    return logged_in_mirrors(aiohttp_client, tmp_path, data_dir)
