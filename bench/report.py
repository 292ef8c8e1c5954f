"""What a run leaves behind: the table (printed), `bench/results/<UTC stamp>.json` with every
run's numbers and the facts of the machine, `<stamp>.md` (the table in Markdown, with the
run's date, machine and command, for the README) and `<stamp>.png`, a bar chart of ours
against its peers per figure; each also copied to `latest.*`."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.figures.peak_rss import RSS_TARGET_MB
from bench.rows import OURS, Row

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLORS = {
    OURS: "#1f77b4",
    "distribution": "#ff7f0e",
    "theirs": "#ff7f0e",  # the cluster benchmark's name for distribution
    "nginx": "#2ca02c",
    "upstream": "#9e9e9e",
    "ours on file": "#aec7e8",
}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf")


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def sides(rows: Sequence[Row]) -> list[str]:
    """Ours, then every peer in the order the rows first name it."""
    found = [OURS]
    for row in rows:
        found += [side for side in row.values if side not in found]
    return found


def _cells(row: Row, columns: Sequence[str]) -> list[str]:
    """Ours' median, then each peer's with ours / it in brackets (empty where the row does
    not have that peer)."""
    cells = [fmt(row.ours)]
    for peer in columns[1:]:
        if peer not in row.values:
            cells.append("")
            continue
        ratio = row.ratio(peer)
        cells.append(fmt(row.values[peer]) + ("" if ratio is None else f" ({ratio:.2f}x)"))
    return cells


def _spread(row: Row, columns: Sequence[str]) -> str:
    """`±a%/±b%/...`: half the range of each side's runs around its median, for the sides
    of the row in column order (— for a side with a single run); empty for single runs."""
    spreads = [row.spread(side) for side in columns if side in row.values]
    if all(s is None for s in spreads):
        return ""
    return "/".join("—" if s is None else f"±{s * 100:.0f}%" for s in spreads)


def _target(row: Row) -> str:
    """The targets, those missed marked when there are several; the row's note after."""
    several = len(row.targets) > 1
    marked = [t.text + (" (missed)" if several and not t.passed else "") for t in row.targets]
    text = "; ".join(marked)
    return text + (f" ({row.note})" if row.note else "")


def _result(row: Row) -> str:
    return "" if row.passed is None else "PASS" if row.passed else "FAIL"


LEGEND = (
    "Medians of the runs; each peer's with ours / peer in brackets. Spread: half the range "
    "of each side's runs around its median (ours first)."
)


