"""The one bounded poll the tests use (testkit.waiting): it returns what it waited for, and
fails naming what did not happen."""

from __future__ import annotations

import itertools

import pytest

from testkit.waiting import WaitTimeout, wait_until, wait_until_sync


async def test_returns_the_first_truthy_answer_of_a_plain_or_async_predicate() -> None:
    counter = itertools.count()
    assert await wait_until(lambda: next(counter) >= 3 and "three", within=1, message="3") == (
        "three"
    )

    async def later() -> int | None:
        n = next(counter)
        return n if n >= 6 else None

    assert await wait_until(later, within=1, message="6") == 6


async def test_fails_naming_what_did_not_happen_with_the_state_at_the_deadline() -> None:
    with pytest.raises(WaitTimeout, match=r"not within 0\.05 s: the cache is empty \(holds 3\)"):
        await wait_until(lambda: False, within=0.05, message=lambda: "the cache is empty (holds 3)")


async def test_ignores_only_the_exceptions_it_is_told_mean_not_yet() -> None:
    looks = itertools.count()

    def flaky() -> bool:
        if next(looks) < 2:
            raise ConnectionError("not listening yet")
        return True

    assert await wait_until(flaky, within=1, message="up", ignoring=(ConnectionError,))
    with pytest.raises(RuntimeError, match="exited"):
        await wait_until(
            lambda: (_ for _ in ()).throw(RuntimeError("exited")), within=1, message=""
        )


def test_the_sync_twin_behaves_the_same() -> None:
    counter = itertools.count()
    assert wait_until_sync(lambda: next(counter) >= 2, within=1, message="2") is True
    with pytest.raises(WaitTimeout, match=r"not within 0\.05 s: never"):
        wait_until_sync(lambda: None, within=0.05, message="never")
