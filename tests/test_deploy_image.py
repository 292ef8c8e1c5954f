"""deploy/ without a container engine: every YAML file parses, and the image (Dockerfile,
.dockerignore, the shipped mirror.toml) copies only what the build context sends, runs the
mirror as a numeric non-root user with the cache on its volume, and checks its health with a
command that passes against a running mirror."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import Client
from tests.deploy_files import (
    DEPLOY,
    IMAGE_CONFIG,
    ROOT,
    copies_from_context,
    dockerfile,
    exec_form,
    healthcheck_command,
    load_config,
    only,
    yaml_documents,
)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: * and ? stay within a path component, ** spans
    any number of them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def sent_to_docker(path: str) -> bool:
    """Whether the build context keeps `path` (relative to the repository root), by Docker's
    rules: the last pattern matching the path or one of its parents decides, `!` keeps."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    kept = True
    for pattern in patterns:
        keep = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            kept = keep
    return kept


def source_files(path: Path) -> Iterator[Path]:
    """The files a COPY of `path` would want (not Python's byte-code caches)."""
    if path.is_file():
        yield path
    for file in sorted(path.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file


# --- every YAML file --------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for file in files:
        docs = yaml_documents(file)
        assert docs, f"{file} holds no document"
        assert all(isinstance(doc, dict) for doc in docs), file


# --- Dockerfile -------------------------------------------------------------------------


def test_the_image_config_loads_with_the_data_dir_on_the_volume() -> None:
    cfg = load_config(IMAGE_CONFIG)
    instructions = dockerfile()
    assert str(cfg.storage.data_dir) == only(instructions, "VOLUME").args
    assert str(cfg.serving.listen.port) == only(instructions, "EXPOSE").args
    assert cfg.serving.listen.host == "0.0.0.0"


def test_dockerfile_copies_only_files_the_build_context_sends() -> None:
    copies = copies_from_context(dockerfile())
    assert copies
    for copy in copies:
        for source in copy.sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the build context"
            for file in source_files(path):
                relative = str(file.relative_to(ROOT))
                assert sent_to_docker(relative), f"COPY {source}: .dockerignore drops {relative}"


def test_dockerignore_keeps_local_state_and_tests_out_of_the_build_context() -> None:
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "data/meta.sqlite3",
        "bench/results/latest.json",
        "tests/test_pull.py",
        "mirror/__pycache__/cli.cpython-311.pyc",
        "mirror.toml",
    ]:
        assert not sent_to_docker(path), path
    assert sent_to_docker("mirror/server/static/index.html")


def test_image_runs_the_mirror_as_a_non_root_user_with_the_shipped_config() -> None:
    instructions = dockerfile()
    user = only(instructions, "USER").args.split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"
    assert only(instructions, "FROM").args.startswith(("python:", "python:${PYTHON_VERSION}"))
    assert exec_form(only(instructions, "ENTRYPOINT").args) == ["mirror"]
    command = exec_form(only(instructions, "CMD").args)
    assert command[0] == "serve"
    config_path = command[command.index("--config") + 1]
    shipped = [c for c in copies_from_context(instructions) if c.destination == config_path]
    assert [c.sources for c in shipped] == [[str(IMAGE_CONFIG.relative_to(ROOT))]]


def test_image_healthcheck_asks_healthz_on_the_exposed_port_without_curl() -> None:
    instructions = dockerfile()
    command = healthcheck_command(instructions)
    port = only(instructions, "EXPOSE").args
    assert command[:2] == ["python", "-c"]
    assert f"127.0.0.1:{port}/healthz" in command[2]


async def test_the_healthcheck_command_passes_against_a_running_mirror_and_fails_without(
    mirror: Client,
) -> None:
    script = healthcheck_command(dockerfile())[2]

    async def run(port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script.replace(":5000/", f":{port}/")
        )
        return await proc.wait()

    assert mirror.port is not None
    assert await run(mirror.port) == 0
    await mirror.close()
    assert await run(mirror.port) != 0
