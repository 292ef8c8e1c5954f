"""A private containerd, started per test in well under a second and always cleaned up.

    with Containerd() as ctd:
        ctd.ctr("images", "pull", "--hosts-dir", str(ctd.hosts_dir(mirror.url)), ref).check()

Its sockets live in a short directory under /tmp (under the 108-byte `sun_path` limit); the
snapshotters mount while unpacking, and closing unmounts whatever is left.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.processes import (
    COMMAND_TIMEOUT,
    PROBE_TIMEOUT,
    Daemon,
    Process,
    Result,
    Workdir,
    base_env,
    run,
    write_lines,
)


class Containerd(Daemon):
    """A private containerd 1.6: its own root, state, sockets and config; no CRI.

    Config (version 2), as found to work here:
    - `root`, `state`, `grpc.address`, `ttrpc.address` inside the work dir; no debug socket,
      no metrics listener.
    - `disabled_plugins`: the CRI plugin (not needed, and it would want CNI and /etc paths),
      and the snapshotters that cannot work on this ext4 root (aufs needs modprobe, btrfs/zfs
      their filesystem, devmapper a pool) so the log stays free of their failures.
    - `plugins."io.containerd.internal.v1.opt".path`: otherwise containerd creates
      /opt/containerd/{bin,lib} on the host.
    - overlayfs is the default snapshotter and works (ext4 backing, kernel overlay);
      `snapshotter` falls back to `native` if the overlayfs plugin did not load.
    """

    def __init__(self, *, workdir: Path | None = None) -> None:
        self._own_workdir: Workdir | None = None
        if workdir is None:
            self._own_workdir = Workdir("mi-ctd-")
            workdir = self._own_workdir.path
        base = self.dir = workdir
        self.address = base / "c.sock"
        self.config_path = base / "config.toml"
        self.log_path = base / "containerd.log"
        self.snapshotter = "overlayfs"
        self._process: Process | None = None

    def write_config(self) -> None:
        d = self.dir
        disabled = [
            "io.containerd.grpc.v1.cri",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ]
        write_lines(
            self.config_path,
            "version = 2",
            f'root = "{d / "root"}"',
            f'state = "{d / "state"}"',
            f"disabled_plugins = {json.dumps(disabled)}",
            "[grpc]",
            f'  address = "{self.address}"',
            "[ttrpc]",
            f'  address = "{self.address}.ttrpc"',
            "[debug]",
            '  address = ""',
            '  level = "debug"',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{d / "opt"}"',
        )

    def start(self) -> None:
        self.write_config()
        self._process = Process(
            "containerd",
            ["containerd", "--config", str(self.config_path)],
            self.log_path,
            base_env(),
        )
        self._process.wait_ready(self._answers)
        plugins = self.ctr("plugins", "ls", timeout=PROBE_TIMEOUT * 2).check().stdout
        overlay_ok = any(
            line.split()[1:2] == ["overlayfs"] and line.split()[-1] == "ok"
            for line in plugins.splitlines()
        )
        self.snapshotter = "overlayfs" if overlay_ok else "native"

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        try:
            return self.ctr("version", timeout=PROBE_TIMEOUT).returncode == 0
        except AssertionError:  # the probe itself timed out
            return False

    def ctr(
        self, *args: str, namespace: str = "default", timeout: float = COMMAND_TIMEOUT
    ) -> Result:
        """`ctr --address <private socket> --namespace <ns> ARGS`."""
        return run(
            ["ctr", "--address", str(self.address), "--namespace", namespace, *args],
            env=base_env(),
            timeout=timeout,
        )

    def hosts_dir(
        self,
        mirror_url: str,
        *,
        registry: str = "docker.io",
        server: str = "https://registry-1.docker.io",
    ) -> Path:
        """A `--hosts-dir` directory whose `<registry>/hosts.toml` puts the mirror first.

        The `http://` scheme in the host key is all containerd needs for plain HTTP to that
        host (no `--plain-http`, which would apply to `server` as well). `server` stays the
        real Docker Hub, unreachable here: a pull that succeeds came through the mirror."""
        directory = self.dir / "hosts"
        (directory / registry).mkdir(parents=True, exist_ok=True)
        write_lines(
            directory / registry / "hosts.toml",
            f'server = "{server}"',
            "",
            f'[host."{mirror_url}"]',
            '  capabilities = ["pull", "resolve"]',
        )
        return directory

    def close(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._own_workdir is not None:
            self._own_workdir.remove()
