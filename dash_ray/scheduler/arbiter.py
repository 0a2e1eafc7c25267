"""Arbiter: one queue's side of GPU arbitration across queues, with the state it keeps between
rounds (the policy itself is scheduler/preempt.py's pure functions).

Each round it says since when this queue is starved (workers pending while jobs wait, written
to its capacity board), reads the other queues' boards, and decides: hold off new workers while
a queue this one yields to is starved, let idle workers go while any other queue is starved,
and ask one running job to yield its GPU when a queue it yields to has waited long enough.
`board` is the consumer's `CapacityBoard` (duck-typed: tested with a fake).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from dash_ray.scheduler.preempt import Arbitration, Candidate, starved_for, to_preempt

__all__ = ["Arbiter"]

log = logging.getLogger(__name__)


class _Running(Protocol):
    id: str
    priority: int


class Arbiter:
    """Starvation and preemption for one queue."""

    def __init__(self, queue: str, board: Any, arb: Arbitration | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.board = board
        self.arb = arb or Arbitration()
        self.clock = clock  # wall time: the boards of other processes compare it
        self.starved_since = 0.0  # since when this queue is starved (0: it is not)
        self.peers_starved = False  # a queue this one yields to is starved: start no workers
        self.yield_idle = False  # nothing to do here while another queue is starved: idle workers go
        self.asked: set[str] = set()  # running jobs asked to yield

    def starving(self, pending: int, backlog: int) -> float:
        """Note this queue's workers pending and jobs waiting; returns since when it is starved."""
        if pending and backlog:
            self.starved_since = self.starved_since or self.clock()
        else:
            self.starved_since = 0.0
        return self.starved_since

    async def arbitrate(self, backlog: int, running: Mapping[str, _Running]) -> None:
        """GPU arbitration (scheduler/preempt.py): ask a running job to yield to a starved queue,
        hold off new workers while one is starved, let idle workers go when another queue
        waits for their GPU share."""
        caps = await self.board.capacities(self.arb.peers)
        now = self.clock()
        starved = {q: starved_for(cap, now) for q, cap in caps.items()}
        yield_to = max((starved.get(q, 0.0) for q in self.arb.yields_to), default=0.0)
        self.peers_starved = self.arb.preemptible and yield_to > 0
        yield_idle = backlog == 0 and max(starved.values(), default=0.0) >= self.arb.idle_after_s
        if yield_idle and not self.yield_idle:
            log.info("%s: idle, while %s waits for a GPU share: its idle workers go", self.queue,
                     max(starved, key=starved.__getitem__))
        self.yield_idle = yield_idle
        if not self.arb.preemptible or not running or yield_to < self.arb.after_s:
            return
        self.asked &= set(running)
        counts = await self.board.preemptions(running)
        pick = to_preempt([Candidate(j.id, j.priority, counts.get(j.id, 0)) for j in running.values()],
                          yield_to, self.arb, self.asked)
        if pick is not None:
            await self.board.ask_yield(pick)
            self.asked.add(pick)
            log.info("%s: asked job %s to yield its GPU at its next checkpoint (queues starved %.0fs: %s)",
                     self.queue, pick, yield_to, [q for q in self.arb.yields_to if starved.get(q)],
                     extra={"job_id": pick})

    async def ended(self, job_ids: Iterable[str]) -> None:
        """These jobs' attempts are over: one asked to yield is no longer asked."""
        for job_id in job_ids:
            if job_id in self.asked:
                self.asked.discard(job_id)
                with contextlib.suppress(Exception):
                    await self.board.clear_yield(job_id)
