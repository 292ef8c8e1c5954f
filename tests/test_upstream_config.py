"""Configuring several upstreams: `[[upstream]]` tables over the built-in public registries,
secrets kept out of the file, and errors that name the upstream and the key."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from mirror import config
from mirror.config import ConfigError, UpstreamSettings
from tests.runcli import run_cli


def load(tmp_path: Path, text: str, **kwargs: object) -> config.Config:
    file = tmp_path / "mirror.toml"
    file.write_text(text)
    environ = kwargs.pop("environ", {})
    assert isinstance(environ, dict)
    overrides = kwargs.pop("overrides", None)
    assert isinstance(overrides, dict | None)
    return config.load(config_file=file, environ=environ, overrides=overrides).config


def served(cfg: config.Config, host: str) -> UpstreamSettings:
    upstream = cfg.registries.upstream(host)
    assert upstream is not None, f"{host} is not served"
    return upstream


def test_a_table_adds_a_private_registry_next_to_the_built_in_ones(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[[upstream]]\nhost = "registry.example.com:5000"\nurl = "http://10.0.0.5:5000"\n',
    )
    private = served(cfg, "registry.example.com:5000")
    assert private.url == "http://10.0.0.5:5000"
    assert private.library_prefix is False
    assert private.source == str(tmp_path / "mirror.toml")
    assert served(cfg, "docker.io").url == "https://registry-1.docker.io"
    assert len(cfg.registries.upstreams) == len(config.BUILTIN_UPSTREAMS) + 1


def test_a_table_for_a_built_in_host_keeps_what_it_does_not_set(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[[upstream]]\nhost = "ghcr.io"\ntag_ttl = 30\n')
    ghcr = served(cfg, "ghcr.io")
    assert (ghcr.url, ghcr.tag_ttl) == ("https://ghcr.io", 30.0)


def test_the_url_of_a_host_without_a_built_in_default_is_https_host(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[[upstream]]\nhost = "harbor.corp.example"\n')
    assert served(cfg, "harbor.corp.example").url == "https://harbor.corp.example"


def test_docker_hub_aliases_mean_docker_io(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[[upstream]]\nhost = "index.docker.io"\nurl = "http://127.0.0.1:1"\n')
    assert served(cfg, "docker.io").url == "http://127.0.0.1:1"
    assert [u.host for u in cfg.registries.upstreams].count("docker.io") == 1


def test_enabled_false_stops_serving_a_registry(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[[upstream]]\nhost = "nvcr.io"\nenabled = false\n')
    assert cfg.registries.upstream("nvcr.io") is None
    assert cfg.registries.upstream("quay.io") is not None


def test_without_the_built_ins_only_the_tables_are_served(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'builtin_upstreams = false\n[[upstream]]\nhost = "ghcr.io"\n',
    )
    assert [u.host for u in cfg.registries.upstreams] == ["ghcr.io"]


def test_nothing_left_to_serve_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no registry left to serve"):
        load(tmp_path, "builtin_upstreams = false\n")


def test_the_upstream_flag_moves_only_docker_io(tmp_path: Path) -> None:
    text = (
        '[[upstream]]\nhost = "docker.io"\nurl = "https://hub-proxy.internal"\n'
        'username = "bot"\npassword = "pw"\nanonymous_clients_use_credentials = true\n'
        '[[upstream]]\nhost = "ghcr.io"\nurl = "https://ghcr-proxy.internal"\n'
    )
    cfg = load(tmp_path, text, overrides={"upstream": "http://127.0.0.1:5001"})
    hub = served(cfg, "docker.io")
    assert hub.url == "http://127.0.0.1:5001"
    assert hub.username == "bot"  # the rest of the table still applies
    assert hub.source == "--upstream"
    assert served(cfg, "ghcr.io").url == "https://ghcr-proxy.internal"


def test_a_bare_url_in_the_file_is_docker_io(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'upstream = "http://127.0.0.1:5001"\n')
    assert served(cfg, "docker.io").url == "http://127.0.0.1:5001"
    assert served(cfg, "docker.io").library_prefix is True


def test_tables_from_the_environment_are_json_and_replace_the_files(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[[upstream]]\nhost = "ghcr.io"\nenabled = false\n',
        environ={"MIRROR_UPSTREAM": '[{"host": "quay.io", "url": "http://127.0.0.1:7000"}]'},
    )
    assert served(cfg, "quay.io").url == "http://127.0.0.1:7000"
    assert cfg.registries.upstream("ghcr.io") is not None  # the file's tables no longer apply


def test_passwords_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "quay-password"
    secret.write_text("from-a-file\n")
    cfg = load(
        tmp_path,
        '[[upstream]]\nhost = "ghcr.io"\nusername = "bot"\npassword_env = "GHCR_TOKEN"\n'
        "anonymous_clients_use_credentials = true\n"
        f'[[upstream]]\nhost = "quay.io"\nusername = "robot"\npassword_file = "{secret}"\n'
        "anonymous_clients_use_credentials = true\n",
        environ={"GHCR_TOKEN": "from-the-env"},
    )
    ghcr, quay = served(cfg, "ghcr.io"), served(cfg, "quay.io")
    assert (ghcr.username, ghcr.password) == ("bot", "from-the-env")
    assert ghcr.password_source == "environment variable GHCR_TOKEN"
    assert (quay.username, quay.password) == ("robot", "from-a-file")
    assert "from-the-env" not in repr(ghcr)


def test_per_upstream_freshness_comes_before_the_global_rules(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'tag_ttl = 300\n[[tag_rules]]\nmatch = "*:latest"\nttl = 60\n'
        '[[upstream]]\nhost = "ghcr.io"\ntag_ttl = 30\n'
        '[[upstream.tag_rules]]\nmatch = "org/*:latest"\nttl = 5\n',
    )
    assert cfg.tag_freshness("ghcr.io", "org/app", "latest").ttl == 5
    assert cfg.tag_freshness("ghcr.io", "other/app", "latest").ttl == 60
    assert cfg.tag_freshness("ghcr.io", "other/app", "1.0").ttl == 30
    assert cfg.tag_freshness("docker.io", "library/alpine", "1.0").ttl == 300


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'host = "ghcr.io"\ncolour = "blue"',
            "upstream ghcr.io (from {file}): unknown key 'colour'",
        ),
        ('url = "https://x.example"', "upstream 1 (from {file}): needs `host`"),
        ('host = "not a host"', "upstream 1 (from {file}): host: 'not a host' is not"),
        ('host = "bitnami"', "upstream 1 (from {file}): host: 'bitnami' is not a registry host"),
        ('host = "ghcr.io"\nurl = "ftp://x"', "upstream ghcr.io (from {file}): url: expected"),
        (
            'host = "ghcr.io"\nusername = "bot"',
            "upstream ghcr.io (from {file}): credentials need both `username` and one of",
        ),
        (
            'host = "ghcr.io"\npassword_env = "T"\nusername = "bot"',
            "upstream ghcr.io (from {file}): password_env: environment variable T is not set",
        ),
        (
            'host = "ghcr.io"\nusername = "b"\npassword = "p"\npassword_env = "T"',
            "upstream ghcr.io (from {file}): set only one of password, password_env",
        ),
        (
            'host = "ghcr.io"\nusername = "b"\npassword_file = "/nonexistent/pw"',
            "upstream ghcr.io (from {file}): password_file: cannot read /nonexistent/pw",
        ),
        (
            'host = "ghcr.io"\nca_file = "/nonexistent/ca.pem"',
            "upstream ghcr.io (from {file}): ca_file: /nonexistent/ca.pem is not a usable",
        ),
        (
            'host = "ghcr.io"\ninsecure = "sometimes"',
            "upstream ghcr.io (from {file}): insecure: expected true or false",
        ),
        (
            'host = "ghcr.io"\n[[upstream]]\nhost = "GHCR.io"',
            "upstream ghcr.io (from {file}): listed twice",
        ),
    ],
)
def test_bad_upstream_tables_name_the_upstream_and_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    file = tmp_path / "mirror.toml"
    with pytest.raises(ConfigError, match=re.escape(message.format(file=file))):
        load(tmp_path, f"[[upstream]]\n{table}\n")


def test_check_config_shows_every_upstream_and_masks_their_secrets(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(
        '[[upstream]]\nhost = "registry.example.com"\nusername = "robot"\n'
        'password_env = "EXAMPLE_TOKEN"\ntag_ttl = 30\n'
        "anonymous_clients_use_credentials = true\n"
    )
    result = run_cli("check-config", env={"EXAMPLE_TOKEN": "t0ps3cret"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "t0ps3cret" not in result.stdout
    # What it prints is a config file again (the masked password stands in for the secret).
    printed = tomllib.loads(result.stdout)
    hosts = [table["host"] for table in printed["upstream"]]
    assert hosts == [*config.BUILTIN_UPSTREAMS, "registry.example.com"]
    example = printed["upstream"][-1]
    assert example["username"] == "robot"
    assert example["password"] == "********"
    assert example["tag_ttl"] == 30.0
    assert example["anonymous_clients_use_credentials"] is True
    assert "# from environment variable EXAMPLE_TOKEN" in result.stdout


def test_serve_refuses_an_unset_password_variable_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(
        '[[upstream]]\nhost = "ghcr.io"\nusername = "bot"\npassword_env = "GHCR_TOKEN"\n'
    )
    result: subprocess.CompletedProcess[str] = run_cli("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "upstream ghcr.io" in result.stderr
    assert "GHCR_TOKEN is not set" in result.stderr
    assert "Traceback" not in result.stderr
