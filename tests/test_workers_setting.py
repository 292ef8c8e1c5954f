"""The `workers` setting: a number, or `auto` (the default): one worker per CPU this process
may use, counted from its affinity and its cgroup's CPU quota, as nginx and Go count them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mirror import config
from mirror.config import ConfigError
from mirror.config.workers import worker_count
from mirror.cpus import usable_cpus
from tests.runcli import run_cli

FOUR_CPUS = frozenset({0, 1, 2, 3})


def test_the_default_is_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no mirror.toml here
    loaded = config.load(config_file=None, environ={})
    assert loaded.config.serving.workers == "auto"
    assert loaded.sources["workers"] == "default"


@pytest.mark.parametrize(
    ("content", "environ", "flag", "expected"),
    [
        ('workers = "auto"', {}, None, "auto"),
        ("workers = 4", {}, None, 4),
        ("workers = 4", {"MIRROR_WORKERS": "auto"}, None, "auto"),
        ("workers = 4", {"MIRROR_WORKERS": "AUTO"}, None, "auto"),
        ('workers = "auto"', {"MIRROR_WORKERS": "2"}, None, 2),
        ("workers = 4", {}, "auto", "auto"),
        ('workers = "auto"', {}, "64", 64),
    ],
)
def test_auto_or_a_number_from_any_layer(
    tmp_path: Path, content: str, environ: dict[str, str], flag: str | None, expected: object
) -> None:
    file = tmp_path / "m.toml"
    file.write_text(content + "\n")
    loaded = config.load(config_file=file, environ=environ, overrides={"workers": flag})
    assert loaded.config.serving.workers == expected


@pytest.mark.parametrize("value", ["0", "65", "-1", '"many"', "2.5", "true", '""'])
def test_a_bad_value_names_the_key(tmp_path: Path, value: str) -> None:
    file = tmp_path / "m.toml"
    file.write_text(f"workers = {value}\n")
    message = f'workers (from {file}): expected "auto" or 1 to 64 worker processes'
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(config_file=file, environ={})


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=re.escape("workers (from MIRROR_WORKERS)")):
        config.load(environ={"MIRROR_WORKERS": "all"})


def test_a_number_is_that_many_and_auto_is_one_per_usable_cpu_up_to_64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mirror.config.workers.usable_cpus", lambda: 6)
    assert worker_count(3) == 3
    assert worker_count("auto") == 6
    monkeypatch.setattr("mirror.config.workers.usable_cpus", lambda: 192)
    assert worker_count("auto") == 64


def test_check_config_shows_auto_and_what_it_comes_to_here(tmp_path: Path) -> None:
    result = run_cli("check-config", cwd=tmp_path, cpus={0})
    assert result.returncode == 0, result.stderr
    assert 'workers = "auto"  # default; 1 here, one per CPU this process may use\n' in (
        result.stdout
    )
    result = run_cli("check-config", env={"MIRROR_WORKERS": "3"}, cwd=tmp_path)
    assert "workers = 3  # MIRROR_WORKERS\n" in result.stdout


# --- counting the CPUs ---------------------------------------------------------------------


class FakeSystem:
    """A /proc/self/cgroup and a cgroup filesystem under a temp dir."""

    def __init__(self, root: Path, membership: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.proc_cgroup = root / "proc-self-cgroup"
        self.proc_cgroup.write_text(membership)
        self.fs = root / "sys-fs-cgroup"
        self.fs.mkdir()

    def limit(self, directory: str, name: str, text: str) -> None:
        """Write the control file `name` of the cgroup at `directory` (relative to the fs)."""
        path = self.fs / directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def cpus(self, affinity: frozenset[int] = FOUR_CPUS) -> int:
        return usable_cpus(
            affinity=lambda: affinity, proc_cgroup=self.proc_cgroup, cgroup_fs=self.fs
        )


V2 = "0::/system.slice/mirror.service\n"
V1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"


def test_without_a_quota_every_cpu_of_the_affinity_counts(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V2)
    system.limit("system.slice/mirror.service", "cpu.max", "max 100000\n")
    assert system.cpus() == 4
    assert system.cpus(frozenset({2})) == 1  # pinned, as by taskset or a cpuset


def test_a_v2_quota_caps_the_count_rounded_up(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V2)
    system.limit("system.slice/mirror.service", "cpu.max", "150000 100000\n")  # 1.5 CPUs
    assert system.cpus() == 2
    assert system.cpus(frozenset({0})) == 1  # the affinity is lower still


def test_a_quota_below_one_cpu_still_counts_one(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V2)
    system.limit("system.slice/mirror.service", "cpu.max", "20000 100000\n")
    assert system.cpus() == 1


def test_the_lowest_quota_among_the_cgroup_and_its_ancestors_binds(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V2)
    system.limit("system.slice", "cpu.max", "200000 100000\n")
    system.limit("system.slice/mirror.service", "cpu.max", "max 100000\n")
    assert system.cpus() == 2


def test_a_container_sees_its_own_cgroup_at_the_root(tmp_path: Path) -> None:
    """With a cgroup namespace the container's cgroup is the mount itself, and the path in
    /proc/self/cgroup may name one outside it."""
    system = FakeSystem(tmp_path, "0::/../../kubepods/pod1/c1\n")
    system.limit("", "cpu.max", "300000 100000\n")
    assert system.cpus() == 3
    system = FakeSystem(tmp_path / "other", "0::/kubepods/pod1/c1\n")
    system.limit("", "cpu.max", "100000 100000\n")
    assert system.cpus() == 1


def test_a_v1_quota_counts_too(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V1)
    system.limit("cpu,cpuacct/docker/abc", "cpu.cfs_quota_us", "250000\n")
    system.limit("cpu,cpuacct/docker/abc", "cpu.cfs_period_us", "100000\n")
    assert system.cpus() == 3
    system.limit("cpu,cpuacct/docker/abc", "cpu.cfs_quota_us", "-1\n")
    assert system.cpus() == 4


def test_no_cgroups_leave_the_affinity(tmp_path: Path) -> None:
    system = FakeSystem(tmp_path, V2)
    system.proc_cgroup.unlink()
    assert system.cpus() == 4
    assert FakeSystem(tmp_path / "empty", V1).cpus() == 4  # no control files at all


def test_this_process_counts_at_least_one_cpu_and_at_most_its_affinity() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
