"""WorkerPool: a queue's GPU worker actors: start on demand, reuse, stop when idle.

The pool keeps the workers and their states (and at least `min_workers` of them warm); its
`Starter` starts new ones (as many as may wait to be placed at once) and watches each until it is
ready. What each start cost, by phase (`COLD_PHASES`), is tallied for the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COLD_PHASES", "Slot", "Starter", "WorkerPool"]

log = logging.getLogger(__name__)

# A worker's start, as its `ready` reports it: process start until its actor was built, building
# its runner (imports), preloading the models asked for, and process start until ready (all of it).
COLD_PHASES = ("processS", "importS", "loadS", "readyS")


@dataclass
class Slot:
    """One worker actor and what the pool knows of it."""

    id: int
    handle: Any
    state: str = "pending"  # pending -> idle <-> busy; dead
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    models: tuple[str, ...] = ()
    pid: int | None = None
    jobs: int = 0
    failures: int = 0  # jobs failed in a row (a worker that keeps failing is replaced)
    resources: dict[str, float] = field(default_factory=dict)
    node: str | None = None  # the Ray node it runs on
    retire: bool = False  # let go after its current jobs (its job yielded the GPU)
    gpu_bytes: int | None = None  # its GPU's memory (None: no GPU)
    device: str | None = None  # its device's name (the GPU's model, `cpu`), as the usage ledger records it
    cold: dict[str, float] | None = None  # its start's phases in seconds (COLD_PHASES; None: not reported)

    def describe(self) -> dict[str, Any]:
        """Its id, state, pid, jobs done, models held, resources, node and start phases (for stats)."""
        return {"id": self.id, "state": self.state, "pid": self.pid, "jobs": self.jobs, "models": list(self.models),
                "resources": self.resources, "node": self.node, "cold": self.cold}


class Starter:
    """Starts a pool's workers: at most `max_pending` waiting to be placed at once (and at most
    `max_size` live workers), each watched until it is ready; `start_s` is how long a new worker
    takes to be ready (a moving average of those measured)."""

    def __init__(self, pool: WorkerPool, factory: Callable[[], Any], *, max_pending: int = 4,
                 max_size: int | None = None) -> None:
        self.pool = pool
        self.factory = factory
        self.max_pending = max_pending
        self.max_size = max_size  # live workers at most (None: as many as Ray can place)
        self.start_s = 2.0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, n: int, preload: list[str] | None = None) -> int:
        """Start up to n workers without exceeding max_pending (nor max_size live workers), each
        asked to load `preload` models before it is ready; returns how many were started."""
        pool = self.pool
        started = 0
        while (started < n and pool.count("pending") < self.max_pending
               and (self.max_size is None or len(pool.slots) < self.max_size)):
            slot = Slot(id=next(self._ids), handle=self.factory())
            pool.slots[slot.id] = slot
            task = asyncio.create_task(self._await_ready(slot, list(preload or [])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def _await_ready(self, slot: Slot, preload: list[str]) -> None:
        try:
            info = await slot.handle.ready.remote(preload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("worker %d failed to start: %s", slot.id, exc)
            self.pool.discard(slot)
            return
        slot.cold = self.pool.tally_cold(info.get("cold"))  # it started, even if no longer wanted
        if slot.state != "pending":
            return
        slot.state = "idle"
        slot.last_used = time.monotonic()
        self.start_s = 0.5 * self.start_s + 0.5 * (slot.last_used - slot.created)
        slot.pid = info.get("pid")
        slot.resources = dict(info.get("resources", {}))
        slot.models = tuple(info.get("models", ()))
        slot.node = info.get("node")
        slot.gpu_bytes = info.get("gpu_bytes")
        slot.device = info.get("device")
        log.info("worker %d ready (pid %s) after %.1fs", slot.id, slot.pid, time.monotonic() - slot.created)
        self.pool.changed.set()

    def cancel(self) -> None:
        """Stop watching the workers still starting."""
        for t in list(self._tasks):
            t.cancel()


class WorkerPool:
    """Keeps worker actors of one queue. Ray places them; a worker that cannot be placed waits pending.

    `factory()` returns a new actor handle (with its GPU fraction and queue resource);
    `kill(handle)` ends one. Both are injected so the policy here is testable without Ray.
    `min_workers` stay warm: `keep_warm()` starts them, and idle ones are not reaped below it.
    """

    def __init__(self, factory: Callable[[], Any], kill: Callable[[Any], None], *, idle_s: float = 120.0,
                 max_pending: int = 4, max_size: int | None = None, min_workers: int = 0) -> None:
        self.kill = kill
        self.idle_s = idle_s
        self.min_workers = min_workers  # live workers kept (idle ones are not reaped below it)
        self.slots: dict[int, Slot] = {}
        self._cold: dict[str, dict[str, float]] = {}  # phase -> count, sum, max over every start
        self.changed = asyncio.Event()  # a worker became ready, idle or gone
        self.starter = Starter(self, factory, max_pending=max_pending, max_size=max_size)

    # --- counts ---
    def count(self, state: str) -> int:
        """Workers in a state: pending, idle or busy."""
        return sum(1 for s in self.slots.values() if s.state == state)

    # --- use ---
    def take_idle(self, model: str | None = None) -> Slot | None:
        """An idle worker, preferring one that holds `model` (then the most recently used)."""
        idle = [s for s in self.slots.values() if s.state == "idle"]
        if not idle:
            return None
        idle.sort(key=lambda s: (model is not None and model in s.models, s.last_used), reverse=True)
        slot = idle[0]
        slot.state = "busy"
        return slot

    def unreserve(self, slot: Slot) -> None:
        """Give back a worker taken with take_idle() but not used (its idle clock keeps running)."""
        if slot.state == "busy":
            slot.state = "idle"

    def prefer(self, slot: Slot, model: str | None) -> Slot:
        """Swap a reserved worker for an idle one that already holds `model` (model affinity)."""
        if model is None or model in slot.models:
            return slot
        for other in self.slots.values():
            if other.state == "idle" and model in other.models:
                self.unreserve(slot)
                other.state = "busy"
                return other
        return slot

    def release(self, slot: Slot, models: tuple[str, ...] | None = None) -> None:
        """A busy worker is idle again."""
        if slot.state == "dead":
            return
        slot.state = "idle"
        slot.last_used = time.monotonic()
        slot.jobs += 1
        if models is not None:
            slot.models = models
        self.changed.set()

    def discard(self, slot: Slot) -> None:
        """Drop a worker (dead or unwanted) and end its actor."""
        if slot.state == "dead":
            return
        slot.state = "dead"
        self.slots.pop(slot.id, None)
        with contextlib.suppress(Exception):
            self.kill(slot.handle)
        self.changed.set()

    # --- grow and shrink ---
    def keep_warm(self, preload: list[str] | None = None) -> int:
        """Start workers (loading `preload`) until min_workers are live (pending, idle or busy),
        within the starter's bounds; returns how many were started."""
        missing = self.min_workers - len(self.slots)
        return self.starter.spawn(missing, preload) if missing > 0 else 0

    def _spare(self, keep_warm: bool) -> int:
        """How many workers may go without leaving fewer than min_workers live (all if not keep_warm)."""
        return max(0, len(self.slots) - self.min_workers) if keep_warm else len(self.slots)

    def reap_idle(self, idle_s: float | None = None, *, keep_warm: bool = True) -> int:
        """Stop workers idle longer than idle_s (default: the pool's), the longest idle first, but
        none that min_workers keeps (unless not keep_warm: another queue waits for their GPU);
        returns how many."""
        now = time.monotonic()
        limit = self.idle_s if idle_s is None else idle_s
        idle = sorted((s for s in self.slots.values() if s.state == "idle" and now - s.last_used >= limit),
                      key=lambda s: s.last_used)
        reaped = idle[:self._spare(keep_warm)]
        for s in reaped:
            log.info("worker %d idle for %.0fs: stopping it", s.id, now - s.last_used)
            self.discard(s)
        return len(reaped)

    def drop_pending(self, keep: int, *, keep_warm: bool = True) -> int:
        """Cancel pending workers beyond `keep` (the backlog went away), the newest first, but none
        that min_workers keeps (unless not keep_warm)."""
        pending = sorted((s for s in self.slots.values() if s.state == "pending"), key=lambda s: s.created)
        dropped = pending[keep:][::-1][:self._spare(keep_warm)]
        for s in dropped:
            self.discard(s)
        return len(dropped)

    # --- cold starts ---
    def tally_cold(self, cold: Any) -> dict[str, float] | None:
        """Fold one worker's start phases (its ready info's `cold`) into the pool's tally; returns
        them as read (None if it reported none)."""
        if not isinstance(cold, dict):
            return None
        phases = {k: float(v) for k, v in cold.items() if isinstance(k, str) and isinstance(v, int | float)
                  and not isinstance(v, bool) and math.isfinite(v) and v >= 0}
        for phase, secs in phases.items():
            t = self._cold.setdefault(phase, {"count": 0, "sum": 0.0, "max": 0.0})
            t["count"] += 1
            t["sum"] += secs
            t["max"] = max(t["max"], secs)
        return phases

    def cold_starts(self) -> dict[str, dict[str, float]]:
        """Every worker start so far, by phase: {"count", "sum", "max"} (seconds)."""
        return {phase: dict(t) for phase, t in self._cold.items()}

    # --- waiting ---
    async def wait_change(self, timeout_s: float) -> None:
        """Wait until a worker becomes ready or idle (or the timeout)."""
        self.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout_s)

    def shutdown(self) -> None:
        """End every worker."""
        self.starter.cancel()
        for s in list(self.slots.values()):
            self.discard(s)

    def stats(self) -> dict[str, int]:
        """Workers by state."""
        return {state: self.count(state) for state in ("pending", "idle", "busy")}
