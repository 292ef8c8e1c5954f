"""Reading what deploy/ ships, for the `test_deploy_*` modules: where the files are, YAML
documents (and those a kustomization builds), the mirror's configuration loaded as `mirror
serve` would (from a file, or from a whole command line and environment), and the
Dockerfile's instructions (the image's user, ports, volume, command and health check are
what the other files must agree with)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mirror import cli, config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mirror.json"
IMAGE_CONFIG = DEPLOY / "mirror.toml"


def yaml_documents(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def yaml_document(path: Path) -> Any:
    (doc,) = yaml_documents(path)
    return doc


def load_config(path: Path, environ: dict[str, str] | None = None) -> config.Config:
    return config.load(config_file=path, environ=environ or {}).config


def load_config_text(text: str, tmp_path: Path) -> config.Config:
    file = tmp_path / "mirror.toml"
    file.write_text(text)
    return load_config(file)


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: COPY, RUN, ...
    args: str  # the rest of the (joined) line


def dockerfile(path: Path = DEPLOY / "Dockerfile") -> list[Instruction]:
    """The instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, args = pending.strip().partition(" ")
        instructions.append(Instruction(name.upper(), args.strip()))
        pending = ""
    return instructions


def exec_form(args: str) -> list[str]:
    """An instruction's JSON array argument (ENTRYPOINT ["mirror"])."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def only(instructions: list[Instruction], name: str) -> Instruction:
    """The last instruction called `name` in the final stage (the one that counts)."""
    final_stage = instructions[max(i for i, ins in enumerate(instructions) if ins.name == "FROM") :]
    matching = [ins for ins in final_stage if ins.name == name]
    assert matching, f"the image's final stage has no {name}"
    return matching[-1]


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str


def copies_from_context(instructions: list[Instruction]) -> list[Copy]:
    copies = []
    for ins in instructions:
        if ins.name not in ("COPY", "ADD"):
            continue
        words = exec_form(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        if any(word.startswith("--from=") for word in words):
            continue  # from another stage, not the build context
        paths = [word for word in words if not word.startswith("--")]
        copies.append(Copy(sources=paths[:-1], destination=paths[-1]))
    return copies


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", only(instructions, "HEALTHCHECK").args)
    assert match, "HEALTHCHECK must run a command in exec form"
    return exec_form(match.group(1))


# --- kustomize ----------------------------------------------------------------------------


def kustomization_resources(directory: Path) -> list[Path]:
    """The files and directories a kustomization lists (resolved against `directory`)."""
    kustomization = yaml_document(directory / "kustomization.yaml")
    return [(directory / name).resolve() for name in kustomization["resources"]]


def kustomization_documents(directory: Path) -> list[dict[str, Any]]:
    """Every object `kubectl apply -k directory` creates: its files' documents, and those of
    the directories it lists (kustomizations of their own), recursively."""
    docs: list[dict[str, Any]] = []
    for resource in kustomization_resources(directory):
        if resource.is_dir():
            docs += kustomization_documents(resource)
        else:
            docs += yaml_documents(resource)
    return docs


# --- the mirror's command line ------------------------------------------------------------

# What `${NAME}`, `${NAME:-default}` and `${NAME:?message}` in a compose file stand for.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """A compose value with its `${...}` references replaced as `docker compose` does."""

    def replace(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in variables:
            return variables[name]
        assert kind == "-", f"{match.group(0)}: {name} is required and not set"
        return str(rest)

    return _INTERPOLATION.sub(replace, value)


def serve_config(argv: list[str], config_file: Path, environ: dict[str, str]) -> config.Config:
    """What `mirror ARGV` (a `serve` command line) runs with, its `--config` read from
    `config_file` (the file mounted where the command names it), `environ` its environment:
    parsed by the mirror's own argument parser and loaded as `mirror serve` loads it."""
    args = cli._parser().parse_args(argv)
    assert args.command == "serve", argv
    overrides = {key: getattr(args, key, None) for key in cli.SERVE_FLAGS}
    return config.load(config_file=config_file, environ=environ, overrides=overrides).config


def setting_value(cfg: config.Config, key: str) -> Any:
    """The value of setting `key`, from whichever section declares it."""
    (field,) = (f for f in config.FIELDS if f.key == key)
    return getattr(getattr(cfg, field.section), key)


def mirror_variables(environment: dict[str, str]) -> list[str]:
    """The `MIRROR_*` names of an environment that name no setting (the mirror ignores
    those silently, so a misspelt one would go unnoticed)."""
    known = {config.ENV_PREFIX + key.upper() for key in config.SETTINGS} | {
        config.ENV_PREFIX + "UPSTREAM"
    }
    return [
        name for name in environment if name.startswith(config.ENV_PREFIX) and name not in known
    ]
