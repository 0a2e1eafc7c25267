"""What crosses the Ray boundary between a queue's consumer and its workers, typed.

The consumer sends `run(jobs: list[JobContext], budget_s)`; the worker answers a `BatchReply`
with one `Outcome` per job, in order. `cancel(job_id)` is the one other call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SKIPPED", "BatchReply", "Outcome", "OutcomeKind"]

OutcomeKind = Literal["done", "failed", "cancelled", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What one job's attempt on a worker came to.

    `done` with its `result`; `failed` with its `error` (`retry`: another attempt may help);
    `cancelled`; `skipped`: it goes back to the head of its queue, no attempt used: handed out
    in a batch but never started, or (with `error` saying why) interrupted by a shutdown or
    preempted (`preempted`: it yielded its GPU at a checkpoint to jobs of other queues).
    `run_s`: how long it ran on the worker; `trace`: a failure's traceback, for operators.
    """

    kind: OutcomeKind
    result: Any = None
    error: str = ""
    retry: bool = False
    run_s: float | None = None
    trace: str = ""  # the failure's traceback (for BullMQ's job stacktrace, which tools show)
    preempted: bool = False  # skipped because it yielded its GPU (its worker is let go)
    memory: tuple[str, int] | None = None  # its peak memory: ("cuda", bytes) or ("rss", bytes)
    lost: bool = False  # its worker died under it, not killed for it: the attempt is not its owner's to pay
    cpu_s: float | None = None  # the CPU seconds its worker process spent on it (a batch's pass split)

    @classmethod
    def failure(cls, error: str, retry: bool = True) -> Outcome:
        """A failed attempt."""
        return cls("failed", error=error, retry=retry)


SKIPPED = Outcome("skipped")


@dataclass(frozen=True)
class BatchReply:
    """A worker's answer to one `run` call: an outcome per job, and the models it now holds."""

    outcomes: list[Outcome]
    models: tuple[str, ...] = ()
