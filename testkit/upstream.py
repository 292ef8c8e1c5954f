"""The real upstream of the integration suite and the benchmark: the Go distribution registry
(`docker-registry`, 2.8) with token auth like Docker Hub's, behind our token server.

    token = TokenServer(workdir / "token", users={"user": "pass"})
    token.start()
    upstream = RealUpstream(workdir / "registry", token)
    upstream.start()
    ...
    upstream.blob_gets(digest)   # blob GETs answered 200/206 since reset_counts()
    upstream.stop(); upstream.start()   # an outage: same port, same storage

Counting reads the registry's access log (combined log format, which distribution writes to
stdout for every request, whatever its status). A line is written when its response has been
sent, so before counting, a marker request is sent and the count waits (bounded) until that
marker is in the log: every request answered before the count started is then in it too.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from testkit.mirrorproc import mirror_env
from testkit.mirrorserver import REPO_ROOT, ServerProcess, http_request
from testkit.tokenserver import make_signing_material

REGISTRY_BINARY = "docker-registry"
ISSUER = "mirror-test-issuer"
SERVICE = "mirror-test-registry"
COUNT_SYNC_TIMEOUT = 5.0
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

# `127.0.0.1 - - [23/Nov/2026:20:08:02 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "curl/7.88.1"`
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\d+|-)'
)
BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-zA-Z0-9=_-]+)$")
MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
SYNC_PATH = "/v2/"
SYNC_PARAM = "mirror-test-sync"


@dataclass
class SeededImage:
    """An image pushed to the upstream: `digest` is the manifest's (or index's) digest as
    pushed; `blobs` every config and layer digest, each once, in manifest order (config
    first, then the layers; platform after platform, for an index);
    `platforms` "os/arch" -> child manifest digest for an index (empty otherwise); `size`
    the total bytes of `blobs`."""

    repo: str
    tag: str
    digest: str
    blobs: list[str]
    platforms: dict[str, str] = field(default_factory=dict)
    size: int = 0

    @property
    def ref(self) -> str:
        """`repo:tag`, e.g. `library/alpine:3.19`."""
        return f"{self.repo}:{self.tag}"


@dataclass(frozen=True)
class AccessEntry:
    method: str
    path: str  # without the query
    query: str
    status: int
    size: int


class TokenServer(ServerProcess):
    """`python -m testkit.tokenserver` with a fresh EC key and self-signed cert
    (`cert_path`, which is what the registry trusts)."""

    name = "tokenserver"

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        issuer: str = ISSUER,
        service: str = SERVICE,
    ) -> None:
        super().__init__(workdir, env=mirror_env(), cwd=REPO_ROOT)
        make_signing_material(workdir)
        self.key_path = workdir / "key.pem"
        self.cert_path = workdir / "cert.pem"
        self.users = dict(users)
        self.issuer = issuer
        self.service = service

    @property
    def realm(self) -> str:
        return self.url + "/token"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "testkit.tokenserver",
            "--listen",
            self.host,
            "--key",
            str(self.key_path),
            "--cert",
            str(self.cert_path),
            "--issuer",
            self.issuer,
            "--service",
            self.service,
            "--users",
            *(f"{user}:{password}" for user, password in self.users.items()),
        ]

    def ready(self) -> bool:
        resp = http_request(f"{self.realm}?service={self.service}", timeout=1.0)
        return resp is not None and resp.status == 200

    def token(self, *scopes: str, user: tuple[str, str] | None = None) -> str:
        """A token for `scopes` (anonymous unless `user` = (name, password) is given)."""
        query = urlencode([("service", self.service), *(("scope", s) for s in scopes)])
        headers = {}
        if user is not None:
            pair = f"{user[0]}:{user[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        resp = http_request(f"{self.realm}?{query}", headers=headers)
        assert resp is not None and resp.status == 200, resp
        token: str = json.loads(resp.body)["token"]
        return token


class RealUpstream(ServerProcess):
    """`docker-registry serve CONFIG` on a loopback port with filesystem storage in
    `workdir/storage`, token auth through `token_server`, deletes disabled. Ready once
    `GET /v2/` answers 401 with a Bearer challenge naming the token server.

    `images` is filled by whoever seeds it (the session fixture)."""

    name = "registry"

    def __init__(self, workdir: Path, token_server: TokenServer) -> None:
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(
                f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)"
            )
        super().__init__(workdir, cwd=workdir)
        self.token_server = token_server
        self.storage = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.images: dict[str, SeededImage] = {}
        self.seed_seconds = 0.0  # how long seeding took (set by the seeder; for reports)
        self.credentials = next(iter(token_server.users.items()))
        self._count_from = 0  # byte offset in the access log of the last reset
        self._sync_ids = itertools.count(1)

    def argv(self) -> list[str]:
        self._write_config()
        return [REGISTRY_BINARY, "serve", str(self.config_path)]

    def _write_config(self) -> None:
        # JSON is a subset of YAML, so the config needs no YAML library.
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": False},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "mirror-integration-tests"},
            "auth": {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.cert_path),
                }
            },
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def ready(self) -> bool:
        resp = http_request(self.url + "/v2/", timeout=1.0)
        return (
            resp is not None
            and resp.status == 401
            and resp.headers.get("www-authenticate", "").startswith(
                f'Bearer realm="{self.token_server.realm}"'
            )
        )

    # --- direct access (with a token; these requests are counted like any other) -----------

    def head_manifest(self, repo: str, reference: str) -> str | None:
        """The `Docker-Content-Digest` of `repo:reference` (any manifest type), or None."""
        token = self.token_server.token(f"repository:{repo}:pull")
        resp = http_request(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            method="HEAD",
            headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT},
        )
        if resp is None or resp.status != 200:
            return None
        return resp.headers.get("docker-content-digest")

    # --- counting -----------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Count from now on."""
        self._sync()
        self._count_from = self._log_size()

    def requests(self) -> list[AccessEntry]:
        """Every request the registry answered since the last reset (the counting markers
        left out), in the order their responses completed."""
        self._sync()
        with self.stdout_path.open("rb") as f:
            f.seek(self._count_from)
            text = f.read().decode(errors="replace")
        entries = []
        for line in text.splitlines():
            match = ACCESS_LINE.search(line)
            if match is None:
                continue
            parts = urlsplit(match["uri"])
            if parts.path == SYNC_PATH and parts.query.startswith(SYNC_PARAM + "="):
                continue
            size = match["size"]
            entries.append(
                AccessEntry(
                    match["method"],
                    parts.path,
                    parts.query,
                    int(match["status"]),
                    0 if size == "-" else int(size),
                )
            )
        return entries

    def blob_gets(self, digest: str | None = None) -> int:
        """Blob GETs answered 200 or 206 since the last reset (of `digest` only, if given)."""
        count = 0
        for entry in self.requests():
            match = BLOB_PATH.match(entry.path)
            if (
                match
                and entry.method == "GET"
                and entry.status in (200, 206)
                and (digest is None or match["digest"] == digest)
            ):
                count += 1
        return count

    def manifest_requests(self, method: str | None = None) -> int:
        """Manifest requests (GET and HEAD, or only `method`) since the last reset that got
        past authentication: 401 challenges, which precede every token flow, do not count."""
        return sum(
            1
            for entry in self.requests()
            if MANIFEST_PATH.match(entry.path)
            and entry.status != 401
            and (method is None or entry.method == method.upper())
        )

    def _log_size(self) -> int:
        return self.stdout_path.stat().st_size if self.stdout_path.exists() else 0

    def _sync(self) -> None:
        """If the registry runs, make sure every response it completed so far is logged: send
        a marker request and wait until its line appears."""
        if not self.running:
            return
        marker = f"{SYNC_PATH}?{SYNC_PARAM}={next(self._sync_ids)}"
        resp = http_request(self.url + marker, timeout=COUNT_SYNC_TIMEOUT)
        if resp is None:
            return  # stopping or stopped; whatever is logged is all there is

        def logged() -> bool:
            with self.stdout_path.open("rb") as f:
                f.seek(self._count_from)
                return f'"GET {marker} '.encode() in f.read()

        self.wait_until(logged, COUNT_SYNC_TIMEOUT, "the registry logging a counting marker")
