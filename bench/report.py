"""What a run leaves behind: the table (printed), `bench/results/<UTC stamp>.json` with every
run's numbers and the facts of the machine, and `<stamp>.png`, a bar chart of ours against
theirs per figure; both also copied to `latest.json` / `latest.png`."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.figures.peak_rss import RSS_TARGET_MB
from bench.rows import Row

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OURS_COLOR = "#1f77b4"
THEIRS_COLOR = "#ff7f0e"
UPSTREAM_COLOR = "#9e9e9e"


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread(row: Row) -> str:
    """`±a% / ±b%`: half the range of each side's runs around its median."""
    ours, theirs = row.spread("ours"), row.spread("theirs")
    if ours is None and theirs is None:
        return ""
    return " / ".join("—" if s is None else f"±{s * 100:.0f}%" for s in (ours, theirs))


def table(rows: Sequence[Row]) -> str:
    header = (
        "figure",
        "unit",
        "ours",
        "theirs",
        "ours/theirs",
        "better",
        "spread o/t",
        "target",
        "result",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        ratio = row.ratio
        lines.append(
            (
                f"{row.figure}: {row.label}",
                row.unit,
                fmt(row.ours),
                fmt(row.theirs),
                "—" if ratio is None else f"{ratio:.2f}x",
                "higher" if row.better == "higher" else "lower",
                _spread(row),
                row.target + (f" ({row.note})" if row.note else ""),
                "" if row.passed is None else ("PASS" if row.passed else "FAIL"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4}
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets_summary(rows: Sequence[Row]) -> tuple[int, int]:
    judged = [row for row in rows if row.passed is not None]
    return sum(1 for row in judged if row.passed), len(judged)


def write(record: dict[str, Any], rows: Sequence[Row], stamp: str, results_dir: Path) -> list[Path]:
    """Write `<stamp>.json` and `<stamp>.png` (if matplotlib is there) and their `latest`
    copies; the paths written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    shutil.copyfile(json_path, results_dir / "latest.json")
    written = [json_path]
    png_path = results_dir / f"{stamp}.png"
    try:
        chart(record, rows, png_path)
    except ImportError as exc:
        print(f"bench: no chart ({exc}); install the `bench` extra: pip install -e '.[bench]'")
    else:
        shutil.copyfile(png_path, results_dir / "latest.png")
        written.append(png_path)
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
    if parts[0] == "blob":
        return f"{parts[1].removesuffix('m')} MiB\n{parts[2].replace('c', 'c=')}"
    if parts[0] == "manifest":
        return f"by {parts[1]}\n{parts[2].replace('c', 'c=')}"
    if parts[0] == "revalidate":
        return {"manifest_get": "manifest\nGET", "manifest_head": "manifest\nHEAD"}.get(
            parts[1], parts[1]
        )
    if parts[0] == "rss":
        return row.label.replace(", ", "\n")
    if row.key == "cold.total":
        return "1 client"
    if row.key == "cold_concurrent.wall":
        return row.label.split(":")[0].removeprefix("200 MiB, ").replace(" at once", "\nat once")
    return row.label


def _whiskers(
    values: Sequence[float], samples: Sequence[Sequence[float]]
) -> tuple[list[float], list[float]]:
    """Distances from each value (a median) down to the lowest and up to the highest of its
    samples; none for a single sample."""
    low = [y - min(s) if len(s) > 1 else 0.0 for y, s in zip(values, samples, strict=True)]
    high = [max(s) - y if len(s) > 1 else 0.0 for y, s in zip(values, samples, strict=True)]
    return low, high


def _label_bars(
    ax: Any,
    bars: Any,
    values: Sequence[float],
    above: Sequence[float],
    *,
    fontsize: float,
    lift: float = 1,
) -> None:
    """Each bar's value on top of it (and of its upper whisker), `lift` points higher."""
    for bar, y, whisker in zip(bars, values, above, strict=True):
        ax.annotate(
            fmt(y),
            (bar.get_x() + bar.get_width() / 2, y + whisker),
            ha="center",
            va="bottom",
            fontsize=fontsize,
            xytext=(0, lift),
            textcoords="offset points",
        )


def _bars(
    ax: Any,
    title: str,
    rows: Sequence[Row],
    *,
    extra: Sequence[tuple[str, float | None, float | None]] = (),
    hline: tuple[float, str] | None = None,
    log: bool | None = None,
) -> None:
    """Grouped bars, ours and theirs side by side, each with its value (the median) on top
    and whiskers from the lowest to the highest run; `extra` groups (label, ours, theirs)
    after the rows'."""
    groups = [(_short(row), row.ours, row.theirs) for row in rows] + list(extra)
    # min..max of the runs behind each median, as whiskers
    runs = [row.runs for row in rows] + [{} for _ in extra]
    if not groups:
        ax.set_visible(False)
        return
    width = 0.38
    values = [v for _, o, t in groups for v in (o, t) if v is not None and v > 0]
    if log is None:
        log = bool(values) and max(values) / max(min(values), 1e-9) > 50
    series = ((-width / 2, 1, "ours", OURS_COLOR), (width / 2, 2, "theirs", THEIRS_COLOR))
    for offset, index, name, color in series:
        xs = [i + offset for i in range(len(groups))]
        ys = [(g[1] if index == 1 else g[2]) or 0.0 for g in groups]
        low, high = _whiskers(ys, [by_side.get(name, []) for by_side in runs])
        bars = ax.bar(
            xs,
            ys,
            width,
            label=name,
            color=color,
            yerr=[low, high] if any(low) or any(high) else None,
            capsize=3,
            ecolor="#333333",
        )
        _label_bars(ax, bars, ys, high, fontsize=7)
    if hline is not None:
        ax.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(fontsize=7)


def _cold_ttfb(ax: Any, ttfb: Row, cold_raw: dict[str, Any]) -> None:
    """Ours, theirs and the upstream's own time to first byte, with the target line."""
    up_ttfb = float(cold_raw["upstream_direct_median"]["ttfb_ms"])
    values = [ttfb.ours or 0.0, ttfb.theirs or 0.0, up_ttfb]
    low, high = _whiskers(
        values,
        [
            ttfb.runs.get("ours", []),
            ttfb.runs.get("theirs", []),
            [r["ttfb_s"] * 1000 for r in cold_raw["upstream_direct"]],
        ],
    )
    bars = ax.bar(
        ["ours", "theirs", "upstream\ndirect"],
        values,
        color=[OURS_COLOR, THEIRS_COLOR, UPSTREAM_COLOR],
        yerr=[low, high],
        capsize=3,
        ecolor="#333333",
    )
    _label_bars(ax, bars, values, high, fontsize=8, lift=0)
    ax.axhline(
        up_ttfb + 10, color="red", linestyle="--", linewidth=1, label="target: upstream + 10 ms"
    )
    ax.set_title("Cold 200 MiB blob, 1 client: time to first byte, ms (lower)", fontsize=10)
    ax.legend(fontsize=7)
    ax.margins(y=0.15)


def _fetch_groups(
    cold_rows: Sequence[Row], concurrent_rows: Sequence[Row], rss_raw: dict[str, Any] | None
) -> list[tuple[str, float | None, float | None]]:
    """Upstream GETs of the cold blob, one group per cold figure (label, ours, theirs)."""
    fetch_rows = [r for r in cold_rows if r.key == "cold.fetches"] + [
        r for r in concurrent_rows if r.key.endswith(".fetches")
    ]
    groups: list[tuple[str, float | None, float | None]] = []
    for row in fetch_rows:
        row_label = row.label.split(":")[0].removeprefix("200 MiB, ").replace(" at once", "")
        groups.append(
            (row_label + ("\n(max)" if row.key.startswith("cold_") else ""), row.ours, row.theirs)
        )
    if rss_raw:
        cold = rss_raw["cold"]
        groups.append(
            (
                f"{cold['ours']['clients']} clients\n(RSS run)",
                float(cold["ours"]["upstream_blob_gets"]),
                float(cold["theirs"]["upstream_blob_gets"]),
            )
        )
    return groups


def _summary_text(record: dict[str, Any], rows: Sequence[Row]) -> str:
    """The targets met, each judged row, and the facts of the run, wrapped at 95 columns."""
    lines = []
    for row in rows:
        if row.passed is None:
            continue
        mark = "PASS" if row.passed else "FAIL"
        lines.append(f"{mark}  {row.figure}: {row.label} — {row.target}")
    passed, judged = targets_summary(rows)
    meta = record.get("meta", {})
    machine = meta.get("machine", {})
    text = [
        f"targets met: {passed} of {judged}",
        "",
        *lines,
        "",
        f"{meta.get('started_utc', '')}  commit {str(machine.get('git_commit', ''))[:10]}"
        + (" + uncommitted changes" if machine.get("mirror_dirty") else ""),
        f"{machine.get('cores')} cores, {machine.get('cpu_model')}, "
        f"{math.floor((machine.get('memory_bytes') or 0) / 2**30)} GiB, "
        f"kernel {machine.get('kernel')}",
        f"Python {machine.get('python')}, aiohttp {machine.get('aiohttp')}; "
        f"{machine.get('distribution')}",
        f"ours env: {meta.get('ours', {}).get('env')}",
    ]
    wrapped = []
    for line in text:
        while len(line) > 95:
            wrapped.append(line[:95])
            line = "    " + line[95:]
        wrapped.append(line)
    return "\n".join(wrapped)


def _cold_panels(axes: Sequence[Any], by_prefix: dict[str, list[Row]], raw: dict[str, Any]) -> None:
    """Cold blob: time to first byte, total time, upstream GETs of the blob."""
    cold_rows = by_prefix.get("cold", [])
    concurrent_rows = by_prefix.get("cold_concurrent", [])
    ttfb = [r for r in cold_rows if r.key == "cold.ttfb"]
    if ttfb and raw.get("cold"):
        _cold_ttfb(axes[0], ttfb[0], raw["cold"])
    else:
        axes[0].set_visible(False)
    _bars(
        axes[1],
        "Cold 200 MiB blob: total time, s (lower is better)",
        [r for r in cold_rows if r.key == "cold.total"]
        + [r for r in concurrent_rows if r.key.endswith(".wall")],
        log=False,
    )
    _bars(
        axes[2],
        "Cold 200 MiB blob: upstream GETs of it (lower is better)",
        [],
        extra=_fetch_groups(cold_rows, concurrent_rows, raw.get("rss")),
        log=False,
    )


def chart(record: dict[str, Any], rows: Sequence[Row], path: Path) -> None:
    """Nine panels: warm blobs, manifests (requests/s, p99), cold time to first byte, cold
    total time, cold upstream GETs, revalidation, peak RSS, and the targets as text."""
    plt = _pyplot()
    by_prefix: dict[str, list[Row]] = {}
    for row in rows:
        by_prefix.setdefault(row.key.split(".")[0], []).append(row)
    fig, axes = plt.subplots(3, 3, figsize=(17, 13))
    flat = list(axes.flat)

    _bars(flat[0], "Warm blob throughput, MB/s (higher is better)", by_prefix.get("blob", []))
    manifest = by_prefix.get("manifest", [])
    _bars(
        flat[1],
        "Warm manifest GET, requests/s (higher is better)",
        [r for r in manifest if r.key.endswith(".rps")],
    )
    _bars(
        flat[2],
        "Warm manifest GET, p99 latency ms (lower is better)",
        [r for r in manifest if r.key.endswith(".p99")],
    )
    _cold_panels(flat[3:6], by_prefix, record.get("raw", {}))
    _bars(
        flat[6],
        "Pulls of a tag past its freshness: upstream requests (lower)",
        [r for r in by_prefix.get("revalidate", []) if r.unit == "requests"],
        log=False,
    )
    _bars(
        flat[7],
        "Peak RSS of the mirror, MB (lower is better)",
        by_prefix.get("rss", []),
        hline=(RSS_TARGET_MB, f"target {RSS_TARGET_MB:g} MB"),
        log=False,
    )
    flat[8].axis("off")
    flat[8].text(
        0, 1, _summary_text(record, rows), va="top", ha="left", fontsize=7.5, family="monospace"
    )

    fig.suptitle(
        "mirror (ours) vs distribution pull-through proxy (theirs), same upstream, same machine",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
