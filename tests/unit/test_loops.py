"""The one retry policy and the one supervised loop (`dash_ray.loops`), without Redis or Ray."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dash_ray.loops import Backoff, pause, supervised


def test_backoff_doubles_up_to_its_cap_within_its_jitter() -> None:
    b = Backoff(first_s=0.1, max_s=1.0)
    delays = [b.delay() for _ in range(8)]
    for n, d in enumerate(delays):
        full = min(1.0, 0.1 * 2**n)
        assert 0.5 * full <= d <= full, (n, d)
    assert b.tries == 8
    b.reset()
    assert b.tries == 0 and b.delay() <= 0.1
    wide = Backoff(first_s=10, max_s=100, jitter=(0.8, 1.2))
    assert all(8 <= wide.delay(0) <= 12 for _ in range(50))
    assert all(80 <= wide.delay(9) <= 120 for _ in range(50))  # capped, then jittered
    assert wide.tries == 0  # an explicit attempt is not counted
    assert Backoff(first_s=1, max_s=5).delay(10_000) <= 5  # no overflow on a long outage


async def test_supervised_runs_until_stopped_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    plan = ["ok", "transient", "transient", "boom", "boom", "boom", "ok", "ok"]

    async def step() -> float | None:
        what = plan[len(calls)]
        calls.append(what)
        if what == "transient":
            raise ConnectionError("away")
        if what == "boom":
            raise ValueError("a bug")
        return None

    log = logging.getLogger("test.loops")
    with caplog.at_level(logging.INFO, logger="test.loops"):
        await asyncio.wait_for(supervised("unit", step, stop=lambda: len(calls) == len(plan),
                                          backoff=Backoff(first_s=0.001, max_s=0.002),
                                          transient=lambda e: isinstance(e, ConnectionError), logger=log), 10)
    assert calls == plan
    text = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in t for t in text) == 1  # one warning per outage, not per retry
    # a bug: its traceback, once while it repeats
    assert sum("failed; retrying" in t for t in text) == 1 and sum(bool(r.exc_info) for r in caplog.records) == 1
    assert text[-1] == "unit: back"


async def test_a_cancelled_loop_stops_even_if_a_step_swallowed_the_cancel() -> None:
    entered = asyncio.Event()

    async def step() -> float:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # what a cancel inside a network call can look like
            raise ConnectionError("lost") from None
        return 0.0

    task = asyncio.create_task(supervised("swallow", step, transient=lambda e: True,
                                          backoff=Backoff(first_s=0.001, max_s=0.001)))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_pause_sleeps_when_not_cancelled() -> None:
    await asyncio.wait_for(pause(0.001), 5)
