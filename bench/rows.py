"""One line of the table: a figure for both mirrors, the median of each side's runs, its
target and whether it held. `Row.to_json` is the record's `rows` format (the README quotes
it), `Row.from_json` reads it back for `--replot`."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

MB = 1_000_000  # figures are in decimal megabytes (wrk's own output uses 2^20)

Run = TypeVar("Run")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def by_side(
    runs: Mapping[str, Sequence[Run]], value: Callable[[Run], float]
) -> dict[str, list[float]]:
    """`value` of every run, by side: what `Row.of` takes."""
    return {side: [value(run) for run in side_runs] for side, side_runs in runs.items()}


@dataclass
class Row:
    """One line of the table: a figure for both mirrors."""

    key: str
    figure: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    ours: float | None
    theirs: float | None
    target: str = ""
    passed: bool | None = None
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)  # per-run values, by side

    @classmethod
    def of(
        cls,
        key: str,
        figure: str,
        label: str,
        unit: str,
        better: Literal["higher", "lower"],
        runs: Mapping[str, list[float]],
    ) -> Row:
        """A row of the medians of `runs` (side -> one value per repetition)."""
        return cls(
            key,
            figure,
            label,
            unit,
            better,
            median(runs.get("ours", [])),
            median(runs.get("theirs", [])),
            runs={side: list(values) for side, values in runs.items()},
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Row:
        return cls(
            data["key"],
            data["figure"],
            data["label"],
            data["unit"],
            data["better"],
            data["ours"],
            data["theirs"],
            target=data.get("target") or "",
            passed=data.get("passed"),
            note=data.get("note") or "",
            runs=data.get("runs") or {},
        )

    def spread(self, side: str) -> float | None:
        """Half the range of the runs, relative to their median (None for a single run)."""
        values = self.runs.get(side, [])
        middle = median(values)
        if len(values) < 2 or not middle:
            return None
        return (max(values) - min(values)) / 2 / abs(middle)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.theirs is None or self.theirs == 0:
            return None
        return self.ours / self.theirs

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "figure": self.figure,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "ours": self.ours,
            "theirs": self.theirs,
            "ratio_ours_theirs": self.ratio,
            "target": self.target or None,
            "passed": self.passed,
            "note": self.note or None,
            "runs": self.runs or None,
        }


def fetches_row(
    key: str, group: str, label: str, runs: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Row:
    """Upstream blob GETs of a cold concurrent pull: the worst run counts, not the median,
    and ours passes only if every run fetched the blob once."""
    row = Row.of(
        key,
        group,
        f"{label}: upstream fetches (max over runs)",
        "GETs",
        "lower",
        by_side(runs, lambda r: float(r["upstream_blob_gets"])),
    )
    row.ours = max(row.runs["ours"])
    row.theirs = max(row.runs["theirs"])
    row.target = "ours = 1"
    row.passed = all(r["upstream_blob_gets"] == 1 for r in runs["ours"])
    return row
