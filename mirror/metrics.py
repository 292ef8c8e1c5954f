"""Every Prometheus metric the mirror exports, declared in one place.

Metrics register with the default registry when this module is first imported, so a metric
is declared exactly once however many components use it. Labels take values from small,
fixed sets (an operation name, never a repository or digest), so series stay bounded.
"""

from __future__ import annotations

from prometheus_client import Counter

META_STORE_ERRORS = Counter(
    "mirror_meta_store_errors_total",
    "Metadata store calls that failed and were answered without the store.",
    ["operation"],
)
