"""The hosted tests push as a user: anonymous clients never push or delete, so each mirror
here has an htpasswd file of one user, `PUSHER`, whose Basic credentials its client sends
with every request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from tests.client_auth.helpers import basic, write_htpasswd
from tests.conftest import Client, StartMirror, mirror_starter

PUSHER, PASSWORD = "pusher", "pusher-password"


@pytest.fixture
def start_mirror(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    """`start_mirror`, logged in as `PUSHER` (no auth rules: a user may push and delete)."""
    users = write_htpasswd(tmp_path / "htpasswd", {PUSHER: PASSWORD})
    start = mirror_starter(aiohttp_client, tmp_path, data_dir, basic(PUSHER, PASSWORD))

    async def logged_in(
        upstream_url: str, *, clock: Callable[[], float] | None = None, **settings: Any
    ) -> Client:
        return await start(upstream_url, clock=clock, **{"htpasswd": str(users), **settings})

    return logged_in
