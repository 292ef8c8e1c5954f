"""Configuration: defaults < mirror.toml < MIRROR_* < flags, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror import config
from mirror.config import ConfigError
from tests.runcli import run_cli


def test_defaults_serve_the_public_registries_docker_hub_with_the_library_prefix(
    tmp_path: Path,
) -> None:
    loaded = config.load(config_file=None, environ={})
    cfg = loaded.config
    assert str(cfg.serving.listen) == "0.0.0.0:5000"
    assert cfg.storage.redis_url is None
    assert [u.host for u in cfg.registries.upstreams] == list(config.BUILTIN_UPSTREAMS)
    hub = cfg.registries.upstream("docker.io")
    assert hub is not None
    assert hub.url == "https://registry-1.docker.io"
    assert hub.library_prefix is True
    assert hub.username is None
    ghcr = cfg.registries.upstream("ghcr.io")
    assert ghcr is not None
    assert (ghcr.url, ghcr.library_prefix) == ("https://ghcr.io", False)


def test_layers_override_in_order(tmp_path: Path) -> None:
    file = tmp_path / "m.toml"
    file.write_text('listen = "127.0.0.1:6000"\nread_timeout = 7\nlog_level = "debug"\n')
    loaded = config.load(
        config_file=file,
        environ={"MIRROR_READ_TIMEOUT": "9", "MIRROR_LOG_LEVEL": "warning"},
        overrides={"log_level": "error", "listen": None},
    )
    assert str(loaded.config.serving.listen) == "127.0.0.1:6000"
    assert loaded.config.registries.read_timeout == 9.0
    assert loaded.config.logging.log_level == "error"
    assert loaded.sources["listen"] == str(file)
    assert loaded.sources["read_timeout"] == "MIRROR_READ_TIMEOUT"
    assert loaded.sources["log_level"] == "--log-level"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('listen = "nowhere"', "listen (from"),
        ("listen = 5000", "listen (from"),
        ('upstream = "ftp://x"', "upstream (from"),
        ('upstream = "https://u:p@x"', "credentials do not belong in the URL"),
        ("read_timeout = -1", "read_timeout (from"),
        ('builtin_upstreams = "maybe"', "builtin_upstreams (from"),
        ('redis_url = "http://x"', "redis_url (from"),
        ('colour = "blue"', "unknown key 'colour'"),
        ("listen = ", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "m.toml"
    file.write_text(content + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(config_file=file, environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="connect_timeout \\(from MIRROR_CONNECT_TIMEOUT\\)"):
        config.load(environ={"MIRROR_CONNECT_TIMEOUT": "soon"})


def test_bad_environment_value_of_upstream_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="upstream \\(from MIRROR_UPSTREAM\\)"):
        config.load(environ={"MIRROR_UPSTREAM": "[{not json"})


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(config_file=tmp_path / "absent.toml", environ={})


def test_shipped_mirror_toml_documents_every_key_and_loads() -> None:
    shipped = Path(__file__).parent.parent / "mirror.toml"
    text = shipped.read_text()
    for key in config.SETTINGS:
        assert f"\n{key} = " in text, f"mirror.toml does not document {key}"
    loaded = config.load(config_file=shipped, environ={})
    defaults = config.load(config_file=None, environ={}, overrides={})
    assert loaded.config == defaults.config


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(
        'redis_url = "redis://:hunter2@127.0.0.1:6379/0"\n'
        '[[upstream]]\nhost = "docker.io"\nusername = "bot"\npassword_env = "HUB_TOKEN"\n'
        "anonymous_clients_use_credentials = true\n"
    )
    result = run_cli("check-config", env={"HUB_TOKEN": "s3cret"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'username = "bot"' in result.stdout
    assert 'password = "********"  # from environment variable HUB_TOKEN' in result.stdout
    assert "s3cret" not in result.stdout
    assert "hunter2" not in result.stdout
    assert "mirror.toml" in result.stdout


def test_check_config_exits_non_zero_naming_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('data_dir = ""\n')
    result = run_cli("check-config", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "data_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_flag_value(tmp_path: Path) -> None:
    result = run_cli("serve", "--listen", "127.0.0.1:99999", cwd=tmp_path)
    assert result.returncode == 2
    assert "listen (from --listen): port 99999 is out of range" in result.stderr


def test_tag_rules_decide_freshness_first_match_wins(tmp_path: Path) -> None:
    file = tmp_path / "m.toml"
    file.write_text(
        "tag_ttl = 300\n"
        '[[tag_rules]]\nmatch = "*:latest"\nttl = 60\n'
        "[[tag_rules]]\ntag_regex = 'v?\\d+\\.\\d+\\.\\d+'\nimmutable = true\n"
        '[[tag_rules]]\nmatch = "library/*"\nttl = 600\n'
    )
    cfg = config.load(config_file=file, environ={}).config
    hub = "docker.io"
    assert cfg.tag_freshness(hub, "library/alpine", "latest") == config.Freshness(60, False)
    assert cfg.tag_freshness(hub, "team/app", "v1.2.3") == config.Freshness(300, True)
    assert cfg.tag_freshness(hub, "library/alpine", "3.19") == config.Freshness(600, False)
    assert cfg.tag_freshness(hub, "team/app", "edge") == config.Freshness(300, False)


def test_tag_rules_from_the_environment_are_json() -> None:
    cfg = config.load(environ={"MIRROR_TAG_RULES": '[{"match": "*:latest", "ttl": 5}]'}).config
    assert cfg.tag_freshness("docker.io", "a/b", "latest").ttl == 5


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[[tag_rules]]\nttl = 5\n", "rule 1: needs `match` or `tag_regex`"),
        ('[[tag_rules]]\nmatch = "*"\n', "rule 1: needs `ttl` or `immutable = true`"),
        ("[[tag_rules]]\ntag_regex = '('\nttl = 1\n", "rule 1: tag_regex is not a valid regex"),
        ('[[tag_rules]]\nmatch = "*"\nttl = -1\n', "rule 1: must not be negative"),
        ('[[tag_rules]]\nmatch = "*"\nttl = 1\ncolour = 2\n', "rule 1: unknown key 'colour'"),
    ],
)
def test_bad_tag_rules_name_the_rule(tmp_path: Path, rules: str, message: str) -> None:
    file = tmp_path / "m.toml"
    file.write_text(rules)
    with pytest.raises(ConfigError, match=re.escape(f"tag_rules (from {file}): {message}")):
        config.load(config_file=file, environ={})


def test_offline_and_tag_ttl_flags(tmp_path: Path) -> None:
    cfg = config.load(environ={}, overrides={"offline": True, "tag_ttl": "30"}).config
    assert cfg.freshness.offline is True
    assert cfg.freshness.tag_ttl == 30.0


# --- cluster ----------------------------------------------------------------------------------

CLUSTER_SECRET = "a-secret-of-the-cluster"


def test_an_advertised_replica_needs_the_cluster_secret() -> None:
    with pytest.raises(ConfigError, match=r"advertise_url .*needs cluster_secret"):
        config.load(overrides={"advertise_url": "http://10.0.0.5:5000"}, environ={})
    loaded = config.load(
        overrides={"advertise_url": "http://10.0.0.5:5000/"},
        environ={"MIRROR_CLUSTER_SECRET": CLUSTER_SECRET},
    )
    assert loaded.config.cluster.advertise_url == "http://10.0.0.5:5000"
    assert loaded.config.cluster.cluster_secret == CLUSTER_SECRET
    assert loaded.config.cluster.cluster_lease == 10.0


def test_a_short_cluster_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="cluster_secret \\(from MIRROR_CLUSTER_SECRET\\)"):
        config.load(environ={"MIRROR_CLUSTER_SECRET": "short"})


def test_the_cluster_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLUSTER_SECRET + "\n")
    settings = {"advertise_url": "http://10.0.0.5:5000", "cluster_secret_file": str(secret_file)}
    config.load(overrides=settings, environ={})

    secret_file.unlink()
    with pytest.raises(ConfigError, match="cluster_secret_file \\(from --cluster-secret-file\\)"):
        config.load(overrides=settings, environ={})
