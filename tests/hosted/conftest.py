"""The hosted tests push as a user: anonymous clients never push or delete, so each mirror
here has an htpasswd file of one user, `PUSHER`, whose Basic credentials its client sends
with every request."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from mirror import config
from mirror.server.app import create_app
from tests.client_auth.helpers import basic, write_htpasswd
from tests.conftest import Client, StartMirror, toml_value

PUSHER, PASSWORD = "pusher", "pusher-password"


@pytest.fixture
def start_mirror(aiohttp_client: AiohttpClient, tmp_path: Path, data_dir: Path) -> StartMirror:
    """`start_mirror`, logged in as `PUSHER` (no auth rules: a user may push and delete)."""
    users = write_htpasswd(tmp_path / "htpasswd", {PUSHER: PASSWORD})

    async def start(
        upstream_url: str, *, clock: Callable[[], float] | None = None, **settings: Any
    ) -> Client:
        values = {
            "upstream": upstream_url,
            "data_dir": str(data_dir),
            "htpasswd": str(users),
            **settings,
        }
        file = tmp_path / "mirror.toml"
        file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        app = await create_app(
            config.load(config_file=file, environ={}).config, clock=clock or time.time
        )
        client: Client = await aiohttp_client(app, headers=basic(PUSHER, PASSWORD))
        return client

    return start
