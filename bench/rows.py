"""One line of the table: a figure's medians for ours and for each peer it was compared with
(distribution, nginx, the upstream itself), its targets and whether they held. `Row.to_json`
is the record's `rows` format (the README quotes it), `Row.from_json` reads it back for
`--replot`."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

MB = 1_000_000  # figures are in decimal megabytes (wrk's own output uses 2^20)
OURS = "ours"  # the side every row judges; the others are its peers

Run = TypeVar("Run")


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def by_side(
    runs: Mapping[str, Sequence[Run]], value: Callable[[Run], float]
) -> dict[str, list[float]]:
    """`value` of every run, by side: what `Row.of` takes."""
    return {side: [value(run) for run in side_runs] for side, side_runs in runs.items()}


@dataclass(frozen=True)
class Target:
    """One requirement on ours, as the table shows it, and whether it held."""

    text: str
    passed: bool


@dataclass
class Row:
    """One line of the table: a figure for ours and its peers."""

    key: str
    figure: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    values: dict[str, float | None]  # side -> median of its runs (kept ours first)
    targets: list[Target] = field(default_factory=list)
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)  # per-run values, by side

    def __post_init__(self) -> None:
        self.values = dict(sorted(self.values.items(), key=lambda item: item[0] != OURS))

    @classmethod
    def of(
        cls,
        key: str,
        figure: str,
        label: str,
        unit: str,
        better: Literal["higher", "lower"],
        runs: Mapping[str, Sequence[float]],
    ) -> Row:
        """A row of the medians of `runs` (side -> one value per repetition)."""
        return cls(
            key,
            figure,
            label,
            unit,
            better,
            {side: median(values) for side, values in runs.items()},
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
            dict(data["values"]),
            targets=[Target(t["text"], t["passed"]) for t in data.get("targets") or []],
            note=data.get("note") or "",
            runs=data.get("runs") or {},
        )

    @property
    def ours(self) -> float | None:
        return self.values.get(OURS)

    @property
    def peers(self) -> list[str]:
        return [side for side in self.values if side != OURS]

    def ratio(self, peer: str) -> float | None:
        """Ours / `peer`, None if either is missing."""
        theirs = self.values.get(peer)
        if self.ours is None or not theirs:
            return None
        return self.ours / theirs

    def spread(self, side: str) -> float | None:
        """Half the range of the runs, relative to their median (None for a single run)."""
        values = self.runs.get(side, [])
        middle = median(values)
        if len(values) < 2 or not middle:
            return None
        return (max(values) - min(values)) / 2 / abs(middle)

    @property
    def passed(self) -> bool | None:
        """All targets held; None for a row without targets."""
        return all(t.passed for t in self.targets) if self.targets else None

    # --- targets ------------------------------------------------------------------------

    def require(self, text: str, passed: bool) -> None:
        self.targets.append(Target(text, passed))

    def at_least(self, peer: str, times: float) -> None:
        """Target: ours ≥ `times` x `peer`."""
        ratio = self.ratio(peer)
        self.require(f"≥ {times:g}x {peer}", ratio is not None and ratio >= times)

    def at_most(
        self, peer: str, times: float = 1.0, *, plus: float = 0.0, strictly: bool = False
    ) -> None:
        """Target: ours ≤ `times` x `peer` + `plus` (< with `strictly`)."""
        theirs = self.values.get(peer)
        scaled = peer if times == 1 else f"{times:g}x {peer}"
        text = f"{'<' if strictly else '≤'} {scaled}" + (f" + {plus:g} {self.unit}" if plus else "")
        if self.ours is None or theirs is None:
            self.require(text, False)
            return
        limit = times * theirs + plus
        self.require(text, self.ours < limit if strictly else self.ours <= limit)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "figure": self.figure,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "values": self.values,
            "ratios": {f"{OURS}/{peer}": self.ratio(peer) for peer in self.peers},
            "targets": [{"text": t.text, "passed": t.passed} for t in self.targets] or None,
            "passed": self.passed,
            "note": self.note or None,
            "runs": self.runs or None,
        }


def fetches_row(
    key: str, group: str, label: str, runs: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Row:
    """Upstream blob GETs of a cold concurrent pull: the worst run counts, not the median,
    and ours passes only if every run fetched the blob once."""
    gets = by_side(runs, lambda r: float(r["upstream_blob_gets"]))
    row = Row(
        key,
        group,
        f"{label}: upstream fetches (worst run)",
        "GETs",
        "lower",
        {side: max(values) for side, values in gets.items()},
        runs=gets,
    )
    row.require("ours = 1 in every run", all(r["upstream_blob_gets"] == 1 for r in runs[OURS]))
    return row
