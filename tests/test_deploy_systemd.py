"""The systemd unit runs `mirror serve` with the installed config as a dedicated, hardened
user whose data directory is writable."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from tests.deploy_files import DEPLOY, IMAGE_CONFIG, load_config


def systemd_unit() -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "mirror.service").read_text())
    return unit


# --- systemd ----------------------------------------------------------------------------


def test_systemd_unit_serves_the_installed_config_as_a_hardened_dedicated_user() -> None:
    unit = systemd_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "mirror" and command[1] == "serve"
    assert command[command.index("--config") + 1] == "/etc/mirror/mirror.toml"
    assert service["User"] not in ("", "root", "0")
    # deploy/mirror.toml is what goes to /etc/mirror/mirror.toml: its data_dir is the
    # directory systemd creates for the service and lets it write.
    data_dir = load_config(IMAGE_CONFIG).storage.data_dir
    assert data_dir == Path("/var/lib") / service["StateDirectory"]
    assert str(data_dir) in service["ReadWritePaths"].split()
    assert service["Restart"] == "on-failure"
    assert float(service["TimeoutStopSec"].removesuffix("s")) > 5
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[option] == "yes", option
    assert service["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
