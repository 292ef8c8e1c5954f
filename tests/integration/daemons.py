"""Real container clients, each started privately (in well under a second, so tests use one
per test) and always cleaned up.

    with Containerd() as ctd:
        ctd.ctr("images", "pull", "--hosts-dir", str(ctd.hosts_dir(mirror.url)), ref).check()

    with DockerDaemon([mirror.url]) as dockerd:
        dockerd.docker("pull", "alpine:3.19").check()

    with Podman(mirror.host) as podman:
        podman.podman("pull", "docker.io/library/alpine:3.19").check()

Everything lives in one short directory under /tmp (sockets must stay under the 108-byte
`sun_path` limit, podman's runroot under 50 characters), logs go to files there, every
subprocess is bounded by a timeout, and leaving the `with` block stops the daemon (SIGTERM,
SIGKILL to its process group after a bounded wait), unmounts whatever is still mounted below
its directory (dockerd bind-mounts its data-root onto itself; snapshotters mount while
unpacking) and removes the directory.

Nothing here uses the network beyond loopback and unix sockets: no bridge, no iptables, no
CNI. The host's own configuration (/etc/docker, /etc/containerd, /etc/containers, ~/.docker)
is neither used nor written. Two host paths cannot be redirected: dockerd's
/run/docker/plugins (removed again, see `DockerDaemon`) and podman's blob-info cache in
/var/lib/containers/cache (see `Podman`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from testkit.waiting import WaitTimeout, wait_until_sync

START_TIMEOUT = 60.0  # until the daemon answers its CLI
STOP_TIMEOUT = 15.0  # from SIGTERM to SIGKILL
COMMAND_TIMEOUT = 180.0  # any one CLI command (a pull of the 100 MB image included)
PROBE_TIMEOUT = 5.0  # one readiness probe
LOG_TAIL_LINES = 40

# Debian's CLI, which matches Debian's dockerd (another `docker` may come first on PATH).
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"

_MNT_DETACH = 2
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# One access-log line of the mirror (the text format of `mirror.server.middleware`), e.g.
# `mirror.access: 127.0.0.1 "GET /v2/library/alpine/manifests/3.19?ns=docker.io" 200 9B 0.4ms
# cache=hit upstream=docker.io id=46f2535b435e4bc3`
_ACCESS_LINE = re.compile(
    r'mirror\.access: \S+ "(?P<method>[A-Z]+) (?P<target>\S+)" (?P<status>\d{3}) '
)


class DaemonError(RuntimeError):
    """A daemon did not start (the message carries its log tail) or did not stop."""


@dataclass(frozen=True)
class Result:
    """One finished CLI command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """stdout and stderr together, for assertions on what the user would see."""
        return self.stdout + self.stderr

    def check(self) -> Result:
        """This result, or an AssertionError showing the command and everything it printed."""
        if self.returncode != 0:
            raise AssertionError(f"{self.describe()} failed")
        return self

    def describe(self) -> str:
        return (
            f"`{' '.join(self.args)}` exited {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
    stdin: str | None = None,
) -> Result:
    """Run a command to completion (`stdin`: text to feed it, else no input); past `timeout`
    its whole process group is killed and the test fails with what it printed so far."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # a timeout kills helpers it spawned too
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            proc.kill()
            out, err = "", ""
        raise AssertionError(
            f"`{' '.join(args)}` did not finish in {timeout} s\n--- stdout\n{out}--- stderr\n{err}"
        ) from None
    return Result(tuple(args), proc.returncode, out, err, time.monotonic() - started)


@dataclass(frozen=True)
class MirrorRequest:
    """One request in the mirror's access log."""

    method: str
    path: str
    query: str  # the raw query string, "" if none
    status: int


def mirror_requests(log: str, path_contains: str = "") -> list[MirrorRequest]:
    """The requests in the mirror's log text (`MirrorServer.stderr`), oldest first; only those
    whose path contains `path_contains`, if given."""
    found = []
    for match in _ACCESS_LINE.finditer(log):
        path, _, query = match["target"].partition("?")
        if path_contains in path:
            found.append(MirrorRequest(match["method"], path, query, int(match["status"])))
    return found


