"""Singleflight: one call per key, shared results and errors, robust to callers giving up."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalesce import SingleFlight


async def test_concurrent_callers_share_one_call() -> None:
    """Ten callers, one execution; all but the first report they joined."""
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 42

    flight: SingleFlight[int] = SingleFlight()
    results = await asyncio.gather(*(flight.do("k", work) for _ in range(10)))
    assert calls == 1
    assert [r for r, _ in results] == [42] * 10
    assert sorted(j for _, j in results) == [False] + [True] * 9
    assert len(flight) == 0


async def test_errors_are_shared_and_the_next_call_runs_again() -> None:
    """A failure reaches every waiter; the key is free again afterwards."""
    calls = 0

    async def boom() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ValueError("nope")

    flight: SingleFlight[int] = SingleFlight()
    results = await asyncio.gather(*(flight.do("k", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    with pytest.raises(ValueError, match="nope"):
        await flight.do("k", boom)
    assert calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    """The first caller going away (client disconnect) leaves the call running for the rest."""

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    flight: SingleFlight[str] = SingleFlight()
    first = asyncio.create_task(flight.do("k", slow))
    await asyncio.sleep(0)
    second = asyncio.create_task(flight.do("k", slow))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second) == ("done", True)


async def test_a_failure_nobody_waits_for_any_more_is_still_retrieved() -> None:
    """Every caller gave up, then the call failed: its error is marked retrieved (no "exception
    was never retrieved" at garbage collection, an error under -W error) and the key is free."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))

    async def fails_late() -> int:
        await asyncio.sleep(0.02)
        raise ValueError("late")

    flight: SingleFlight[int] = SingleFlight()
    caller = asyncio.create_task(flight.do("k", fails_late))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0.05)
    import gc

    gc.collect()
    assert unretrieved == []
    assert len(flight) == 0


async def test_a_cancelled_call_frees_its_key() -> None:
    """A call cancelled itself (the loop shutting down) frees the key: the next caller runs anew."""
    calls = 0

    async def cancelled() -> int:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    flight: SingleFlight[int] = SingleFlight()
    with pytest.raises(asyncio.CancelledError):
        await flight.do("k", cancelled)
    await asyncio.sleep(0)
    assert len(flight) == 0
    with pytest.raises(asyncio.CancelledError):
        await flight.do("k", cancelled)
    assert calls == 2
