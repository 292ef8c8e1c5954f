"""Client configuration for the mirror: what Docker, containerd and podman need to pull
every configured registry through it (`mirror client-config`).

Pure functions from a `Config` and the mirror's URL to file contents, so the output always
matches the registries this mirror actually serves. Each client names the registry in its
own way, and each file uses the routing that client can express:

- Docker Engine sends only docker.io pulls to `registry-mirrors` (no `ns`); other
  registries can only be pulled by path prefix (`docker pull mirror:5000/ghcr.io/org/app`).
- containerd gets one `hosts.toml` per registry and adds `?ns=<registry>` itself.
- podman (containers/image) sends no `ns`, so each registry's mirror location carries the
  registry as a path prefix (`mirror:5000/ghcr.io`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from mirror.config import DOCKER_HUB, DOCKER_HUB_URL, Config, UpstreamSettings
from mirror.reference import is_registry_host, looks_like_host

CLIENTS = ("docker", "containerd", "podman")
# Where each client reads the generated files (for messages and the printed paths).
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
CONTAINERD_CERTS_D = "/etc/containerd/certs.d"
PODMAN_DROP_IN = "/etc/containers/registries.conf.d/mirror.conf"
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class ClientConfigError(ValueError):
    """A mirror URL (or configuration) no client file can be made from."""


@dataclass(frozen=True)
class MirrorURL:
    """Where clients reach the mirror: `http(s)://host[:port]`, nothing else."""

    url: str  # normalized: lower-case scheme and host, no trailing slash
    scheme: str
    host: str  # as in a URL (IPv6 in brackets), without the port
    port: int  # explicit or the scheme's default

    @property
    def plain_http(self) -> bool:
        return self.scheme == "http"

    @property
    def netloc(self) -> str:
        """`host[:port]` as the URL has it (Docker's `insecure-registries` entry)."""
        return urlsplit(self.url).netloc

    @property
    def registry_host(self) -> str:
        """The mirror as the first component of an image reference. A bare `mirror` would
        read as a Docker Hub namespace (`mirror/ghcr.io` is a Hub repository), so such a
        host gets its port written out (`mirror:80`)."""
        netloc = self.netloc
        return netloc if looks_like_host(netloc) else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Docker accepts plain HTTP from loopback mirrors without `insecure-registries`."""
        name = self.host.strip("[]")
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def parse_mirror_url(text: str) -> MirrorURL:
    """`--mirror-url` checked the way clients will use it: the mirror serves `/v2/` at its
    root, so a path, query or credentials would produce files that cannot work."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ClientConfigError(f"expected http://HOST[:PORT] or https://HOST[:PORT], got {text!r}")
    if parts.username is not None or parts.password is not None:
        raise ClientConfigError("the mirror URL must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClientConfigError(
            f"the mirror serves the registry API at its root; drop the path from {text!r}"
        )
    try:
        explicit_port = parts.port
    except ValueError:
        raise ClientConfigError(f"bad port in {text!r}") from None
    hostname = parts.hostname.lower()
    host = f"[{hostname}]" if ":" in hostname else hostname
    port = explicit_port if explicit_port is not None else (80 if scheme == "http" else 443)
    if not is_registry_host(f"{host}:{port}"):
        raise ClientConfigError(f"{parts.hostname!r} is not a valid host name or address")
    netloc = host if explicit_port is None else f"{host}:{explicit_port}"
    return MirrorURL(url=f"{scheme}://{netloc}", scheme=scheme, host=host, port=port)


def default_mirror_url(cfg: Config, hostname: str | None = None) -> str:
    """`http(s)://<this machine>:<port>`: HTTPS on its TLS listener when TLS is configured
    (clients then need no insecure settings), else HTTP on `listen`; the host is the listen
    address if it is a specific one (clients can reach nothing else), else this machine's
    host name."""
    listen = (
        cfg.serving.tls_listen or cfg.serving.listen
        if cfg.serving.tls_cert is not None
        else cfg.serving.listen
    )
    listen_host = listen.host
    if listen_host in _WILDCARD_HOSTS:
        listen_host = hostname if hostname is not None else socket.gethostname()
    if ":" in listen_host:
        listen_host = f"[{listen_host}]"
    scheme = "https" if cfg.serving.tls_cert is not None else "http"
    return f"{scheme}://{listen_host.lower()}:{listen.port}"


@dataclass(frozen=True)
class ClientFiles:
    """What one client needs: `files` maps a path relative to the output directory to its
    content; `printed_paths` where each goes on a client machine; `notes` what the files
    cannot express (for stderr, so stdout stays a valid file)."""

    files: dict[str, str]
    printed_paths: dict[str, str]
    notes: tuple[str, ...] = ()


def generate(client: str, cfg: Config, mirror: MirrorURL) -> ClientFiles:
    """The files for `client` (one of CLIENTS), with a note on how to push when the mirror
    hosts repositories, and on logging in when it requires it (credentials belong in each
    client's own store, not in these files)."""
    if client == "docker":
        files = docker(cfg, mirror)
    elif client == "containerd":
        files = containerd(cfg, mirror)
    elif client == "podman":
        files = podman(cfg, mirror)
    else:
        raise ClientConfigError(f"unknown client {client!r}; expected one of {', '.join(CLIENTS)}")
    if cfg.hosting.hosted:
        files = replace(files, notes=(*files.notes, push_note(client, cfg, mirror)))
    if cfg.auth.htpasswd is None:
        return files
    login = {
        "docker": f"docker login {mirror.netloc}",
        "containerd": "ctr images pull --user USER:PASSWORD ..., or the CRI's registry auth "
        f"config for {mirror.netloc}",
        "podman": f"podman login {mirror.netloc}",
    }[client]
    note = f"this mirror requires a login (htpasswd is set): {login}"
    return replace(files, notes=(*files.notes, note))


def push_note(client: str, cfg: Config, mirror: MirrorURL) -> str:
    """How `client` pushes to the hosted repositories: straight to the mirror by its own
    name (pushes never go through registry mirrors), logged in, since anonymous clients
    never push."""
    patterns = cfg.hosting.hosted
    image = f"{mirror.registry_host}/{_example_repository(patterns[0])}:1"
    plain = mirror.plain_http  # docker: its insecure-registries entry covers pushes
    push = {
        "docker": f"docker tag app {image} && docker push {image}",
        "containerd": f"ctr images push --user USER {'--plain-http ' if plain else ''}{image}",
        "podman": f"podman push {'--tls-verify=false ' if plain else ''}{image}",
    }[client]
    login = {
        "docker": f"docker login {mirror.netloc}; ",
        "containerd": "",  # ctr takes the user on each command
        "podman": f"podman login {'--tls-verify=false ' if plain else ''}{mirror.netloc}; ",
    }[client]
    note = f"push your own images to the hosted repositories ({', '.join(patterns)}): {login}{push}"
    if cfg.auth.htpasswd is None:
        note += " (this mirror has no htpasswd: anonymous clients never push, so set one first)"
    return note


def _example_repository(pattern: str) -> str:
    """A repository name a `hosted` glob matches: `local/*` -> `local/app`."""
    return pattern.replace("*", "app").replace("?", "a").replace("[", "").replace("]", "")


# --------------------------------------------------------------------------- Docker


def docker(cfg: Config, mirror: MirrorURL) -> ClientFiles:
    """`daemon.json` keys: the mirror for docker.io, and the mirror as an insecure registry
    when it is plain HTTP off loopback (Docker refuses such a mirror otherwise)."""
    daemon: dict[str, list[str]] = {}
    notes: list[str] = []
    if cfg.registries.upstream(DOCKER_HUB) is not None:
        daemon["registry-mirrors"] = [mirror.url]
    else:
        notes.append(
            "this mirror does not serve docker.io, so no registry-mirrors entry is written "
            "(Docker uses registry-mirrors only for docker.io)"
        )
    if mirror.plain_http and not mirror.loopback:
        daemon["insecure-registries"] = [mirror.netloc]
    others = [u.host for u in cfg.registries.upstreams if u.host != DOCKER_HUB]
    by_prefix = [host for host in others if _path_prefix_ok(host)]
    if by_prefix:
        notes.append(
            "Docker sends only docker.io pulls to registry-mirrors. Pull the other registries "
            f"by path prefix, e.g. `docker pull {mirror.registry_host}/{by_prefix[0]}/org/app:tag` "
            f"(the image is then named that way locally); served: {', '.join(by_prefix)}"
        )
    if unreachable := [host for host in others if not _path_prefix_ok(host)]:
        notes.append(
            f"{', '.join(unreachable)}: not reachable from Docker through this mirror "
            "(a host with a port is not a valid path component of an image name)"
        )
    content = json.dumps(daemon, indent=2) + "\n"
    return ClientFiles(
        files={"daemon.json": content},
        printed_paths={"daemon.json": DOCKER_DAEMON_JSON},
        notes=(f"merge these keys into {DOCKER_DAEMON_JSON}, then restart dockerd", *notes),
    )


# --------------------------------------------------------------------------- containerd


def containerd(cfg: Config, mirror: MirrorURL) -> ClientFiles:
    """One `hosts.toml` per registry: the mirror as a pull/resolve host, the registry's own
    public URL as `server` (containerd's fallback when the mirror fails)."""
    files: dict[str, str] = {}
    printed: dict[str, str] = {}
    for upstream in cfg.registries.upstreams:
        path = f"{upstream.host}/hosts.toml"
        files[path] = "\n".join(
            [
                f"server = {_toml_str(public_url(upstream))}",
                "",
                f"[host.{_toml_str(mirror.url)}]",
                '  capabilities = ["pull", "resolve"]',
                "",
            ]
        )
        printed[path] = f"{CONTAINERD_CERTS_D}/{path}"
    return ClientFiles(
        files=files,
        printed_paths=printed,
        notes=(
            f"containerd reads {CONTAINERD_CERTS_D} when the CRI registry config_path points "
            'there (`config_path = "/etc/containerd/certs.d"`); ctr needs '
            f"`--hosts-dir {CONTAINERD_CERTS_D}`. No restart is needed.",
        ),
    )


def public_url(upstream: UpstreamSettings) -> str:
    """The registry's own address, never the mirror's internal `url` for it: containerd
    contacts it directly only when the mirror fails. The upstream URL counts only when it
    is that same host (then its scheme, e.g. plain HTTP, is the registry's)."""
    if upstream.host == DOCKER_HUB:
        return DOCKER_HUB_URL
    parts = urlsplit(upstream.url)
    if parts.netloc.lower() == upstream.host:
        return f"{parts.scheme}://{upstream.host}"
    return f"https://{upstream.host}"


# --------------------------------------------------------------------------- podman


def podman(cfg: Config, mirror: MirrorURL) -> ClientFiles:
    """containers-registries.conf(5) v2 entries: per registry, the mirror with the registry
    as a path prefix, because podman sends no `ns`. Mirrors are tried before `location`."""
    lines = [
        "# containers-registries.conf(5): each registry is pulled through the mirror first.",
        f"# Install as {PODMAN_DROP_IN}",
        "# (or merge into /etc/containers/registries.conf).",
    ]
    skipped = []
    for upstream in cfg.registries.upstreams:
        if not _path_prefix_ok(upstream.host):
            skipped.append(upstream.host)
            continue
        lines += [
            "",
            "[[registry]]",
            f"prefix = {_toml_str(upstream.host)}",
            f"location = {_toml_str(upstream.host)}",
            "",
            "[[registry.mirror]]",
            f"location = {_toml_str(f'{mirror.registry_host}/{upstream.host}')}",
        ]
        if mirror.plain_http:
            lines.append("insecure = true")
    notes = []
    if skipped:
        notes.append(
            f"{', '.join(skipped)}: left out; podman cannot use a mirror location with a "
            "host:port path component (every pull from that registry would fail with "
            '"invalid reference format")'
        )
    return ClientFiles(
        files={"registries.conf": "\n".join(lines) + "\n"},
        printed_paths={"registries.conf": PODMAN_DROP_IN},
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- helpers


def _path_prefix_ok(host: str) -> bool:
    """Whether `mirror/<host>/name` is a valid image reference: a port's ":" is not
    allowed in a path component."""
    return ":" not in host


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes)."""
    return json.dumps(text)
