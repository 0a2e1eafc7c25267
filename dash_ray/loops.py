"""Background loops, supervised: the one retry policy (`Backoff`), the one pause a loop takes
(`pause`), and the one loop helper (`supervised`) that every background task of dash-ray runs in
(the dispatcher and its housekeeping, the consumer's maintenance, the webhook sender, pub/sub,
the socket refresher, the client's reconnects).

Standard library only: the client imports it too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "pause", "supervised"]

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential backoff with jitter: the n-th retry (from 0) waits `first_s * 2**n`, at most
    `max_s`, times a random factor in `jitter` (by default [0.5, 1)) so that many clients do not
    retry in step."""

    first_s: float = 0.1
    max_s: float = 5.0
    jitter: tuple[float, float] = (0.5, 1.0)
    tries: int = field(default=0, compare=False)

    def delay(self, attempt: int | None = None) -> float:
        """The pause before retry number `attempt` (default: the next one, which it counts)."""
        if attempt is None:
            attempt = self.tries
            self.tries += 1
        return min(self.max_s, self.first_s * 2 ** min(attempt, 60)) * random.uniform(*self.jitter)

    def reset(self) -> None:
        self.tries = 0

    async def sleep(self) -> None:
        await pause(self.delay())


async def pause(delay_s: float) -> None:
    """The pause of a loop that retries or polls: `asyncio.sleep`, unless its task has been
    cancelled (and not taken it back), which then stops here.

    A cancel that lands inside a network call can be lost: it comes out as a connection or
    time-out error, or not at all, and a loop that went on would never stop; its closer would
    wait for ever. (Python 3.10 cannot tell: there the loops whose closers wait on them also stop
    on a flag their closer sets: `supervised(stop=...)`.)"""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError()
    await asyncio.sleep(delay_s)


def _never(exc: BaseException) -> bool:
    return False


async def supervised(
    name: str,
    step: Callable[[], Awaitable[float | None]],
    *,
    stop: Callable[[], bool] = lambda: False,
    backoff: Backoff | None = None,
    transient: Callable[[BaseException], bool] = _never,
    logger: logging.Logger | None = None,
) -> None:
    """Run `step` again and again until `stop()` says so or the task is cancelled.

    `step` returns the pause before its next run (None or 0: at once, after yielding to the
    loop). When it raises, the loop logs it — a `transient` error (the network or Redis away) as
    one warning per outage, anything else with its traceback, once per kind of error in a row of
    failures — waits `backoff`'s next delay and goes on; the first step that succeeds resets the
    backoff."""
    backoff = backoff or Backoff()
    out = logger or log
    failing: type[BaseException] | None = None  # the last error's type while steps keep failing
    while not stop():
        try:
            delay = await step()
            if failing is not None:
                out.info("%s: back", name)
            failing = None
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if type(exc) is failing:
                out.debug("%s failed again: %s", name, exc)
            elif transient(exc):
                out.warning("%s: unavailable (%s: %s); retrying", name, type(exc).__name__, exc)
            else:
                out.exception("%s failed; retrying", name)
            failing = type(exc)
            delay = backoff.delay()
        if delay:
            await pause(delay)
        else:
            await asyncio.sleep(0)
