"""Autoscaling from backlog: what each queue needs of the cluster, as one `request_resources` call.

Ray's `request_resources` is one request for the whole cluster (each call replaces the last),
so the queues' consumers do not call it themselves: each reports how many workers it wants to
a `DemandLedger` (held by one named actor, see `actors.DemandActor`), which asks Ray for the
union. A queue wants a worker for every job that waits or runs, up to its `max_workers`; an idle
queue wants none, so the autoscaler may remove its nodes once they are idle. Each queue's
dispatcher tells the ledger through its `DemandReport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["DEMAND_ACTOR", "DemandLedger", "DemandReport", "wanted_workers"]

log = logging.getLogger(__name__)

# One per Ray cluster, shared by every dash-ray deployment on it (keyed by prefix and queue).
DEMAND_ACTOR = "dash:autoscaler-demand"


def wanted_workers(backlog: int, busy: int, max_workers: int) -> int:
    """Workers a queue needs: one per waiting or running job, at most `max_workers`."""
    return max(0, min(backlog + busy, max_workers))


class DemandLedger:
    """Each queue's wanted workers and their shape; `request` is called with the union on change.

    `request(bundles)` is `ray.autoscaler.sdk.request_resources(bundles=...)` in the actor,
    injected so the ledger is testable without Ray.
    """

    def __init__(self, request: Callable[[list[dict[str, float]]], None]) -> None:
        self.request = request
        self.wants: dict[str, tuple[dict[str, float], int]] = {}  # "prefix/queue" -> (bundle, count)
        self.asked: list[dict[str, float]] | None = None  # what the autoscaler was last asked for

    def report(self, key: str, bundle: dict[str, float], count: int) -> int:
        """Set one queue's wanted workers; asks again if the union changed. Returns its size."""
        if count > 0:
            self.wants[key] = (dict(bundle), count)
        else:
            self.wants.pop(key, None)
        return self._sync()

    def clear(self, prefix: str) -> int:
        """Forget every queue of one deployment (it stopped)."""
        for key in [k for k in self.wants if k.split("/", 1)[0] == prefix]:
            del self.wants[key]
        return self._sync()

    def bundles(self) -> list[dict[str, float]]:
        """The union of every queue's wanted workers, one bundle each."""
        return [dict(bundle) for bundle, count in self.wants.values() for _ in range(count)]

    def _sync(self) -> int:
        want = self.bundles()
        if want != self.asked:
            self.request(want)
            self.asked = want
            log.info("asked the autoscaler for %d worker bundles (%s)", len(want),
                     ", ".join(f"{k}: {c}" for k, (_b, c) in sorted(self.wants.items())) or "idle")
        return len(want)


class DemandReport:
    """One queue's side: tells the ledger how many workers it wants (its backlog and running jobs,
    at most `max_workers`) when that changes, and every `refresh_s` (the ledger's actor may have
    restarted and forgotten). `want(count)` reports to the ledger; None: no autoscaling."""

    def __init__(self, queue: str, want: Callable[[int], Awaitable[None]] | None, *, max_workers: int = 64,
                 refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.want = want
        self.max_workers = max_workers
        self.refresh_s = refresh_s
        self.clock = clock
        self.wanted: int | None = None  # what the ledger was last told
        self._told_at = 0.0

    @property
    def enabled(self) -> bool:
        """Whether there is a ledger to tell."""
        return self.want is not None

    async def report(self, backlog: int, busy: int) -> None:
        """Tell the ledger how many workers this queue wants, if that changed (or is due again)."""
        if self.want is None:
            return
        count = wanted_workers(backlog, busy, self.max_workers)
        now = self.clock()
        if count == self.wanted and now - self._told_at < self.refresh_s:
            return
        try:
            await self.want(count)
        except Exception as exc:  # the ledger's actor is restarting: next round
            log.warning("%s: could not report its wanted workers (%s)", self.queue, type(exc).__name__)
            return
        self.wanted, self._told_at = count, now