def host_platform() -> str:
    """This machine as an OCI platform ("linux/amd64"), which clients pull by default."""
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return f"linux/{arch}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ("" if there is none yet)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first (so they can be unmounted in order)."""
    found: list[Path] = []
    prefix = str(directory).rstrip("/")
    with Path("/proc/self/mountinfo").open() as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
            point = line.split(" ")[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(directory: Path) -> list[Path]:
    """Lazily unmount everything at or below `directory`; returns what is still mounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(3):  # a mount may be stacked on another at the same point
        points = mounts_under(directory)
        if not points:
            return []
        for point in points:
            libc.umount2(str(point).encode(), _MNT_DETACH)
    return mounts_under(directory)


class _Daemon:
    """A context manager over `start()` / `close()`: closed even when starting fails half
    way, so nothing is left running or mounted."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Workdir:
    """A short private directory under /tmp, removed at the end unless something there is
    still mounted (removing through a mount could delete what the mount points at)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))

    def remove(self) -> None:
        left = unmount_all_under(self.path)
        if left:
            warnings.warn(
                f"left {self.path} in place: still mounted: {', '.join(map(str, left))}",
                stacklevel=2,
            )
            return
        shutil.rmtree(self.path, ignore_errors=True)


class _Process:
    """A long-running daemon with its output in a log file, in its own process group."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str]):
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Poll `probe` until it is true; fail with the log tail if the daemon exits first or
        the deadline passes."""

        def started() -> bool:
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"{self.name} exited with {self.proc.returncode} while starting\n"
                    f"{' '.join(self.args)}\n--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
                )
            return probe()

        try:
            wait_until_sync(started, within=timeout, message=f"{self.name} is ready", interval=0.2)
        except WaitTimeout as exc:
            raise DaemonError(
                f"{self.name} did not become ready within {timeout} s\n"
                f"{' '.join(self.args)}\n--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
            ) from exc

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL to its whole process group if it is still
        running (only then is the group id certainly still ours); the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5.0)
        self._log.close()
        return self.proc.returncode


def _write_lines(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _base_env(**extra: str) -> dict[str, str]:
    """A minimal environment: no proxy settings (everything here is loopback) and none of the
    developer's client settings (DOCKER_HOST, CONTAINER_HOST, REGISTRY_AUTH_FILE, ...)."""
    env = {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- containerd


class Containerd(_Daemon):
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
        self._own_workdir: _Workdir | None = None
        if workdir is None:
            self._own_workdir = _Workdir("mi-ctd-")
            workdir = self._own_workdir.path
        base = self.dir = workdir
        self.address = base / "c.sock"
        self.config_path = base / "config.toml"
        self.log_path = base / "containerd.log"
        self.snapshotter = "overlayfs"
        self._process: _Process | None = None

    def write_config(self) -> None:
        d = self.dir
        disabled = [
            "io.containerd.grpc.v1.cri",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ]
        _write_lines(
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
        self._process = _Process(
            "containerd",
            ["containerd", "--config", str(self.config_path)],
            self.log_path,
            _base_env(),
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
            env=_base_env(),
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
        _write_lines(
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


# --------------------------------------------------------------------------- Docker Engine


class DockerDaemon(_Daemon):
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
        self._workdir = _Workdir("mi-dkd-")
        self.dir = self._workdir.path
        self.socket = self.dir / "d.sock"
        self.config_path = self.dir / "daemon.json"
        self.log_path = self.dir / "dockerd.log"
        self.cli_config = self.dir / "cli"
        self.containerd = Containerd(workdir=self.dir / "ctd")
        self._process: _Process | None = None
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
        self._process = _Process(
            "dockerd",
            ["dockerd", "--config-file", str(self.config_path)],
            self.log_path,
            _base_env(),
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
        env = _base_env(
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


# --------------------------------------------------------------------------- podman


class Podman(_Daemon):
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
        self._workdir = _Workdir("mi-pod-")
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
        _write_lines(
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
        _write_lines(
            self.dir / "storage.conf",
            "[storage]",
            'driver = "vfs"',
            f'graphroot = "{self.root}"',
            f'runroot = "{self.runroot}"',
        )
        _write_lines(
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
        return _base_env(
            HOME=str(self.dir / "home"),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_STORAGE_CONF=str(self.dir / "storage.conf"),
            CONTAINERS_CONF=str(self.dir / "containers.conf"),
            REGISTRY_AUTH_FILE=str(self.dir / "auth.json"),
        )

    def podman(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        """`podman` with private storage and configuration. Pulls get `--signature-policy`
        added (it is an option of `pull`, not a global one)."""
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
        )

    def close(self) -> None:
        # podman leaves no process behind after a pull; its storage may still hold mounts
        # (vfs does not mount, but be safe), which _Workdir.remove() unmounts first.
        self._workdir.remove()
