"""A job's status: the one list of statuses, which of them are final, and the one derivation of a
job's status from what Redis keeps (BullMQ's state, refined by our job hash).

Everything that asks "is this job over?" asks `is_final`; the Lua scripts get `FINAL` as generated
constants (`queues/lua/`), the client and the gateway import it from here.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

__all__ = ["CANCELLING", "FAILURES", "FINAL", "FINAL_EVENT_TYPES", "JobStatus", "Status", "derive", "guess_bull_state", "is_failure",
           "is_final"]

JobStatus = Literal["waiting", "delayed", "active", "retrying", "completed", "failed", "cancelled", "expired"]


class Status(str, Enum):
    """The statuses a job can have, as they appear on the wire."""

    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not started by its deadline (`options.startBy`): never ran, not retried


assert {s.value for s in Status} == set(get_args(JobStatus))

FINAL: frozenset[str] = frozenset({Status.COMPLETED.value, Status.FAILED.value, Status.CANCELLED.value,
                                   Status.EXPIRED.value})
FINAL_EVENT_TYPES: frozenset[str] = frozenset({"job:completed", "job:failed"})
# The final statuses without a result: what a `job:failed` event carries (`status`).
FAILURES: frozenset[str] = FINAL - {Status.COMPLETED.value}
# A field of our job hash: "1" while an attempt is being ended as cancelled ("expired": as
# expired), from before BullMQ's move to failed until the final event (which deletes it): see `derive`.
CANCELLING = "cancelling"


def is_final(status: str | None) -> bool:
    """Whether a job with this status is over for good (completed, failed, cancelled or expired)."""
    return status in FINAL


def is_failure(status: str | None) -> bool:
    """Whether a job with this status is over without a result (failed, cancelled or expired)."""
    return status in FAILURES


def derive(bull_state: str | None, ours: str | None, attempts_made: int, cancelling: bool | str | None = False) -> str:
    """Our status from BullMQ's state (the truth) refined by our hash's status (cancelled,
    retrying). `bull_state` is what BullMQ's `getState` answers (None or "unknown": no such job).
    `cancelling`: our hash says the attempt is being ended as cancelled, or as expired when it
    is "expired" (set before BullMQ's move to failed, cleared by the final event), so a read
    between the two says so too: a job's final status never changes once shown."""
    if bull_state in (None, "unknown"):
        return ours or Status.WAITING.value
    if bull_state == "completed":
        return Status.COMPLETED.value
    if bull_state == "failed":
        if ours in (Status.CANCELLED.value, Status.EXPIRED.value):
            return ours
        if cancelling and ours not in FINAL:
            return Status.EXPIRED.value if cancelling == Status.EXPIRED.value else Status.CANCELLED.value
        return Status.FAILED.value
    if bull_state == "active":
        return Status.ACTIVE.value
    if bull_state == "delayed":
        return Status.RETRYING.value if attempts_made > 0 else Status.DELAYED.value
    # waiting, prioritized, waiting-children
    return Status.RETRYING.value if attempts_made > 0 and ours == Status.RETRYING.value else Status.WAITING.value


def guess_bull_state(bull: dict[str, str], ours: str | None) -> str:
    """A cheap guess of BullMQ's state from the job's hashes alone (used for lists, where asking
    every job's set would cost a round trip each); feed it to `derive`."""
    if bull.get("finishedOn"):
        return "failed" if bull.get("failedReason") and not bull.get("returnvalue") else "completed"
    if ours == Status.ACTIVE.value:
        return "active"
    if ours in (Status.DELAYED.value, Status.RETRYING.value):
        return "delayed"
    return "waiting"
