"""Measurements: what one queue's dispatcher learns from its jobs' outcomes, and what it decides
from it. A job's run time on its worker sizes the batches (`batch_size`); run times by job shape
are the costs behind ETAs (`CostBook`, written to Redis); peak memory by job shape sizes the
GPU share of the next workers (`MemoryBook`, scheduler/sizing.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from dash_ray.models.cost import cost_shape
from dash_ray.queues import ActiveJob, CostBook
from dash_ray.scheduler.contract import Outcome
from dash_ray.scheduler.pool import Slot
from dash_ray.scheduler.sizing import MemoryBook

__all__ = ["Measurements"]


class Measurements:
    """One queue's measurement book: job run times, costs by shape, memory peaks."""

    def __init__(self, queue: str, *, batch_budget_s: float = 0.02, max_batch: int = 8,
                 gpu_fraction: float = 0.0, batch_rows: int = 1) -> None:
        self.queue = queue
        self.batch_rows = batch_rows  # > 1: a batching queue's rows per pass (its jobs run together)
        self.batch_budget_s = batch_budget_s
        self.max_batch = max_batch
        self.gpu_fraction = gpu_fraction  # the configured GPU share of a worker (0: none)
        self.cost_s: float | None = None  # moving average of a job's run time on its worker
        self.costs = CostBook()  # measured seconds per unit by job shape, written to Redis for ETAs
        self.memory = MemoryBook()  # measured peak memory by job shape: sizes the GPU fraction

    def batch_size(self) -> int:
        """How many jobs to hand a worker in one Ray call.

        A batching queue's rows per pass (compatible jobs run in one pass, `QueueDef.batch`).
        Otherwise one, unless this queue's jobs have been measured to be short: then as many as fit in
        `batch_budget_s` (at most `max_batch`). A Ray call costs ~2 ms of CPU in all, which
        dwarfs a job of a millisecond, while a batch of 0.1 s jobs would make a later
        higher-priority job wait behind it; the budget bounds that wait.
        """
        if self.batch_rows > 1:
            return self.batch_rows
        if self.cost_s is None or self.batch_budget_s <= 0 or self.max_batch <= 1:
            return 1
        return max(1, min(self.max_batch, int(self.batch_budget_s / max(self.cost_s, 1e-4))))

    def ran(self, job: ActiveJob, outcome: Outcome) -> None:
        """Fold one job's outcome in: its run time on its worker into the queue's moving average,
        a completed job's peak memory into its shape's."""
        if outcome.run_s is not None:
            seconds = outcome.run_s
            self.cost_s = seconds if self.cost_s is None else 0.8 * self.cost_s + 0.2 * seconds
        if outcome.kind in ("done", "failed") and outcome.memory is not None:  # failed: out of memory
            self.memory.measured(cost_shape(self.queue, job.data)[0], *outcome.memory)

    def costed(self, jobs: list[ActiveJob], outcomes: list[Outcome], wall_s: float, shared: bool = False) -> None:
        """Fold the completed jobs of one round into the costs for ETAs, as the seconds they held
        their slot: their run times scaled up to the round's wall time, which adds the Ray call,
        writing the outcome and taking the next job (on a busy machine a fair share of a short
        job's turn). Jobs that `shared` one pass (a batch) split its wall time."""
        if shared:
            for job, outcome in zip(jobs, outcomes, strict=True):
                if outcome.kind == "done":
                    self.costs.measured(self.queue, job.data, wall_s / len(jobs))
            return
        run = sum(o.run_s for o in outcomes if o.run_s is not None)
        scale = max(1.0, wall_s / run) if run > 0 else 1.0
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome.kind == "done" and outcome.run_s is not None:
                self.costs.measured(self.queue, job.data, outcome.run_s * scale)

    def worker_fraction(self) -> float:
        """The GPU share the queue's next workers ask for: sized by the measured peaks
        (scheduler/sizing.py), within the configured one."""
        return self.memory.fraction(self.gpu_fraction) if self.gpu_fraction > 0 else 0.0

    def gpus_seen(self, slots: Iterable[Slot]) -> None:
        """Note the GPU size the workers report (the largest; kept when none report one)."""
        gpus = [s.gpu_bytes for s in slots if s.gpu_bytes]
        self.memory.gpu_bytes = max(gpus) if gpus else self.memory.gpu_bytes

    def new_peaks(self) -> dict[str, tuple[str, int]] | None:
        """The memory peaks to write, if they changed since the last call (else None)."""
        peaks = dict(self.memory.peaks) if self.memory.dirty else None
        self.memory.dirty = False
        return peaks
