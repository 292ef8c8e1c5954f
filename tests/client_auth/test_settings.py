"""Auth settings: htpasswd file errors, settings that need htpasswd, rules named when wrong, the
environment and the `serve --htpasswd` flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror import config
from mirror.config import ConfigError
from mirror.server import htpasswd
from tests.client_auth.helpers import hash_password

# --- configuration --------------------------------------------------------------------------


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> config.Config:
    file = tmp_path / "m.toml"
    file.write_text(text)
    loaded = config.load(config_file=file, environ=environ or {})
    htpasswd.check_file(loaded)  # what `mirror serve` does before serving
    return loaded.config


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("bob:$apr1$abc$defghijklmnopqrstuvw", "line 3: user 'bob' has an MD5 (apr1) hash"),
        ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "line 3: user 'bob' has a SHA-1 hash"),
        ("bob:plain", "line 3: user 'bob' has not a bcrypt hash"),
        ("bob", "line 3: expected USER:BCRYPT-HASH"),
        ("alice:" + "$2b$04$" + "a" * 53, "line 3: user 'alice' is listed twice"),
        ("bob:$2b$03$" + "a" * 53, "line 3: user 'bob': bcrypt cost must be 4 to 31"),
    ],
)
def test_htpasswd_errors_name_the_key_and_line(tmp_path: Path, entry: str, message: str) -> None:
    file = tmp_path / "users"
    file.write_text(f"# comment\nalice:{hash_password('a')}\n{entry}\n")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'htpasswd = "{file}"\n')
    assert str(caught.value).startswith(f"htpasswd (from {tmp_path / 'm.toml'}): {file} ")
    assert message in str(caught.value)


def test_htpasswd_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"htpasswd \(from MIRROR_HTPASSWD\): cannot read"):
        htpasswd.check_file(config.load(environ={"MIRROR_HTPASSWD": str(tmp_path / "absent")}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('auth_rules = [{users = ["*"]}]', "auth_rules (from"),
        ("metrics_auth = true", "metrics_auth (from"),
        ('auth_groups = {a = ["x"]}', "auth_groups (from"),
    ],
)
def test_auth_settings_without_htpasswd_are_an_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message) + ".*needs htpasswd"):
        load(tmp_path, text + "\n")


@pytest.mark.parametrize("access", ["push", "delete"])
def test_a_rule_granting_anonymous_clients_push_or_delete_is_an_error(
    tmp_path: Path, access: str
) -> None:
    rules = f'auth_rules = [{{users = ["*"]}}, {{users = ["*"], access = "{access}"}}]\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, rules)
    assert str(caught.value) == (
        f"auth_rules (from {tmp_path / 'm.toml'}): rule 2 grants {access}, but without "
        "htpasswd every client is anonymous, and anonymous clients never push or delete; "
        "set htpasswd"
    )


def test_rules_read_push_and_delete_each_implying_the_ones_before(
    tmp_path: Path, users_file: Path
) -> None:
    rules = (
        'auth_rules = [{users = ["a"], access = "delete"}, {users = ["b"], access = "push"}, '
        '{users = ["c"]}, {users = ["d"], access = "deny"}]\n'
    )
    file = tmp_path / "m.toml"
    file.write_text(f'htpasswd = "{users_file}"\n{rules}')
    loaded = config.load(config_file=file, environ={})
    assert [rule.actions for rule in loaded.config.auth.auth_rules] == [
        ("pull", "push", "delete"),
        ("pull", "push"),
        ("pull",),
        (),
    ]
    assert 'access = "push"}' in config.render(loaded)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('[{groups = ["nope"]}]', "rule 1: unknown group 'nope' (auth_groups: ops)"),
        (
            '[{users = ["*"]}, {users = ["a"], upstreams = ["ghcr.io"]}]',
            "rule 2: upstream 'ghcr.io' is not served",
        ),
        (
            '[{users = ["a"], access = "write"}]',
            'access must be one of "pull", "push", "delete", "deny", got \'write\'',
        ),
        ('[{repositories = ["x"]}]', "needs `users`"),
        ('[{users = ["a"], colour = "blue"}]', "unknown key 'colour'"),
        ('[{users = [""]}]', "users: expected a list of non-empty strings"),
        ('"nope"', "expected JSON"),
    ],
)
def test_bad_rules_are_named(tmp_path: Path, users_file: Path, rules: str, message: str) -> None:
    text = (
        f'htpasswd = "{users_file}"\nbuiltin_upstreams = false\n'
        'upstream = [{host = "docker.io"}]\nauth_groups = {ops = ["alice"]}\n'
        f"auth_rules = {rules}\n"
    )
    with pytest.raises(ConfigError, match=r"auth_rules \(from .*" + re.escape(message)):
        load(tmp_path, text)


def test_auth_settings_from_the_environment_and_check_config(
    tmp_path: Path, users_file: Path
) -> None:
    environ = {
        "MIRROR_HTPASSWD": str(users_file),
        "MIRROR_AUTH_GROUPS": '{"ops": ["alice"]}',
        "MIRROR_AUTH_RULES": '[{"groups": ["ops"], "upstreams": ["index.docker.io"]}]',
        "MIRROR_TOKEN_TTL": "120",
        "MIRROR_TOKEN_SECRET": "0123456789abcdef-secret",
        "MIRROR_METRICS_AUTH": "true",
    }
    loaded = config.load(environ=environ)
    cfg = loaded.config
    assert cfg.auth.htpasswd == users_file
    assert cfg.auth.auth_groups == {"ops": ("alice",)}
    assert cfg.auth.auth_rules == (config.AuthRule(groups=("ops",), upstreams=("docker.io",)),)
    assert (cfg.auth.token_ttl, cfg.auth.metrics_auth) == (120.0, True)
    rendered = config.render(loaded)
    assert "0123456789abcdef-secret" not in rendered
    assert 'token_secret = "********"  # MIRROR_TOKEN_SECRET' in rendered
    assert 'auth_groups = {"ops" = ["alice"]}' in rendered
    assert 'auth_rules = [{groups = ["ops"], upstreams = ["docker.io"], access = "pull"}]' in (
        rendered
    )
    with pytest.raises(ConfigError, match=r"token_ttl .*at least 60"):
        config.load(environ={**environ, "MIRROR_TOKEN_TTL": "30"})
    with pytest.raises(ConfigError, match=r"token_secret .*at least 16"):
        config.load(environ={**environ, "MIRROR_TOKEN_SECRET": "short"})


def test_serve_takes_htpasswd_as_a_flag(users_file: Path) -> None:
    from mirror import cli

    args = cli._parser().parse_args(["serve", "--htpasswd", str(users_file)])
    overrides = {key: getattr(args, key, None) for key in cli.SERVE_FLAGS}
    loaded = config.load(environ={}, overrides=overrides)
    assert loaded.config.auth.htpasswd == users_file
    assert loaded.sources["htpasswd"] == "--htpasswd"
