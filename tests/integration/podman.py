"""A private root podman: its own storage and configuration, no CNI, always cleaned up.

    with Podman(mirror.host) as podman:
        podman.podman("pull", "docker.io/library/alpine:3.19").check()

Its runroot must stay under 50 characters, hence a short directory under /tmp. The host's
/etc/containers is neither used nor written; the blob-info cache in /var/lib/containers/cache
cannot be redirected (see `Podman`).
"""

from __future__ import annotations

import json

from tests.integration.processes import (
    COMMAND_TIMEOUT,
    Daemon,
    DaemonError,
    Result,
    Workdir,
    base_env,
    run,
    write_lines,
)


class Podman(Daemon):
    """Root podman (4.3) with private storage and configuration; nothing runs between
    commands, so "starting" it is writing its configuration.

    - `--storage-driver vfs`, `--root`, `--runroot` (< 50 characters), `--tmpdir`: all in the
      work dir (plus the same in a `CONTAINERS_STORAGE_CONF`, so /etc/containers/storage.conf
      is not consulted). The blob-info cache goes under the root too.
    - `CONTAINERS_REGISTRIES_CONF`: only `docker.io`, whose mirror is `mirror_host`
      (`insecure = true`: plain HTTP). Short names are not resolved; tests pull
      fully qualified references.
    - `CONTAINERS_CONF`: cgroupfs, file events and file locks in the work dir (the default
      shm lock would create /dev/shm/libpod_lock).
    - `--signature-policy`: a private policy.json accepting anything (no host policy).
    - `HOME` and `REGISTRY_AUTH_FILE` (an empty auth file; it must exist) in the work dir:
      no credentials from the host.
    - `network_backend = "cni"` with its config dir in the work dir: the default, netavark,
      creates /run/containers/networks on the host even for a pull.

    With `insecure = true` podman first tries TLS to the mirror (the mirror logs that
    handshake as `"UNKNOWN / HTTP/1.0" 400`), then plain HTTP. It sends no `ns` parameter.

    Not redirectable: as root, containers/image keeps its blob-info cache (digest ->
    uncompressed-digest and location records, no image content) in
    /var/lib/containers/cache/blob-info-cache-v1.boltdb, whatever `--root` says; podman 4.3
    has no setting for it. skopeo shares that file. Storage here is always fresh, so the cache
    cannot make a pull skip the mirror.
    """

    def __init__(self, mirror_host: str) -> None:
        self.mirror_host = mirror_host
        self._workdir = Workdir("mi-pod-")
        self.dir = self._workdir.path
        self.root = self.dir / "root"
        self.runroot = self.dir / "run"
        self.tmpdir = self.dir / "tmp"
        self.registries_conf = self.dir / "registries.conf"
        self.policy = self.dir / "policy.json"

    def start(self) -> None:
        if len(str(self.runroot)) >= 50:
            raise DaemonError(f"podman runroot {self.runroot} is too long")
        for directory in (self.root, self.runroot, self.tmpdir, self.dir / "home"):
            directory.mkdir()
        write_lines(
            self.registries_conf,
            "unqualified-search-registries = []",
            'short-name-mode = "disabled"',
            "",
            "[[registry]]",
            'prefix = "docker.io"',
            'location = "docker.io"',
            "",
            "[[registry.mirror]]",
            f'location = "{self.mirror_host}"',
            "insecure = true",
        )
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        write_lines(
            self.dir / "storage.conf",
            "[storage]",
            'driver = "vfs"',
            f'graphroot = "{self.root}"',
            f'runroot = "{self.runroot}"',
        )
        write_lines(
            self.dir / "containers.conf",
            "[engine]",
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f'events_logfile_path = "{self.dir / "events.log"}"',
            'lock_type = "file"',
            f'tmp_dir = "{self.tmpdir}"',
            "[network]",
            'network_backend = "cni"',
            f'network_config_dir = "{self.dir / "networks"}"',
        )
        (self.dir / "auth.json").write_text('{"auths": {}}\n')
        self.podman("version", timeout=30).check()

    def env(self) -> dict[str, str]:
        return base_env(
            HOME=str(self.dir / "home"),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_STORAGE_CONF=str(self.dir / "storage.conf"),
            CONTAINERS_CONF=str(self.dir / "containers.conf"),
            REGISTRY_AUTH_FILE=str(self.dir / "auth.json"),
        )

    def podman(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, stdin: str | None = None
    ) -> Result:
        """`podman` with private storage and configuration (`stdin`: text to feed it, as for
        `podman login --password-stdin`). Pulls get `--signature-policy` added (it is an
        option of `pull`, not a global one)."""
        command = list(args)
        if command[:1] == ["pull"]:
            command[1:1] = ["--signature-policy", str(self.policy)]
        return run(
            [
                "podman",
                "--root",
                str(self.root),
                "--runroot",
                str(self.runroot),
                "--tmpdir",
                str(self.tmpdir),
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                *command,
            ],
            env=self.env(),
            timeout=timeout,
            stdin=stdin,
        )

    def close(self) -> None:
        # podman leaves no process behind after a pull; its storage may still hold mounts
        # (vfs does not mount, but be safe), which Workdir.remove() unmounts first.
        self._workdir.remove()
