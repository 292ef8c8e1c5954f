"""Fixtures of the client-auth tests: an htpasswd file of `PASSWORDS`, a clock the mirror's
tokens and throttle read, and `secured`, a mirror that every one of those users may pull
through."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry
from tests.client_auth.helpers import PASSWORDS, write_htpasswd
from tests.conftest import Client, StartMirror


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", PASSWORDS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def secured(
    start_mirror: StartMirror, upstream: FakeRegistry, users_file: Path, clock: FakeClock
) -> Client:
    """A mirror in front of the fake Docker Hub that every user may pull through."""
    return await start_mirror(upstream.url, clock=clock, htpasswd=str(users_file))
