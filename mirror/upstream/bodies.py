"""Reading a small upstream body whole (a token, a manifest, a tag list): however it arrives
(several reads, chunked), and never more than a cap, so a hostile or broken upstream cannot
make the mirror buffer without bound."""

from __future__ import annotations

import aiohttp


class BodyTooLarge(Exception):
    """The body (or its declared length) is over the cap."""


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or BodyTooLarge past `limit` bytes (checked against the declared
    length first, then as it arrives)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLarge
    parts: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)
