"""A private Docker Engine (dockerd on its own containerd), started per test and cleaned up.

    with DockerDaemon([mirror.url]) as dockerd:
        dockerd.docker("pull", "alpine:3.19").check()

No bridge, no iptables, and neither /etc/docker nor ~/.docker is used or written; the one
host path that cannot be redirected, /run/docker/plugins, is removed again (see
`DockerDaemon`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from tests.integration.containerd import Containerd
from tests.integration.processes import (
    COMMAND_TIMEOUT,
    PROBE_TIMEOUT,
    Daemon,
    Process,
    Result,
    Workdir,
    base_env,
    run,
)

# Debian's CLI, which matches Debian's dockerd (another `docker` may come first on PATH).
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class DockerDaemon(Daemon):
    """Debian's dockerd (20.10) with its own `daemon.json`, on a private containerd.

    daemon.json, as found to work here:
    - `storage-driver: vfs`: plain directory copies, no kernel support needed and nothing
      left mounted after a pull.
    - `iptables`/`ip6tables: false`, `bridge: none`, `ip-forward`/`ip-masq: false`: no
      docker0, no NAT rules, no sysctl changes; pulls need no container networking.
    - `data-root`, `exec-root`, `pidfile`, `hosts` (one unix socket): all in the work dir.
      dockerd bind-mounts `data-root` onto itself (private propagation) and unmounts it on a
      clean exit; `close()` unmounts it in any case.
    - `containerd`: the socket of a private `Containerd` (started first) rather than the
      one dockerd would manage itself, because the managed one creates /opt/containerd on
      the host and its config cannot be changed. dockerd keeps its objects in that
      containerd's `moby` namespace.
    - `registry-mirrors`: the mirror(s). A plain-HTTP mirror on 127.0.0.1 needs no
      `insecure-registries` entry: 127.0.0.0/8 is insecure by default.
    - `debug: true`: the log shows every endpoint tried (mirror first, then Docker Hub).
    - `deprecated-key-path` (a daemon.json-only key of 20.10, no flag): otherwise dockerd
      writes its identity key to /etc/docker/key.json.
    No flags beyond `--config-file`; no cgroup or mount setup is needed for pulls (cgroup v1
    is mounted here; `docker run` is not exercised).

    Host side effects that cannot be redirected: dockerd creates /run/docker/plugins (the
    plugin socket directory is compiled in); `close()` removes it again if it did not exist
    before and is empty.
    """

    def __init__(self, registry_mirrors: Sequence[str]) -> None:
        self.registry_mirrors = list(registry_mirrors)
        self._workdir = Workdir("mi-dkd-")
        self.dir = self._workdir.path
        self.socket = self.dir / "d.sock"
        self.config_path = self.dir / "daemon.json"
        self.log_path = self.dir / "dockerd.log"
        self.cli_config = self.dir / "cli"
        self.containerd = Containerd(workdir=self.dir / "ctd")
        self._process: Process | None = None
        self._plugins_dir_existed = Path("/run/docker").exists()

    def daemon_config(self) -> dict[str, object]:
        d = self.dir
        return {
            "storage-driver": "vfs",
            "iptables": False,
            "ip6tables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "data-root": str(d / "root"),
            "exec-root": str(d / "x"),
            "pidfile": str(d / "d.pid"),
            "hosts": [f"unix://{self.socket}"],
            "containerd": str(self.containerd.address),
            "registry-mirrors": self.registry_mirrors,
            "deprecated-key-path": str(d / "key.json"),
            "debug": True,
        }

    def start(self) -> None:
        self.containerd.dir.mkdir()
        self.containerd.start()
        self.cli_config.mkdir()
        self.config_path.write_text(json.dumps(self.daemon_config(), indent=2))
        self._process = Process(
            "dockerd",
            ["dockerd", "--config-file", str(self.config_path)],
            self.log_path,
            base_env(),
        )
        self._process.wait_ready(self._answers)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            probe = self.docker("version", "--format", "{{.Server.Version}}", timeout=PROBE_TIMEOUT)
        except AssertionError:
            return False
        return probe.returncode == 0

    def docker(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, stdin: str | None = None
    ) -> Result:
        """The docker CLI against this daemon only, with a private, empty CLI config
        (`stdin`: text to feed it, as for `docker login --password-stdin`)."""
        env = base_env(
            DOCKER_HOST=f"unix://{self.socket}",
            DOCKER_CONFIG=str(self.cli_config),
            HOME=str(self.dir),
        )
        return run([DOCKER_CLI, *args], env=env, timeout=timeout, stdin=stdin)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        self.containerd.close()
        if not self._plugins_dir_existed:
            for leftover in (Path("/run/docker/plugins"), Path("/run/docker")):
                with contextlib.suppress(OSError):  # not empty: someone else's, keep it
                    leftover.rmdir()
        self._workdir.remove()
