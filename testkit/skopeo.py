"""skopeo, run isolated from this machine's client configuration (the integration suite copies
images with it; the benchmark seeds its upstream with it)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

SKOPEO_TIMEOUT = 120.0

# Client configuration skopeo must not read from the developer's machine.
_SKOPEO_ENV_DROP = {
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "REGISTRY_AUTH_FILE",
    "DOCKER_CONFIG",
    "DOCKER_AUTH_CONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
}


def skopeo(*args: str, timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `skopeo ARGS` isolated from this machine's client configuration: a fresh HOME with
    an accept-anything policy.json and an empty registries.d, an empty registries.conf
    (`CONTAINERS_REGISTRIES_CONF`), an auth file that does not exist, and no credential,
    proxy or `CONTAINERS_*` variables. Never raises on failure: a run killed after `timeout`
    seconds comes back with returncode -9 and says so in its stderr."""
    argv = ["skopeo", *args]
    with tempfile.TemporaryDirectory(prefix="skopeo-home-") as tmp:
        home = Path(tmp)
        containers = home / ".config" / "containers"
        (containers / "registries.d").mkdir(parents=True)
        (containers / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        (containers / "registries.conf").write_text("")
        env = {
            k: v
            for k, v in os.environ.items()
            if k.upper() not in _SKOPEO_ENV_DROP and not k.startswith("CONTAINERS_")
        }
        env |= {
            "HOME": str(home),
            "CONTAINERS_REGISTRIES_CONF": str(containers / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
            "TMPDIR": str(home),
        }
        try:
            return subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(
                argv,
                -9,
                _text(exc.stdout),
                _text(exc.stderr) + f"\n[skopeo killed after {timeout} s]",
            )
        except FileNotFoundError:
            return subprocess.CompletedProcess(argv, 127, "", "skopeo is not installed")


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
