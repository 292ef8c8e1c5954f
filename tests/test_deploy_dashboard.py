"""The Grafana dashboard charts exactly the metrics a running mirror exports, all through the
datasource variable."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from testkit.fakeupstream import Manifest
from tests.clients import pull_like_docker
from tests.conftest import Client
from tests.deploy_files import DASHBOARD


def dashboard() -> Any:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression on the dashboard: panel targets and template variables."""
    board = dashboard()
    queries = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [target["expr"] for target in inner.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmirror_[A-Za-z0-9_]+", expr))


@dataclass(frozen=True)
class Exposition:
    """What one scrape of /metrics declares: metric name -> type."""

    types: dict[str, str]

    def family(self, name: str) -> str | None:
        """The declared metric a series name in a query belongs to: the metric itself, or
        the histogram whose `_bucket`, `_sum` or `_count` series it is; None if neither."""
        if name in self.types:
            return name
        for suffix in HISTOGRAM_SERIES:
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return None


def parse_exposition(text: str) -> Exposition:
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    return Exposition(types)


@pytest.fixture
async def exposition(mirror: Client, alpine: Manifest) -> Exposition:
    """The mirror's /metrics after it has pulled an image, so most series have samples."""
    await pull_like_docker(mirror, "library/alpine", "3.19")
    resp = await mirror.get("/metrics")
    assert resp.status == 200
    return parse_exposition(await resp.text())


# --- Grafana dashboard ------------------------------------------------------------------


async def test_dashboard_queries_name_only_metrics_the_mirror_exports(
    exposition: Exposition,
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    for expr in queries:
        unknown = {name for name in metric_names(expr) if exposition.family(name) is None}
        assert not unknown, f"{expr!r} names metrics the mirror does not export: {unknown}"


async def test_dashboard_charts_every_metric_the_mirror_exports(exposition: Exposition) -> None:
    charted = {
        exposition.family(name) for expr in dashboard_queries() for name in metric_names(expr)
    }
    exported = {
        name
        for name in exposition.types
        if name.startswith("mirror_") and not name.endswith("_created")
    }
    assert exported - charted == set()


def test_dashboard_panels_all_query_the_datasource_variable() -> None:
    board = dashboard()
    (variable,) = (v for v in board["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == expected for target in panel["targets"])
