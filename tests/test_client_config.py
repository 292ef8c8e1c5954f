"""`mirror client-config docker|containerd|podman`: client files that route every configured
registry through the mirror, each of which parses, plus the checked-in examples in
deploy/clients/ (regenerated here, so they cannot drift)."""

from __future__ import annotations

import json
import socket
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mirror import clientconfig, config
from mirror.clientconfig import ClientConfigError, parse_mirror_url
from testkit.tls import make_private_ca
from tests.runcli import run_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CLIENTS = REPO_ROOT / "deploy" / "clients"
EXAMPLE_URL = "http://mirror.example.internal:5000"
# Built-ins, plus a private registry with a port (reached at an internal address), ghcr.io
# moved to an internal address, and quay.io switched off.
EXTRA_UPSTREAMS = """
[[upstream]]
host = "registry.example.com:5000"
url = "http://10.0.0.7:5000"

[[upstream]]
host = "ghcr.io"
url = "http://10.0.0.8:8080"

[[upstream]]
host = "quay.io"
enabled = false
"""
EXTRA_HOSTS = [h for h in config.BUILTIN_UPSTREAMS if h != "quay.io"] + [
    "registry.example.com:5000"
]


def client_config(client: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`mirror client-config CLIENT --mirror-url EXAMPLE_URL ARGS`."""
    return run_cli("client-config", client, "--mirror-url", EXAMPLE_URL, *args, cwd=cwd)


def load(tmp_path: Path, toml: str = "") -> config.Config:
    file = tmp_path / "mirror.toml"
    file.write_text(toml)
    return config.load(config_file=file, environ={}).config


def generate(client: str, cfg: config.Config, url: str = EXAMPLE_URL) -> clientconfig.ClientFiles:
    return clientconfig.generate(client, cfg, parse_mirror_url(url))


def only_file(files: clientconfig.ClientFiles) -> str:
    assert len(files.files) == 1, files.files
    return next(iter(files.files.values()))


# --------------------------------------------------------------------------- docker


def test_docker_prints_a_daemon_json_fragment_with_the_mirror(tmp_path: Path) -> None:
    result = client_config("docker", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "registry-mirrors": [EXAMPLE_URL],
        "insecure-registries": ["mirror.example.internal:5000"],
    }
    # stderr says how to reach the other registries, which Docker never mirrors.
    assert "docker pull mirror.example.internal:5000/ghcr.io/org/app:tag" in result.stderr
    for host in config.BUILTIN_UPSTREAMS:
        if host != "docker.io":
            assert host in result.stderr


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("http://mirror.example.internal:5000", ["mirror.example.internal:5000"]),
        ("http://10.1.2.3", ["10.1.2.3"]),
        ("https://mirror.example.internal", None),
        ("https://mirror.example.internal:8443", None),
        ("http://127.0.0.1:5000", None),
        ("http://127.8.9.10:5000", None),
        ("http://localhost:5000", None),
        ("http://[::1]:5000", None),
    ],
)
def test_docker_lists_the_mirror_as_insecure_only_for_plain_http_off_loopback(
    tmp_path: Path, url: str, insecure: list[str] | None
) -> None:
    daemon = json.loads(only_file(generate("docker", load(tmp_path), url)))

    assert daemon["registry-mirrors"] == [url]
    assert daemon.get("insecure-registries") == insecure


def test_docker_without_docker_io_served_writes_no_registry_mirrors(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'builtin_upstreams = false\n[[upstream]]\nhost = "ghcr.io"\n')

    files = generate("docker", cfg)

    assert "registry-mirrors" not in json.loads(only_file(files))
    assert any("does not serve docker.io" in note for note in files.notes)


def test_docker_output_dir_gets_daemon_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = client_config("docker", "--output-dir", str(out), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out / 'daemon.json'}\n"
    assert json.loads((out / "daemon.json").read_text())["registry-mirrors"] == [EXAMPLE_URL]


# --------------------------------------------------------------------------- containerd


def test_containerd_writes_one_hosts_toml_per_configured_registry(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(EXTRA_UPSTREAMS)
    out = tmp_path / "certs.d"

    result = client_config("containerd", "--output-dir", str(out), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{host}/hosts.toml" for host in EXTRA_HOSTS)
    assert not (out / "quay.io").exists()  # disabled: no file
    for host in EXTRA_HOSTS:
        assert f"wrote {out / host / 'hosts.toml'}" in result.stdout.splitlines()
        hosts = tomllib.loads((out / host / "hosts.toml").read_text())
        assert hosts == {
            "server": expected_server(host),
            "host": {EXAMPLE_URL: {"capabilities": ["pull", "resolve"]}},
        }


def expected_server(host: str) -> str:
    """The registry's own public URL, never the internal upstream `url`."""
    return "https://registry-1.docker.io" if host == "docker.io" else f"https://{host}"


def test_containerd_stdout_names_each_files_path(tmp_path: Path) -> None:
    result = client_config("containerd", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    files = split_by_path_comments(result.stdout)
    assert list(files) == [
        f"/etc/containerd/certs.d/{host}/hosts.toml" for host in config.BUILTIN_UPSTREAMS
    ]
    for path, text in files.items():
        host = path.split("/")[-2]
        parsed = tomllib.loads(text)
        assert parsed["server"] == expected_server(host)
        assert parsed["host"][EXAMPLE_URL]["capabilities"] == ["pull", "resolve"]


def split_by_path_comments(stdout: str) -> dict[str, str]:
    files: dict[str, str] = {}
    current = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("# /"):
            current = line[2:].strip()
            files[current] = ""
        else:
            assert current is not None, f"content before the first path comment: {line!r}"
            files[current] += line
    return files


def test_containerd_server_is_the_upstream_url_only_when_it_is_that_registry(
    tmp_path: Path,
) -> None:
    cfg = load(
        tmp_path,
        'builtin_upstreams = false\n[[upstream]]\nhost = "registry.lab:5000"\n'
        'url = "http://registry.lab:5000"\n',
    )

    files = generate("containerd", cfg, "https://mirror.example.internal")

    hosts = tomllib.loads(files.files["registry.lab:5000/hosts.toml"])
    assert hosts["server"] == "http://registry.lab:5000"  # plain HTTP, as the registry is
    assert list(hosts["host"]) == ["https://mirror.example.internal"]


# --------------------------------------------------------------------------- podman


def registries(text: str) -> dict[str, dict[str, Any]]:
    """The parsed registries.conf's [[registry]] tables by prefix."""
    parsed = tomllib.loads(text)
    assert set(parsed) == {"registry"}, parsed  # no global settings are touched
    return {entry["prefix"]: entry for entry in parsed["registry"]}


def test_podman_mirrors_each_registry_by_path_prefix(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(EXTRA_UPSTREAMS)
    out = tmp_path / "out"

    result = client_config("podman", "--output-dir", str(out), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out / 'registries.conf'}\n"
    entries = registries((out / "registries.conf").read_text())
    path_prefixable = [h for h in EXTRA_HOSTS if ":" not in h]
    assert list(entries) == path_prefixable
    for host, entry in entries.items():
        assert entry == {
            "prefix": host,
            "location": host,
            "mirror": [{"location": f"mirror.example.internal:5000/{host}", "insecure": True}],
        }
    # A host with a port cannot be a path component of a mirror location (containers/image
    # then fails every pull from that registry), so it is left out, and stderr says so.
    assert "registry.example.com:5000: left out" in result.stderr


def test_podman_mirror_over_https_is_not_insecure(tmp_path: Path) -> None:
    entries = registries(only_file(generate("podman", load(tmp_path), "https://m.example.com")))

    assert entries["ghcr.io"]["mirror"] == [{"location": "m.example.com/ghcr.io"}]


def test_podman_location_spells_out_the_port_of_a_single_label_host(tmp_path: Path) -> None:
    # `mirror/ghcr.io` would name a Docker Hub repository; `mirror:80/ghcr.io` a host.
    entries = registries(only_file(generate("podman", load(tmp_path), "http://mirror")))

    assert entries["ghcr.io"]["mirror"][0]["location"] == "mirror:80/ghcr.io"


def test_podman_stdout_is_the_registries_conf(tmp_path: Path) -> None:
    result = client_config("podman", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert list(registries(result.stdout)) == list(config.BUILTIN_UPSTREAMS)


# --------------------------------------------------------------------------- the mirror URL


def test_default_mirror_url_is_this_host_at_the_listen_port(tmp_path: Path) -> None:
    result = run_cli("client-config", "docker", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    expected = f"http://{socket.gethostname().lower()}:5000"
    assert json.loads(result.stdout)["registry-mirrors"] == [expected]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:5000", "http://buildhost:5000"),
        ("[::]:6000", "http://buildhost:6000"),
        ("10.0.0.5:5000", "http://10.0.0.5:5000"),  # only that address is served
        ("127.0.0.1:7000", "http://127.0.0.1:7000"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_default_mirror_url_follows_the_listen_address(
    tmp_path: Path, listen: str, expected: str
) -> None:
    cfg = load(tmp_path, f'listen = "{listen}"\n')

    assert clientconfig.default_mirror_url(cfg, hostname="BuildHost") == expected
    parse_mirror_url(expected)  # and it is usable as is


@pytest.mark.parametrize(
    ("tls_listen", "expected"),
    [("", "https://buildhost:5000"), ("0.0.0.0:5443", "https://buildhost:5443")],
)
def test_with_tls_the_default_mirror_url_is_its_https_listener(
    tmp_path: Path, tls_listen: str, expected: str
) -> None:
    ca = make_private_ca(tmp_path / "ca")
    cfg = load(
        tmp_path,
        f'tls_cert = "{ca.cert_file}"\ntls_key = "{ca.key_file}"\ntls_listen = "{tls_listen}"\n',
    )
    assert clientconfig.default_mirror_url(cfg, hostname="BuildHost") == expected
    docker = clientconfig.generate("docker", cfg, parse_mirror_url(expected))
    assert "insecure-registries" not in json.loads(docker.files["daemon.json"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://mirror:5000", "expected http://HOST[:PORT]"),
        ("mirror:5000", "expected http://HOST[:PORT]"),
        ("http://mirror:5000/v2", "drop the path"),
        ("http://mirror:5000?x=1", "drop the path"),
        ("http://user:secret@mirror:5000", "must not carry credentials"),
        ("http://mirror:99999", "bad port"),
        ("http://mir_ror:5000", "not a valid host name"),
    ],
)
def test_bad_mirror_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ClientConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_mirror_url(url)


def test_bad_mirror_url_is_a_clean_exit_2(tmp_path: Path) -> None:
    result = run_cli(
        "client-config", "containerd", "--mirror-url", "http://mirror:5000/path", cwd=tmp_path
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("mirror: --mirror-url: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_bad_config_is_a_clean_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstream]]\nhost = "not a host"\n')

    result = run_cli("client-config", "podman", "--config", str(bad), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("mirror: configuration error: upstream 1")
    assert len(result.stderr.splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------- deploy/clients


def test_checked_in_examples_are_what_the_command_generates(tmp_path: Path) -> None:
    """deploy/clients/ holds the output for the built-in registries and EXAMPLE_URL; if this
    fails, regenerate with the commands in deploy/clients/README.md."""
    out = tmp_path / "clients"
    for client, subdir in [
        ("docker", "docker"),
        ("containerd", "containerd/certs.d"),
        ("podman", "podman"),
    ]:
        result = client_config(client, "--output-dir", str(out / subdir), cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    generated = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    checked_in = {
        str(p.relative_to(DEPLOY_CLIENTS)): p.read_text()
        for p in DEPLOY_CLIENTS.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert sorted(checked_in) == sorted(generated)
    for path, text in generated.items():
        assert checked_in[path] == text, f"deploy/clients/{path} differs from the command's output"
    readme = (DEPLOY_CLIENTS / "README.md").read_text()
    assert f"--mirror-url {EXAMPLE_URL}" in readme


def test_a_mirror_that_requires_a_login_says_so(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$2b$04$" + "a" * 53 + "\n")
    cfg = load(tmp_path, f'htpasswd = "{users}"\n')
    for client, command in (("docker", "docker login"), ("podman", "podman login")):
        files = clientconfig.generate(client, cfg, parse_mirror_url(EXAMPLE_URL))
        assert f"{command} mirror.example.internal:5000" in files.notes[-1]
    assert not any(
        "login" in note
        for note in clientconfig.generate(
            "docker", load(tmp_path, ""), parse_mirror_url(EXAMPLE_URL)
        ).notes
    )


@pytest.mark.parametrize(
    ("client", "how"),
    [
        (
            "docker",
            "docker login mirror.example.internal:5000; docker tag app "
            "mirror.example.internal:5000/local/app:1 && docker push "
            "mirror.example.internal:5000/local/app:1",
        ),
        (
            "containerd",
            "ctr images push --user USER --plain-http mirror.example.internal:5000/local/app:1",
        ),
        (
            "podman",
            "podman login --tls-verify=false mirror.example.internal:5000; podman push "
            "--tls-verify=false mirror.example.internal:5000/local/app:1",
        ),
    ],
)
def test_a_mirror_with_hosted_repositories_says_how_to_push(
    tmp_path: Path, client: str, how: str
) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$2b$04$" + "a" * 53 + "\n")
    cfg = load(tmp_path, f'hosted = ["local/*", "acme/*"]\nhtpasswd = "{users}"\n')

    (note,) = [n for n in generate(client, cfg).notes if n.startswith("push")]

    assert note == f"push your own images to the hosted repositories (local/*, acme/*): {how}"


def test_pushing_without_htpasswd_is_said_to_need_one(tmp_path: Path) -> None:
    hosting = generate("docker", load(tmp_path, 'hosted = ["local/*"]\n'))
    plain = generate("docker", load(tmp_path, ""))

    assert hosting.notes[-1].endswith(
        "(this mirror has no htpasswd: anonymous clients never push, so set one first)"
    )
    assert not any("push" in note for note in plain.notes)
