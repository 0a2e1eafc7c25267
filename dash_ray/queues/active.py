"""A job a consumer holds: `ActiveJob` (the attempt it locked), `LockLost` (the lock went to
another consumer) and `FailOutcome` (what a failure led to). Shared by the consumer's parts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bullmq import Job as BullJob

from dash_ray.models.base import is_user_id

__all__ = ["ActiveJob", "FailOutcome", "LockLost"]


class LockLost(Exception):
    """The job's lock was lost (it stalled and was handed out again); drop this attempt."""


@dataclass
class ActiveJob:
    """A job this consumer holds the lock of, while one attempt of it runs."""

    id: str
    queue: str
    data: dict[str, Any]
    token: str
    attempts_made: int
    attempts: int
    priority: int
    created_at: float
    bull: BullJob = field(repr=False)
    deferred_failure: str | None = None
    timeout_s: float | None = None  # the job's own run-time limit (options.timeoutS), if any
    start_by_ms: int | None = None  # its deadline to start (options.startBy), if any: later, it expires
    trace: str | None = None  # its trace's carrier (BullMQ's opts.tm; dash_ray/tracing.py), if any
    org: str | None = None  # the group its GPU time and share count against too (BullMQ's opts.org)
    batch_closed: bool = False  # a batch's head: the job behind its batch cannot join it (or it is full)
    moved_to_failed: bool = False  # fail() got past BullMQ's move (a retried fail() skips it)
    # Its `active` event went out as it was taken (`QueueConsumer.take`): its worker publishes no
    # start of its own; `stop`: a cancel was requested already.
    announced: bool = False
    stop: bool = False
    taken_at: float = field(default_factory=time.monotonic)

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.attempts_made + 1

    @cached_property
    def user_id(self) -> str | None:
        """The job's owner, from its payload, if it passes the user-id rule (a plain BullMQ
        producer's job may carry anything there: adoption gave such a job no owner, and its
        events must not give it one)."""
        uid = self.data.get("userId")
        return uid if is_user_id(uid) else None


@dataclass
class FailOutcome:
    """What a failure led to: `retrying` (after `delay_s`), `failed`, `cancelled` or `expired`."""

    status: str
    delay_s: float = 0.0
