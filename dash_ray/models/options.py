"""Job options: priority, delay, attempts, backoff and a client-given id."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dash_ray.models.base import JobId, RequestModel

__all__ = ["Backoff", "JobOptions", "Priority"]

Priority = Literal[1, 2, 3]
MAX_DELAY_S = 30 * 24 * 3600


class Backoff(RequestModel):
    """Wait before a retry: `fixed` waits `delay_s`; `exponential` waits delay_s * 2^(n-1)."""

    type: Literal["fixed", "exponential"] = "exponential"
    delay_s: float = Field(1.0, ge=0, le=24 * 3600)


class JobOptions(RequestModel):
    """How a job is queued: priority 1-3 (1 = high), delay, attempts, backoff, job id, run-time limit."""

    priority: Priority = 2
    delay_s: float = Field(0.0, ge=0, le=MAX_DELAY_S)
    attempts: int | None = Field(None, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)
    job_id: JobId | None = None
    timeout_s: float | None = Field(None, ge=1, le=7 * 24 * 3600)  # capped by the queue's DASH_<QUEUE>_TIMEOUT_S
