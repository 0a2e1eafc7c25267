"""GPU arbitration across queues: a queue whose jobs wait because its workers cannot be placed
("starved": workers pending and jobs waiting) gets the GPU back from the others.

- A preemptible queue (training by default) whose running job holds a GPU while a queue it
  yields to (generation, upscaling) has been starved for `after_s` asks that job to yield at its
  next checkpoint. The job's attempt ends without using an attempt; it goes back to the head of
  its queue, its worker is let go (freeing the GPU) and it resumes from the checkpoint. A job is
  asked at most `max_preemptions` times; priority-1 jobs never.
- While a queue it yields to is starved, a preemptible queue starts no new workers (they would
  race the starved queue's for the GPU just freed).
- Any queue whose workers sit idle with nothing to do lets them go at once while another queue
  has been starved for `idle_after_s` (otherwise they would hold their GPU share until
  DASH_WORKER_IDLE_S): so a preempted training job gets its GPU back when the burst is over.

Each queue's consumer writes whether it is starved, and since when, with its workers
(`Keys.capacity`); the policy here reads those. Pure functions: tested without Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Arbitration", "Candidate", "starved_for", "to_preempt"]


@dataclass(frozen=True)
class Arbitration:
    """One queue's part in GPU arbitration."""

    preemptible: bool = False  # its running jobs may be asked to yield
    yields_to: tuple[str, ...] = ()  # the queues whose starving preempts its jobs
    peers: tuple[str, ...] = ()  # every other queue (idle workers yield to any starved one)
    after_s: float = 60.0
    max_preemptions: int = 2
    idle_after_s: float = 2.0


@dataclass(frozen=True)
class Candidate:
    """A running job: its id, priority (1 = high) and how often it was preempted already."""

    job_id: str
    priority: int
    preemptions: int


def starved_for(capacity: Mapping[str, str] | None, now: float) -> float:
    """Seconds a queue has been starved (workers pending, jobs waiting) by its capacity hash."""
    since = float((capacity or {}).get("starved", 0) or 0)
    return max(0.0, now - since) if since > 0 else 0.0


def to_preempt(running: Iterable[Candidate], starved_s: float, arb: Arbitration, asked: set[str]) -> str | None:
    """The running job to ask to yield now, if any: one at a time (none while one asked is
    still running), never priority 1, at most `max_preemptions` times each; the lowest priority
    first."""
    if not arb.preemptible or starved_s < arb.after_s or asked:
        return None
    eligible = [c for c in running if c.priority != 1 and c.preemptions < arb.max_preemptions]
    if not eligible:
        return None
    return max(eligible, key=lambda c: (c.priority, -c.preemptions)).job_id
