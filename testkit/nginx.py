"""The load balancer of `deploy/nginx/mirror-cluster.conf` as a real nginx on loopback, for
the deploy tests and the cluster benchmark: the shipped file with its replica addresses and
listen port swapped for local ones, nothing else changed.

    with Nginx(tmp_path, cluster_site(["127.0.0.1:5001", "127.0.0.1:5002"])) as lb:
        ...  # lb.url is http://127.0.0.1:<port>, balancing over the two
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from testkit.mirrorproc import REPO_ROOT
from testkit.mirrorserver import ServerProcess, http_request

CLUSTER_CONF = REPO_ROOT / "deploy" / "nginx" / "mirror-cluster.conf"
NGINX_BINARY = "nginx"
RELAY_PATH = "/_mirror/cluster/"  # the replica-to-replica endpoint: never passed on

_SERVER_LINE = re.compile(r"^(\s*)server\s+(\S+:\d+)(.*);$")
_LISTEN_LINE = re.compile(r"^(\s*)listen\s+\d+;$")
_HASH_LINE = re.compile(r"^\s*hash\s+.*;$")


def upstream_servers(conf: str) -> list[str]:
    """The `server HOST:PORT` entries of the conf's upstream block, in order."""
    return [m.group(2) for line in conf.splitlines() if (m := _SERVER_LINE.match(line))]


def cluster_site(servers: Sequence[str], *, listen: str = "{listen}", affinity: bool = True) -> str:
    """deploy/nginx/mirror-cluster.conf with `servers` (HOST:PORT) instead of its replicas
    and `listen` instead of its port (the `{listen}` placeholder: `Nginx` fills it in);
    without the digest-affinity `hash` line if `affinity` is false (round robin)."""
    lines: list[str] = []
    replaced = False
    for line in CLUSTER_CONF.read_text().splitlines():
        if server := _SERVER_LINE.match(line):
            indent, options = server.group(1), server.group(3)
            if not replaced:
                lines += [f"{indent}server {address}{options};" for address in servers]
            replaced = True
        elif listening := _LISTEN_LINE.match(line):
            lines.append(f"{listening.group(1)}listen {listen};")
        elif affinity or not _HASH_LINE.match(line):
            lines.append(line)
    return "\n".join(lines) + "\n"


def main_conf(workdir: Path, site: Path) -> str:
    """An nginx.conf that runs in the foreground with everything under `workdir`: a worker
    per core (as the official image) running as the user who started it (as root, nginx
    would run them as `nobody`, who may not enter a private temp dir), errors to a file, no
    access log, `site` as its only server."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"""daemon off;
user {user} {group};
worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {site};
}}
"""


def nginx_binary() -> str:
    found = shutil.which(NGINX_BINARY) or shutil.which(f"/usr/sbin/{NGINX_BINARY}")
    if found is None:
        raise FileNotFoundError("nginx not found: apt-get install nginx")
    return found


def check(workdir: Path, site: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `site` (a server conf, as `cluster_site` gives), run as `Nginx` would."""
    conf = _write(workdir, site.replace("{listen}", "127.0.0.1:1"))
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "t.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _write(workdir: Path, site: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site)
    conf = workdir / "nginx.conf"
    conf.write_text(main_conf(workdir, workdir / "site.conf"))
    return conf


class Nginx(ServerProcess):
    """nginx serving `site` (with `{listen}` for its address) on a free loopback port."""

    name = "nginx"

    def __init__(self, workdir: Path, site: str) -> None:
        super().__init__(workdir, cwd=workdir)
        self.workdir = workdir
        self.site = site

    def argv(self) -> list[str]:
        conf = _write(self.workdir, self.site.replace("{listen}", self.host))
        log = self.workdir / "error.log"
        return [nginx_binary(), "-p", str(self.workdir), "-c", str(conf), "-e", str(log)]

    def ready(self) -> bool:
        # Answered by nginx itself (the relay endpoint's 404), so no replica is asked.
        return http_request(self.url + RELAY_PATH, timeout=1.0) is not None