def table(rows: Sequence[Row]) -> str:
    """The plain-text table: each side's median, ours / each peer, the spread of the runs,
    the targets and whether they held."""
    columns = sides(rows)
    header = ("figure", "unit", *columns, "spread", "target", "result")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        lines.append(
            (
                f"{row.figure}: {row.label}",
                row.unit,
                *_cells(row, columns),
                _spread(row, columns),
                _target(row),
                _result(row),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = set(range(2, 2 + len(columns)))
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join([*out, LEGEND])


def markdown(record: Mapping[str, Any], rows: Sequence[Row]) -> str:
    """The table in Markdown with the run's date, machine and command above it and the
    count of targets met below, for the README's Performance section."""
    columns = sides(rows)
    meta = record.get("meta", {})
    machine = meta.get("machine", {})
    gib = math.floor((machine.get("memory_bytes") or 0) / 2**30)
    commit = str(machine.get("git_commit", ""))[:10]
    dirty = " + uncommitted changes" if machine.get("mirror_dirty") else ""
    passed, judged = targets_summary(rows)
    head = [
        f"Run of {meta.get('started_utc', '?')} ({meta.get('elapsed_s', '?')} s), "
        f"commit `{commit}`{dirty}: `{meta.get('command', '')}`  ",
        f"{machine.get('cores')} cores ({machine.get('cpu_model')}), {gib} GiB, "
        f"{machine.get('os')}, load average at the end "
        f"{' '.join(machine.get('loadavg_at_end') or [])}; {machine.get('distribution')}; "
        f"{machine.get('nginx')}; Python {machine.get('python')}",
        "",
        "| figure | unit | " + " | ".join(columns) + " | target | result |",
        "|---|---|" + "---:|" * len(columns) + "---|---|",
    ]
    body = []
    for row in rows:
        result = _result(row)
        body.append(
            f"| {row.figure}: {row.label} | {row.unit} | "
            + " | ".join(_cells(row, columns))
            + f" | {_target(row)} | {'**FAIL**' if result == 'FAIL' else result} |"
        )
    tail = ["", LEGEND, f"Targets met: {passed} of {judged}."]
    return "\n".join([*head, *body, *tail]) + "\n"


def targets_summary(rows: Sequence[Row]) -> tuple[int, int]:
    judged = [row for row in rows if row.passed is not None]
    return sum(1 for row in judged if row.passed), len(judged)


def write(record: dict[str, Any], rows: Sequence[Row], stamp: str, results_dir: Path) -> list[Path]:
    """Write `<stamp>.json`, `<stamp>.md` and `<stamp>.png` (if matplotlib is there) and
    their `latest` copies; the paths written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    md_path = results_dir / f"{stamp}.md"
    md_path.write_text(markdown(record, rows))
    written = [json_path, md_path]
    png_path = results_dir / f"{stamp}.png"
    try:
        chart(record, rows, png_path)
    except ImportError as exc:
        print(f"bench: no chart ({exc}); install the `bench` extra: pip install -e '.[bench]'")
    else:
        written.append(png_path)
    for path in written:
        shutil.copyfile(path, results_dir / f"latest{path.suffix}")
    return written


# --- the chart -----------------------------------------------------------------------------


def _pyplot() -> Any:
    # Imported by name: the chart is optional, and the type checker runs where the `bench`
    # extra (matplotlib) may not be installed.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _short(row: Row) -> str:
    """A bar-group label from a row key."""
    parts = row.key.split(".")
    if parts[0] in ("blob", "s3") and len(parts) == 3:
        return f"{parts[1].removesuffix('m')} MiB\n{parts[2].replace('c', 'c=')}"
    if row.key == "s3.first_read":
        return "first read\n(from bucket)"
    if parts[0] == "manifest":
        return f"by {parts[1]}\n{parts[2].replace('c', 'c=')}"
    if parts[0] == "revalidate":
        return {"manifest_get": "manifest\nGET", "manifest_head": "manifest\nHEAD"}.get(
            parts[1], parts[1]
        )
    if parts[0] == "rss":
        return row.label.replace(", ", "\n")
    if row.key in ("cold.total", "cold.fetches", "cold.ttfb"):
        return "1 client"
    if parts[0] == "cold_concurrent":
        clients = row.label.split(":")[0].removeprefix("200 MiB, ").replace(" at once", "")
        return f"{clients}\nat once" + ("\n(max)" if parts[1] == "fetches" else "")
    return row.label


def _color(side: str, order: Sequence[str]) -> str:
    return COLORS.get(side) or OTHER_COLORS[order.index(side) % len(OTHER_COLORS)]


class _Group:
    """One group of bars: a label, each side's value and the runs behind it."""

    def __init__(
        self,
        label: str,
        values: Mapping[str, float | None],
        runs: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.label = label
        self.values = dict(values)
        self.runs = dict(runs or {})

    @classmethod
    def of(cls, row: Row) -> _Group:
        return cls(_short(row), row.values, row.runs)

    def whisker(self, side: str) -> tuple[float, float]:
        """Distances from the side's value (a median) down to the lowest and up to the
        highest of its runs; none for a single run."""
        value, runs = self.values.get(side) or 0.0, self.runs.get(side, [])
        if len(runs) < 2:
            return 0.0, 0.0
        return value - min(runs), max(runs) - value


def _bars(
    ax: Any,
    title: str,
    groups: Sequence[_Group],
    *,
    hline: tuple[float, str] | None = None,
    log: bool | None = None,
) -> None:
    """Grouped bars, one per side (ours first), each with its value (the median) on top
    and whiskers from the lowest to the highest run."""
    if not groups:
        ax.set_visible(False)
        return
    order = [OURS] + [s for g in groups for s in g.values if s != OURS]
    order = list(dict.fromkeys(order))
    width = 0.8 / len(order)
    values = [v for g in groups for v in g.values.values() if v is not None and v > 0]
    if log is None:
        log = bool(values) and max(values) / max(min(values), 1e-9) > 50
    for n, side in enumerate(order):
        offset = (n - (len(order) - 1) / 2) * width
        present = [(i, g) for i, g in enumerate(groups) if g.values.get(side) is not None]
        if not present:
            continue
        ys = [g.values[side] or 0.0 for _, g in present]
        low, high = zip(*(g.whisker(side) for _, g in present), strict=True)
        bars = ax.bar(
            [i + offset for i, _ in present],
            ys,
            width,
            label=side,
            color=_color(side, order),
            yerr=[low, high] if any(low) or any(high) else None,
            capsize=2,
            ecolor="#333333",
        )
        for bar, y, above in zip(bars, ys, high, strict=True):
            ax.annotate(
                fmt(y),
                (bar.get_x() + bar.get_width() / 2, y + above),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 1),
                textcoords="offset points",
            )
    if hline is not None:
        ax.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(range(len(groups)), [g.label for g in groups], fontsize=8)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(fontsize=7)


def _rows(by_prefix: Mapping[str, Sequence[Row]], prefix: str, *keys: str) -> list[_Group]:
    """Groups of the rows under `prefix` whose key ends in one of `keys` (all if none)."""
    return [
        _Group.of(row)
        for row in by_prefix.get(prefix, [])
        if not keys or any(row.key.endswith(key) for key in keys)
    ]


def _cold_panels(axes: Sequence[Any], by_prefix: dict[str, list[Row]], raw: dict[str, Any]) -> None:
    """Cold blob: time to first byte, total time, upstream GETs of the blob."""
    ttfb = _rows(by_prefix, "cold", ".ttfb")
    upstream = ttfb[0].values.get("upstream") if ttfb else None
    _bars(
        axes[0],
        "Cold 200 MiB blob, 1 client: time to first byte, ms (lower)",
        ttfb,
        hline=None if upstream is None else (upstream + 10, "target: upstream + 10 ms"),
        log=False,
    )
    _bars(
        axes[1],
        "Cold 200 MiB blob: total time, s (lower is better)",
        _rows(by_prefix, "cold", ".total") + _rows(by_prefix, "cold_concurrent", ".wall"),
        log=False,
    )
    fetches = _rows(by_prefix, "cold", ".fetches") + _rows(by_prefix, "cold_concurrent", ".fetches")
    if raw.get("rss"):
        cold = raw["rss"]["cold"]
        clients = cold[OURS]["clients"]
        gets = {side: float(run["upstream_blob_gets"]) for side, run in cold.items()}
        fetches.append(_Group(f"{clients} clients\n(RSS run)", gets))
    _bars(axes[2], "Cold 200 MiB blob: upstream GETs of it (lower is better)", fetches, log=False)


def _summary_text(record: dict[str, Any], rows: Sequence[Row]) -> str:
    """The targets met, each judged row, and the facts of the run, wrapped at 190 columns."""
    lines = []
    for row in rows:
        if row.passed is None:
            continue
        mark = "PASS" if row.passed else "FAIL"
        lines.append(f"{mark}  {row.figure}: {row.label} — {_target(row)}")
    passed, judged = targets_summary(rows)
    meta = record.get("meta", {})
    machine = meta.get("machine", {})
    text = [
        f"targets met: {passed} of {judged}",
        "",
        *lines,
        "",
        f"{meta.get('started_utc', '')}  commit {str(machine.get('git_commit', ''))[:10]}"
        + (" + uncommitted changes" if machine.get("mirror_dirty") else "")
        + f"  {meta.get('command', '')}",
        f"{machine.get('cores')} cores, {machine.get('cpu_model')}, "
        f"{math.floor((machine.get('memory_bytes') or 0) / 2**30)} GiB, "
        f"kernel {machine.get('kernel')}, load average at the end "
        f"{' '.join(machine.get('loadavg_at_end') or [])}",
        f"Python {machine.get('python')}, aiohttp {machine.get('aiohttp')}; "
        f"{machine.get('distribution')}; ours env: {meta.get(OURS, {}).get('env')}",
    ]
    wrapped = []
    for line in text:
        while len(line) > 190:
            wrapped.append(line[:190])
            line = "    " + line[190:]
        wrapped.append(line)
    return "\n".join(wrapped)


def chart(record: dict[str, Any], rows: Sequence[Row], path: Path) -> None:
    """Nine panels of bars (warm blobs, from S3 too; manifests: requests/s and p99; cold:
    time to first byte, total time, upstream GETs; revalidation; peak RSS), and the targets
    as text below."""
    plt = _pyplot()
    by_prefix: dict[str, list[Row]] = {}
    for row in rows:
        by_prefix.setdefault(row.key.split(".")[0], []).append(row)
    fig = plt.figure(figsize=(18, 18))
    grid = fig.add_gridspec(4, 3, height_ratios=(1, 1, 1, 0.8))
    axes = [fig.add_subplot(grid[r, c]) for r in range(3) for c in range(3)]

    _bars(axes[0], "Warm blob throughput, MB/s (higher is better)", _rows(by_prefix, "blob"))
    _bars(
        axes[1],
        "Warm blob, ours on S3 (hot cache) vs on file, MB/s (higher)",
        _rows(by_prefix, "s3"),
        log=False,
    )
    _bars(
        axes[2],
        "Warm manifest GET, requests/s (higher is better)",
        _rows(by_prefix, "manifest", ".rps"),
    )
    _bars(
        axes[3],
        "Warm manifest GET, p99 latency ms (lower is better)",
        _rows(by_prefix, "manifest", ".p99"),
    )
    _cold_panels(axes[4:7], by_prefix, record.get("raw", {}))
    _bars(
        axes[7],
        "Pulls of a tag past its freshness: upstream requests (lower)",
        [_Group.of(r) for r in by_prefix.get("revalidate", []) if r.unit == "requests"],
        log=False,
    )
    _bars(
        axes[8],
        "Peak RSS, MB (lower is better)",
        _rows(by_prefix, "rss"),
        hline=(RSS_TARGET_MB, f"target for ours {RSS_TARGET_MB:g} MB"),
        log=False,
    )
    text = fig.add_subplot(grid[3, :])
    text.axis("off")
    text.text(
        0, 1, _summary_text(record, rows), va="top", ha="left", fontsize=7.5, family="monospace"
    )
    fig.suptitle(
        "mirror (ours) vs distribution's pull-through proxy and nginx proxy_cache, "
        "same upstream, same machine",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
