"""The benchmark's judgement, without running it: how a row's targets against its peers
(distribution, nginx, the upstream itself) are decided and shown, and that the nginx peer's
configuration is one nginx accepts. The figures themselves come from `scripts/bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.nginx_cache import cache_site
from bench.rows import Row, fetches_row
from testkit import nginx


def cold_total(ours: float) -> Row:
    row = Row.of(
        "cold.total",
        "cold blob",
        "200 MiB, 1 client: total time",
        "s",
        "lower",
        {"ours": [ours], "distribution": [0.50], "nginx": [0.35], "upstream": [0.20]},
    )
    row.at_most("distribution")
    row.at_most("upstream", 1.5)
    return row


def manifest_rps(ours: float) -> Row:
    row = Row.of(
        "manifest.tag.c64.rps",
        "manifest by tag",
        "64 clients: requests/s",
        "req/s",
        "higher",
        {"ours": [ours, ours + 100, ours - 100], "nginx": [30_000.0], "distribution": [300.0]},
    )
    row.at_least("nginx", 0.5)
    return row


def test_a_row_passes_only_if_every_target_holds() -> None:
    assert cold_total(0.30).passed is True
    missed = cold_total(0.35)  # within distribution's time, not within 1.5x the upstream's
    assert missed.passed is False
    assert [t.passed for t in missed.targets] == [True, False]


def test_ratio_targets_compare_ours_to_the_named_peer() -> None:
    assert manifest_rps(15_000).passed is True
    assert manifest_rps(14_999).passed is False
    assert manifest_rps(15_000).ratio("nginx") == 0.5
    assert manifest_rps(15_000).ratio("distribution") == 50


def test_an_allowance_and_a_strict_bound_are_part_of_the_target() -> None:
    row = Row.of("cold.ttfb", "cold blob", "ttfb", "ms", "lower", {"ours": [14], "upstream": [4]})
    row.at_most("upstream", plus=10)
    row.at_most("upstream", 3.5, strictly=True)
    assert [(t.text, t.passed) for t in row.targets] == [
        ("≤ upstream + 10 ms", True),
        ("< 3.5x upstream", False),
    ]


def test_a_target_against_a_peer_without_a_figure_fails() -> None:
    row = Row.of("blob.200m.c1", "warm blob", "200 MiB", "MB/s", "higher", {"ours": [900]})
    row.at_least("nginx", 0.95)
    assert row.passed is False


def test_a_cold_pull_passes_only_if_every_run_fetched_the_blob_once() -> None:
    def runs(*gets: int) -> list[dict[str, int]]:
        return [{"upstream_blob_gets": n} for n in gets]

    once = fetches_row("f", "cold", "20 clients", {"ours": runs(1, 1), "nginx": runs(1, 2)})
    assert once.passed is True
    assert once.values == {"ours": 1, "nginx": 2}  # the worst run, not the median
    twice = fetches_row("f", "cold", "20 clients", {"ours": runs(1, 2, 1)})
    assert twice.passed is False


def test_the_table_shows_each_peer_with_ours_over_it_and_which_target_was_missed() -> None:
    text = report.table([cold_total(0.35), manifest_rps(9_000)])
    header, _, cold, manifest, _legend = text.splitlines()
    assert header.split()[2:6] == ["ours", "distribution", "nginx", "upstream"]
    assert "0.50 (0.70x)" in cold and "0.20 (1.75x)" in cold
    assert "≤ distribution; ≤ 1.5x upstream (missed)" in cold and cold.endswith("FAIL")
    assert "30,000 (0.30x)" in manifest and "300 (30.00x)" in manifest


def test_the_markdown_table_has_a_column_per_side_and_bolds_failures() -> None:
    text = report.markdown({"meta": {"command": "scripts/bench"}}, [cold_total(0.35)])
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| figure"))
    assert header == "| figure | unit | ours | distribution | nginx | upstream | target | result |"
    assert any(line.endswith("| **FAIL** |") for line in lines)
    assert "Targets met: 0 of 1." in lines


def test_rows_read_back_from_the_record_as_they_were_written() -> None:
    row = cold_total(0.35)
    again = Row.from_json(row.to_json())
    assert again == row
    assert row.to_json()["ratios"]["ours/upstream"] == pytest.approx(1.75)


def test_nginx_accepts_the_configuration_of_its_cache_peer(tmp_path: Path) -> None:
    site = cache_site("127.0.0.1:5001", tmp_path / "cache", token="header.payload.signature")
    result = nginx.check(tmp_path, site)
    assert result.returncode == 0, result.stderr
