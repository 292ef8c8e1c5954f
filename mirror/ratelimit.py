"""Docker Hub's pull budget, as its `ratelimit-limit` / `ratelimit-remaining` headers tell it.

Hub sends them on manifest GET and HEAD (`ratelimit-remaining: 20;w=21600`: 20 pulls left in
a 6-hour window). No headers means the pull is not limited.

A used-up budget defers revalidation until its window rolls over; with no `w=` (or an absurd
one) that would be forever, since a deferring mirror never asks again and never sees the
budget refilled. So an untold window counts as `UNTOLD_WINDOW_SECONDS` and none is taken
as longer than `MAX_WINDOW_SECONDS`: the upstream is asked again after that.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

# ASCII digits only (`str.isdigit` also takes "²", which `int` refuses), and few enough that
# a hostile header cannot make `int` work hard.
_NUMBER = re.compile(r"[0-9]{1,18}")
UNTOLD_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int
    window: int  # seconds, from `;w=`; 0 when not given
    observed_at: float  # unix time

    def exhausted(self, floor: int, now: float) -> bool:
        """True while the remaining budget is at or below `floor` and the window that
        budget belongs to has not yet rolled over (see the module's note on windows)."""
        window = min(self.window, MAX_WINDOW_SECONDS) if self.window > 0 else UNTOLD_WINDOW_SECONDS
        return self.remaining <= floor and now - self.observed_at < window


def parse_ratelimit(headers: Mapping[str, str], now: float | None = None) -> RateLimit | None:
    """Read the headers; None when absent or malformed (then there is nothing to respect)."""
    limit = _parse(headers.get("ratelimit-limit"))
    remaining = _parse(headers.get("ratelimit-remaining"))
    if limit is None or remaining is None:
        return None
    return RateLimit(
        limit=limit[0],
        remaining=remaining[0],
        window=remaining[1] or limit[1],
        observed_at=time.time() if now is None else now,
    )


def _parse(value: str | None) -> tuple[int, int] | None:
    """`100;w=21600` -> (100, 21600); `100` -> (100, 0)."""
    if not value:
        return None
    count, _, params = value.partition(";")
    if not _NUMBER.fullmatch(count.strip()):
        return None
    window = 0
    for param in params.split(";"):
        key, _, number = param.partition("=")
        if key.strip().lower() == "w" and _NUMBER.fullmatch(number.strip()):
            window = int(number)
    return int(count), window
