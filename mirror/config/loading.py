"""Loading: built-in default < mirror.toml < `MIRROR_*` environment < flags, each value
remembering the layer it came from so every error (and `check-config`) can name it."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.config.checks import (
    check_auth,
    check_cluster,
    check_deputy,
    check_storage,
    check_tls,
)
from mirror.config.errors import ConfigError
from mirror.config.schema import SETTINGS, Config, build
from mirror.config.upstreams import upstreams

DEFAULT_CONFIG_FILE = Path("mirror.toml")
ENV_PREFIX = "MIRROR_"
# `upstream` is layered its own way (see `upstreams.upstreams`): a URL or a list of tables.
UPSTREAM_KEY = "upstream"


@dataclass(frozen=True)
class LoadedConfig:
    """A config plus where each value came from (shown by `mirror check-config`, and named
    by the server's checks of the files the config names)."""

    config: Config
    sources: Mapping[str, str]
    file: Path | None


def load(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Build the effective config from defaults, the file, `MIRROR_*` variables and flags.

    `config_file=None` reads ./mirror.toml when it exists; an explicit file must exist.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}
    sources = dict.fromkeys(SETTINGS, "default")
    upstream_layers: list[tuple[str, Any]] = []

    def set_value(key: str, value: Any, source: str) -> None:
        if key == UPSTREAM_KEY:
            upstream_layers.append((source, value))
        else:
            raw[key] = value
            sources[key] = source

    file = config_file
    if file is None and DEFAULT_CONFIG_FILE.is_file():
        file = DEFAULT_CONFIG_FILE
    if file is not None:
        for key, value in _read_file(file).items():
            set_value(key, value, str(file))
    for key in (*SETTINGS, UPSTREAM_KEY):
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            set_value(key, environ[env_name], env_name)
    for key, value in (overrides or {}).items():
        if key not in SETTINGS and key != UPSTREAM_KEY:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            set_value(key, value, "--" + key.replace("_", "-"))

    values = _parse(raw, sources)
    values["upstreams"] = upstreams(upstream_layers, values["builtin_upstreams"], environ)
    config = build(values)
    check_tls(config, sources)
    check_auth(config, sources)
    check_deputy(config)
    check_storage(config, sources)
    check_cluster(config, sources)
    return LoadedConfig(config=config, sources=sources, file=file)


def _parse(raw: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, setting in SETTINGS.items():
        try:
            values[key] = setting.parse(raw[key])
        except ValueError as exc:
            raise ConfigError(f"{key} (from {sources[key]}): {exc}") from None
    return values


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in SETTINGS and key != UPSTREAM_KEY:
            known = ", ".join((*SETTINGS, UPSTREAM_KEY))
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    return data
