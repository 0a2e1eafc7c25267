"""Timetable: the dispatcher's periodic work on one clock.

Each entry runs every `every_s`, rounded to whole ticks; `tick()` runs the entries due and
returns the pause before the next tick, so a `loops.supervised` loop drives it. An entry that
fails is logged (a transient error once per outage) and does not stop the others: the watchdog
keeps its deadlines while Redis is away.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dash_ray.queues import is_transient

__all__ = ["Timetable"]

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    name: str
    every: int  # in ticks
    action: Callable[[], Awaitable[object] | object]
    failing: bool = False


class Timetable:
    """Periodic entries run on ticks of `tick_s`, in the order they were added."""

    def __init__(self, tick_s: float = 0.5, *, name: str = "") -> None:
        self.tick_s = tick_s
        self.name = name  # for logs: whose timetable
        self.ticks = 0
        self.entries: list[_Entry] = []

    def every(self, every_s: float, name: str, action: Callable[[], Awaitable[object] | object]) -> None:
        """Run `action` (plain or async) every `every_s` (at least every tick)."""
        self.entries.append(_Entry(name, max(1, round(every_s / self.tick_s)), action))

    async def tick(self) -> float:
        """Run the entries due at the next tick; returns the pause until the one after."""
        self.ticks += 1
        for entry in self.entries:
            if self.ticks % entry.every:
                continue
            try:
                done = entry.action()
                if inspect.isawaitable(done):
                    await done
                if entry.failing:
                    log.info("%s on %s: back", entry.name, self.name)
                entry.failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("%s failed on %s", entry.name, self.name)
                elif not entry.failing:
                    log.warning("%s on %s: Redis unavailable (%s)", entry.name, self.name, type(exc).__name__)
                entry.failing = True
        return self.tick_s
