"""The one error configuration raises."""

from __future__ import annotations


class ConfigError(Exception):
    """A bad configuration value; the message names the key and where it came from."""
