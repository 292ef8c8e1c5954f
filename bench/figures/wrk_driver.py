"""One wrk run against one mirror with its observations, and a load's recorded repetitions.

While a wrk run lasts, the CPU time of every process involved is sampled (the mirror under
test, the upstream registry, the token server, and wrk itself), so the record shows which
side was the bottleneck on this 2-core machine, and the upstream's access log is read to
check that warm figures really were answered from the cache: nginx, which says so in a
header, is asked before the runs of a load, and a run of it that sent anything upstream fails
the figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.harness import ProcessTree, Side, machine_cpu_seconds
from bench.load import WrkResult, lua_script, run_wrk
from bench.nginx_cache import NginxCache
from bench.rows import MB
from bench.session import Bench

OTHER_CPU_WARN_PCT = 25.0  # % of one core used by unrelated processes during a wrk run


@dataclass(frozen=True)
class WrkLoad:
    """What wrk sends: `connections` keep-alive connections on `threads` threads, all
    asking for `path` with `headers`."""

    path: str
    connections: int
    threads: int
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: int = 60  # seconds wrk waits for one answer


def _cpu_pct(seconds: float, wall: float) -> float:
    return round(100 * seconds / wall, 1) if wall > 0 else 0.0


@dataclass
class _CpuMeter:
    """CPU seconds of the server's process tree, of the other processes of the run (by
    name) and of the whole machine, read before a run; `percentages` turns the difference
    after it into % of one core."""

    server: ProcessTree
    others: dict[str, ProcessTree]
    server_before: float
    others_before: dict[str, float]
    machine_before: tuple[float, float]  # busy, interrupts

    @classmethod
    def start(cls, server: ProcessTree, others: dict[str, ProcessTree]) -> _CpuMeter:
        server_before = server.cpu_seconds()
        others_before = {name: tree.cpu_seconds() for name, tree in others.items()}
        return cls(server, others, server_before, others_before, machine_cpu_seconds())

    def percentages(
        self, machine_after: tuple[float, float], wall: float, client_cpu_s: float
    ) -> dict[str, float]:
        (busy_before, irq_before), (busy_after, irq_after) = self.machine_before, machine_after
        busy = _cpu_pct(busy_after - busy_before, wall)
        cpu = {
            "server": _cpu_pct(self.server.cpu_seconds() - self.server_before, wall),
            **{
                name: _cpu_pct(tree.cpu_seconds() - self.others_before[name], wall)
                for name, tree in self.others.items()
            },
            "client": _cpu_pct(client_cpu_s, wall),
        }
        # Whatever else ran on the machine meanwhile (kernel threads, other people's jobs).
        cpu["other"] = round(max(0.0, busy - sum(cpu.values())), 1)
        cpu["interrupts"] = _cpu_pct(irq_after - irq_before, wall)
        cpu["machine"] = round(busy + cpu["interrupts"], 1)
        return cpu


def wrk_run(
    bench: Bench, side: Side, load: WrkLoad, *, duration: int | None = None, record: bool = True
) -> WrkResult:
    """One wrk run of `load` against `side`, `duration` s (the options' by default), with
    the CPU use of every process and the server's peak RSS in `result.extra`; recorded runs
    also count what the upstream and the token server were asked meanwhile."""
    duration = duration or bench.options.duration
    script = lua_script(bench.workdir / "lua", load.headers)
    tree = ProcessTree(side.pid)
    others = {
        "upstream": ProcessTree(bench.up.pid),
        "token": ProcessTree(bench.harness.token.pid),
    }
    bench.wait_upstream_quiet()
    if record:
        bench.up.reset_counts()
    tokens_before = bench.token_requests() if record else 0
    tree.reset_peak_rss()
    meter = _CpuMeter.start(tree, others)
    result = run_wrk(
        side.url + load.path,
        connections=load.connections,
        threads=load.threads,
        duration=duration,
        script=script,
        timeout=load.timeout,
    )
    machine_after = machine_cpu_seconds()
    rss, processes = tree.peak_rss()
    cpu = meter.percentages(machine_after, result.duration_s, result.client_cpu_s)
    where = f"{side.label} {load.path} c={load.connections}"
    if cpu["other"] > OTHER_CPU_WARN_PCT:
        bench.warn(
            f"{where}: {cpu['other']:.0f}% CPU went to other "
            "processes during the run; its numbers may be disturbed"
        )
    result.extra = {
        "server": side.label,
        "cpu_pct": cpu,
        "peak_rss_MB": round(rss / MB, 1),
        "server_processes": processes,
    }
    if record:
        result.extra["upstream_requests"] = bench.upstream_summary()
        result.extra["token_requests"] = bench.token_requests() - tokens_before
    if result.error_count:
        bench.warn(f"{where}: wrk counted errors {result.errors}")
    return result


def run_load(
    bench: Bench,
    load: WrkLoad,
    observe: Callable[[Side, WrkResult], None],
    sides: Sequence[Side] | None = None,
) -> dict[str, list[WrkResult]]:
    """`load` against each of `sides` (all by default): an unrecorded warm-up run each
    (`options.warmup` s, if any), then `options.repeat` recorded runs each, rotating which
    goes first; every recorded run is passed to `observe` as it is taken. The runs, by
    side."""
    chosen = list(bench.harness.sides if sides is None else sides)
    for side in chosen:
        bench.require_cached(side, load.path, load.headers)
    runs: dict[str, list[WrkResult]] = {side.label: [] for side in chosen}
    if bench.options.warmup:
        for side in chosen:
            wrk_run(bench, side, load, duration=bench.options.warmup, record=False)
    for rep in range(bench.options.repeat):
        for side in bench.order(rep, chosen):
            result = wrk_run(bench, side, load)
            _from_cache_only(side, result)
            runs[side.label].append(result)
            observe(side, result)
    return runs


def _from_cache_only(side: Side, result: WrkResult) -> None:
    """A warm run of nginx must not have asked the upstream for anything: its figure would
    not be a cache's."""
    asked = {kind: count for kind, count in result.extra["upstream_requests"].items() if count}
    if isinstance(side, NginxCache) and asked:
        raise RuntimeError(f"nginx asked the upstream during a warm run: {asked}")


def runs_json(runs: Mapping[str, list[WrkResult]]) -> dict[str, list[dict[str, Any]]]:
    """The record's form of `run_load`'s runs."""
    return {side: [result.to_json() for result in results] for side, results in runs.items()}


def describe(result: WrkResult, what: str) -> str:
    """A log line: the server, `what` it achieved, and where the CPU went."""
    cpu = result.extra["cpu_pct"]
    return (
        f"    {result.extra['server']:>12} {what}  "
        f"cpu% server {cpu['server']:.0f} client {cpu['client']:.0f} "
        f"upstream {cpu['upstream']:.0f} token {cpu['token']:.0f} "
        f"other {cpu['other']:.0f} irq {cpu['interrupts']:.0f}"
    )
