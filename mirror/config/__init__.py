"""The mirror's configuration: one typed place, four layers.

Each setting has one name used everywhere: the key in `mirror.toml`, the `--flag` on
`mirror serve` (dashes for underscores) and the `MIRROR_<KEY>` environment variable. Later
layers win: built-in default < file < environment < command line. Every error names the key
and the layer it came from, so an operator can fix it without reading code.

`Config` groups the settings in typed sections (`config.serving.listen`,
`config.freshness.tag_ttl`, ...); `schema` declares them. Config checks values only: the
server checks the files they name (the TLS pair, the htpasswd file).
"""

from mirror.config.auth import (
    ACTIONS,
    AUTH_ACCESS,
    MIN_TOKEN_SECRET,
    MIN_TOKEN_TTL,
    Action,
    AuthRule,
)
from mirror.config.errors import ConfigError
from mirror.config.freshness import Freshness, TagRule
from mirror.config.loading import DEFAULT_CONFIG_FILE, ENV_PREFIX, LoadedConfig, load
from mirror.config.parsers import Listen
from mirror.config.render import render
from mirror.config.schema import (
    FIELDS,
    SETTINGS,
    AuthSettings,
    CacheSettings,
    ClusterSettings,
    Config,
    FreshnessSettings,
    LimitSettings,
    LoggingSettings,
    PrefetchSettings,
    RegistrySettings,
    ServingSettings,
    Setting,
    StorageSettings,
)
from mirror.config.upstreams import (
    BUILTIN_UPSTREAMS,
    DOCKER_HUB,
    DOCKER_HUB_HOSTS,
    DOCKER_HUB_URL,
    UpstreamSettings,
)

__all__ = [
    "ACTIONS",
    "AUTH_ACCESS",
    "BUILTIN_UPSTREAMS",
    "DEFAULT_CONFIG_FILE",
    "DOCKER_HUB",
    "DOCKER_HUB_HOSTS",
    "DOCKER_HUB_URL",
    "ENV_PREFIX",
    "FIELDS",
    "MIN_TOKEN_SECRET",
    "MIN_TOKEN_TTL",
    "SETTINGS",
    "Action",
    "AuthRule",
    "AuthSettings",
    "CacheSettings",
    "ClusterSettings",
    "Config",
    "ConfigError",
    "Freshness",
    "FreshnessSettings",
    "LimitSettings",
    "Listen",
    "LoadedConfig",
    "LoggingSettings",
    "PrefetchSettings",
    "RegistrySettings",
    "ServingSettings",
    "Setting",
    "StorageSettings",
    "TagRule",
    "UpstreamSettings",
    "load",
    "render",
]
