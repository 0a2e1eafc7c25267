"""JobStore: the producer side of the durable queues, as the one object the gateway holds. It puts
together the parts that own each concern and answers the common calls itself:

| part        | module                | owns                                                          |
|-------------|-----------------------|---------------------------------------------------------------|
| `producer`  | `queues/producer.py`  | add, cancel, retry (through `lifecycle`)                      |
| `reader`    | `queues/reader.py`    | a job's view and ETA, a user's history, a job's log           |
| `control`   | `queues/control.py`   | BullMQ's queue objects; pause, resume, counts, durations, sizing |
| `users`     | `queues/usage.py`     | what each user keeps: bytes, unfinished jobs, the top users   |
| `ledger`    | `queues/ledger.py`    | the GPU time each user was charged, by hour (read side)       |
| `lifecycle` | `queues/lifecycle.py` | every write of a job's state                                  |
| `bus`       | `queues/events.py`    | a job's events: replay and state                              |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from redis.asyncio import Redis

from dash_ray.models.options import JobOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.queues import QUEUES
from dash_ray.models.views import JobList, JobView, SubmitResult
from dash_ray.queues.control import QueueControl
from dash_ray.queues.events import EventBus
from dash_ray.queues.keys import Keys
from dash_ray.queues.ledger import Ledger
from dash_ray.queues.lifecycle import Durability, Lifecycle, Quota, Retention
from dash_ray.queues.producer import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    Producer,
    ProducerOptions,
    Validator,
    bull_opts,
)
from dash_ray.queues.reader import JobReader, Search
from dash_ray.queues.usage import UsageBook

__all__ = ["MAX_WEIGHT", "MIN_WEIGHT", "JobStore", "bull_opts"]


class JobStore:
    """Durable jobs on Redis in BullMQ's layout, plus our per-job state and history index."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "bull",
        keep_completed: int = 1000,
        keep_failed: int = 5000,
        default_attempts: int = 3,
        finished_ttl_s: int = 7 * 24 * 3600,
        events_per_job: int = 1000,
        user_history_max: int = 10_000,
        queues: Iterable[str] = QUEUES,
        validate: Validator | None = None,
        fair_share: bool = True,
        user_weights: Mapping[str, float] | None = None,
        start_by_s: Mapping[str, float] | None = None,
        cache_results: bool = False,
        allow_cache: bool = True,
        content: Callable[[JobPayload], str] | None = None,
        fair_half_life_s: float = 0.0,
        durability: Durability | None = None,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.bus = EventBus(redis, self.keys)
        self.lifecycle = Lifecycle(redis, self.keys, Retention(
            events_per_job=events_per_job, finished_ttl_s=finished_ttl_s,
            keep_finished=keep_completed + keep_failed, history_max=user_history_max,
        ), durability)
        self.control = QueueControl(redis, self.keys, prefix, queues)
        self.reader = JobReader(redis, self.keys, self.control)
        self.users = UsageBook(redis, self.keys)
        self.ledger = Ledger(redis, self.keys)
        self.producer = Producer(redis, self.keys, self.control, self.reader, self.lifecycle, ProducerOptions(
            keep_completed=keep_completed, keep_failed=keep_failed, finished_ttl_s=finished_ttl_s,
            default_attempts=default_attempts, fair_share=fair_share, user_weights=dict(user_weights or {}),
            validate=validate, start_by_s=dict(start_by_s or {}), cache_results=cache_results, allow_cache=allow_cache,
            content=content, fair_half_life_s=fair_half_life_s,
        ))

    async def aclose(self) -> None:
        """Close the connection the store's creates go out on (the Redis client is the caller's)."""
        await self.lifecycle.aclose()

    # ------------------------------------------------------------------ jobs
    async def add(self, queue: str, data: dict[str, Any] | JobPayload,
                  options: dict[str, Any] | JobOptions | None = None, user_id: str | None = None,
                  weight: float | None = None, quota: Quota | None = None, trace: str | None = None,
                  org: str | None = None) -> SubmitResult:
        """Add a job (`Producer.add`): idempotent on its id; `weight` the owner's fair share,
        `quota` the owner's limits, taken atomically with the job; `trace` its trace's carrier;
        `org` the group its GPU time is charged to as well."""
        return await self.producer.add(queue, data, options, user_id, weight, quota, trace, org)

    async def get(self, job_id: str) -> JobView:
        """The job's view, with its ETA; raises JobNotFound."""
        return await self.reader.get(job_id)

    async def list(self, user_id: str | None, queue: str | None = None, status: str | None = None,
                   limit: int = 20, cursor: str | None = None, with_data: bool = True,
                   search: Search | None = None) -> JobList:
        """A user's jobs (`user_id` "*": every user's), newest first (`JobReader.list`)."""
        return await self.reader.list(user_id, queue, status, limit, cursor, with_data, search)

    async def cancel(self, job_id: str) -> JobView:
        """Cancel: a waiting or delayed job is removed; a running one is told to stop."""
        return await self.producer.cancel(job_id)

    async def move(self, job_id: str, how: str, other: str | int | None = None) -> JobView:
        """Move a waiting job in its queue (`Producer.move`)."""
        return await self.producer.move(job_id, how, other)

    async def retry(self, job_id: str, quota: Quota | None = None) -> JobView:
        """Run a failed (or cancelled-while-running) job again, with fresh attempts (`Producer.retry`)."""
        return await self.producer.retry(job_id, quota)

    # ------------------------------------------------------------------ queues
    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state: waiting (incl. prioritized), delayed, active, completed, failed."""
        return await self.control.counts(queue)

    async def pause(self, queue: str) -> None:
        """Stop handing out this queue's jobs (running ones finish)."""
        await self.control.pause(queue)

    async def resume(self, queue: str) -> None:
        """Hand out this queue's jobs again."""
        await self.control.resume(queue)

    async def is_paused(self, queue: str) -> bool:
        """True while the queue is paused."""
        return await self.control.is_paused(queue)
