"""The mirror's Prometheus metrics as a dict, and how much a counter moved between two
scrapes (summed over the samples that carry the given labels)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Client

Labels = frozenset[tuple[str, str]]


async def scrape(mirror: Client) -> dict[tuple[str, Labels], float]:
    resp = await mirror.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await resp.text())


def parse(text: str) -> dict[tuple[str, Labels], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(
    after: Mapping[tuple[str, Labels], float],
    before: Mapping[tuple[str, Labels], float],
    name: str,
    **labels: str,
) -> float:
    """How much the sum of `name`'s samples having `labels` grew."""

    def total(samples: Mapping[tuple[str, Labels], float]) -> float:
        wanted = set(labels.items())
        return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)

    return total(after) - total(before)
