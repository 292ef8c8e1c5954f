"""The figures, each taken for ours and its peers in one run, and the table of them.

    wrk_driver.py    one observed wrk run (CPU of every process, peak RSS, upstream
                     requests) and a load's warm-up and alternating repetitions
    warm_blobs.py    warm blob throughput
    manifests.py     warm manifest GETs by tag and by digest
    revalidation.py  upstream requests of pulls past a tag's freshness time
    cold_pulls.py    cold blob, one client and many at once
    peak_rss.py      the mirror's peak memory with many clients, cold and warm
    s3_hot.py        warm blobs of ours on S3 storage (hot cache) against the filesystem

A figure is a function of the run's `Bench` that appends its rows to `bench.rows` and its
numbers to `bench.raw`; `FIGURES` lists them in the order a run takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.figures import cold_pulls, manifests, peak_rss, revalidation, s3_hot, warm_blobs
from bench.session import Bench


@dataclass(frozen=True)
class Figure:
    name: str  # as `--only` takes it
    images: tuple[str, ...]  # the seeded images it needs
    warm: bool  # every side must answer its images from its cache before it runs
    take: Callable[[Bench], None]


FIGURES: tuple[Figure, ...] = (
    Figure("blob", warm_blobs.BLOBS, True, warm_blobs.blob),
    Figure("manifest", ("small",), True, manifests.manifest),
    Figure("revalidate", ("small",), False, revalidation.revalidate),
    Figure("cold", ("200m",), False, cold_pulls.cold),
    Figure("cold-concurrent", ("200m",), False, cold_pulls.cold_concurrent),
    Figure("rss", ("200m",), True, peak_rss.rss),
    Figure("s3", (s3_hot.IMAGE,), False, s3_hot.s3_hot),
)
NAMES = tuple(figure.name for figure in FIGURES)
