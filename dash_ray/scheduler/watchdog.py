"""Watchdog: which job runs on which worker, and the deadlines that end a worker that does not
let go: a job's run-time limit, the grace after a cancel, and the heartbeat (a busy worker that
stops answering). It kills the worker (its pending Ray call then fails) and keeps why, for the
outcome the dispatcher records.

Plain code: `kill(handle)` ends an actor and handles are duck-typed (`info.remote()`,
`cancel.remote(job_id)`), so it is tested with fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from dash_ray.scheduler.pool import Slot

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)


class Watchdog:
    """Deadlines and heartbeats of one queue's running jobs."""

    def __init__(self, kill: Callable[[Any], None], *, cancel_grace_s: float = 3.0,
                 heartbeat_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kill = kill
        self.cancel_grace_s = cancel_grace_s  # a cancelled job that has not stopped by then: its worker is killed
        self.heartbeat_timeout_s = heartbeat_timeout_s  # a busy worker silent this long is killed
        self.clock = clock
        self.running: dict[str, Slot] = {}  # job id -> the worker running it
        self.deadlines: dict[str, tuple[float, str]] = {}  # job id -> (deadline on `clock`, why it ends)
        self.kill_reasons: dict[int, str] = {}  # worker slot id -> why it was killed
        self.pings: dict[int, asyncio.Task[None]] = {}  # worker slot id -> its heartbeat in flight
        # A job past its time limit that can end alone (a member of a batched pass whose others run
        # on): `overdue(job_id, why)` ends it and returns True; else its worker is killed.
        self.overdue: Callable[[str, str], bool] | None = None

    def track(self, job_id: str, slot: Slot, limit_s: float) -> None:
        """A job starts on a worker, with its run-time limit."""
        self.running[job_id] = slot
        self.deadlines[job_id] = (self.clock() + limit_s, f"timeout: ran longer than {limit_s:g}s")

    def untrack(self, job_id: str) -> None:
        """The job's attempt is over."""
        self.running.pop(job_id, None)
        self.deadlines.pop(job_id, None)

    def killed(self, slot: Slot) -> str | None:
        """Why the watchdog killed this worker (None: it did not); forgets it."""
        return self.kill_reasons.pop(slot.id, None)

    def on_cancel(self, _channel: str, job_id: str) -> None:
        """The one cancel notification: tell the job's worker now, and kill the worker if the job
        has not stopped within the grace period (a hung job). A job not handed to a worker yet
        learns of its cancel flag with its first event."""
        slot = self.running.get(job_id)
        if slot is not None:
            log.info("cancelling running job %s", job_id, extra={"job_id": job_id})
            slot.handle.cancel.remote(job_id)
            deadline = self.clock() + self.cancel_grace_s
            if deadline < self.deadlines.get(job_id, (float("inf"), ""))[0]:
                self.deadlines[job_id] = (deadline, "cancelled")

    def watch(self) -> None:
        """Kill the worker of a job past its deadline (its run-time limit, or the grace after a
        cancel): a hung or stopped worker cannot hold its GPU slot or its job forever."""
        now = self.clock()
        for job_id, (deadline, why) in list(self.deadlines.items()):
            slot = self.running.get(job_id)
            if slot is None or now < deadline or slot.id in self.kill_reasons:
                continue
            if why != "cancelled" and self.overdue is not None and self.overdue(job_id, why):
                continue
            log.warning("job %s: %s; killing worker %d (pid %s)", job_id, why, slot.id, slot.pid,
                        extra={"job_id": job_id})
            self._kill(slot, why)

    def heartbeat(self) -> None:
        """Ask each busy worker whether its process answers (its `info`, on the actor's control
        thread, answers while a job runs); `_ping` kills one that stays silent."""
        for slot in {s.id: s for s in self.running.values()}.values():
            if slot.id not in self.pings:
                self.pings[slot.id] = asyncio.create_task(self._ping(slot), name=f"ping-{slot.id}")

    async def _ping(self, slot: Slot) -> None:
        try:
            await asyncio.wait_for(slot.handle.info.remote(), self.heartbeat_timeout_s)
        except asyncio.TimeoutError:  # not TimeoutError: that is another class before Python 3.11
            if slot in self.running.values() and slot.id not in self.kill_reasons:
                why = f"timeout: the worker stopped answering for {self.heartbeat_timeout_s:g}s (hung or stopped)"
                log.warning("worker %d (pid %s): %s; killing it", slot.id, slot.pid, why)
                self._kill(slot, why)
        except Exception:
            pass  # the worker died: its pending call fails, and the dispatcher records the outcome
        finally:
            self.pings.pop(slot.id, None)

    def _kill(self, slot: Slot, why: str) -> None:
        self.kill_reasons[slot.id] = why
        self.kill(slot.handle)  # its pending call fails; the outcome says why

    def close(self) -> None:
        """Stop the heartbeats in flight."""
        for task in list(self.pings.values()):
            task.cancel()
