"""The cluster settings' parsers and their check: replicas sharing S3 and Redis reach each
other at their `advertise_url`, and prove they belong with the cluster secret (given in
`cluster_secret`, usually through MIRROR_CLUSTER_SECRET, or read from `cluster_secret_file`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirror.config.errors import ConfigError
from mirror.config.parsers import parse_optional_str, parse_optional_url

# A secret shorter than this is refused: it signs every replica-to-replica request.
MIN_CLUSTER_SECRET = 16


def parse_cluster_secret(value: Any) -> str | None:
    secret = parse_optional_str(value)
    if secret is not None and len(secret) < MIN_CLUSTER_SECRET:
        raise ValueError(f"must be at least {MIN_CLUSTER_SECRET} characters")
    return secret


def parse_advertise_url(value: Any) -> str | None:
    url = parse_optional_url(value)
    return None if url is None else url.rstrip("/")


def read_cluster_secret(
    secret: str | None, secret_file: Path | None, sources: Mapping[str, str]
) -> str | None:
    """The effective secret: `cluster_secret`, or the first line of `cluster_secret_file`
    (ConfigError naming the key when both are set, or the file cannot be read or is short)."""
    if secret_file is None:
        return secret
    where = f"cluster_secret_file (from {sources.get('cluster_secret_file', 'default')})"
    if secret is not None:
        raise ConfigError(f"{where}: cluster_secret is set as well; set one of them")
    try:
        text = secret_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {secret_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {secret_file} is not text") from None
    try:
        return parse_cluster_secret(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: the secret in {secret_file} {exc}") from None
