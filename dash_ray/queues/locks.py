"""LockKeeper: the locks of the jobs one consumer holds (as BullMQ's `LockManager`) and the
maintenance that keeps its claim on them good: lock renewal, the stalled-job check (other
consumers' jobs whose locks expired go back to waiting) and the worker name's presence on the
blocking connection.

Each runs in `loops.supervised`; after a failure it runs again within half a second, not after
its interval: while Redis was away our own locks may be expiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from dash_ray.loops import Backoff, supervised
from dash_ray.queues.active import ActiveJob
from dash_ray.queues.batch import register
from dash_ray.queues.connection import is_transient
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Lifecycle
from dash_ray.queues.lua import EXTEND_LOCKS

__all__ = ["RETRY_S", "LockKeeper"]

log = logging.getLogger(__name__)

RETRY_S = 0.5  # a maintenance step that failed runs again this soon (at most)


class LockKeeper:
    """Holds the tokens of a consumer's jobs and keeps their locks; runs the maintenance loops.

    `scripts` is the consumer's BullMQ `Scripts` (its keys and the stalled-jobs check)."""

    def __init__(self, redis: Redis, blocking: Redis, queue: str, keys: Keys, scripts: Any, lifecycle: Lifecycle, *,
                 consumer_id: str, lock_ms: int, stalled_ms: int, max_stalled_count: int) -> None:
        self.redis = redis
        self.blocking = blocking
        self.name = queue
        self.keys = keys
        self.scripts = scripts
        self.lifecycle = lifecycle
        self.id = consumer_id
        self.lock_ms = lock_ms
        self.stalled_ms = stalled_ms
        self.max_stalled_count = max_stalled_count
        self._extend = redis.register_script(EXTEND_LOCKS)
        register(self._extend)
        self.held: dict[str, ActiveJob] = {}  # job id -> the attempt whose lock we hold
        self.tasks: list[asyncio.Task[None]] = []  # the maintenance loops (changed in place)
        self._n = itertools.count(1)
        self._closing = False  # set by close(): the maintenance loops stop
        self.renewed = True  # the last lock renewal reached Redis

    def token(self) -> str:
        """A new lock token: one per take (BullMQ reuses it for the job fetched after a completion)."""
        return f"{self.id}:{next(self._n)}"

    async def renew(self) -> list[str]:
        """Extend the locks of all held jobs; returns the ids whose lock could not be renewed."""
        if not self.held:
            return []
        k = self.scripts.keys
        args: list[Any] = [self.keys.bull(self.name, ""), self.lock_ms]
        for job in self.held.values():
            args += [job.id, job.token]
        lost = await self._extend(keys=[k["stalled"], k["active"]], args=args)
        return [str(x) for x in (lost or [])]

    async def recover_stalled(self) -> list[str]:
        """Move jobs whose consumer died back to waiting (BullMQ's two-pass stalled check)."""
        ids = await self.scripts.moveStalledJobsToWait(self.max_stalled_count, self.stalled_ms)
        ids = [str(i) for i in (ids or [])]
        for job_id in ids:
            log.warning("job %s stalled (its consumer stopped); back to waiting", job_id,
                        extra={"job_id": job_id})
            with contextlib.suppress(Exception):
                owner = await self.redis.hget(self.keys.job(job_id), "userId")
                await self.lifecycle.wait_again(job_id, self.name, str(owner) if owner else None,
                                                "recovered after its worker stopped; waiting to run again")
        return ids

    # ------------------------------------------------------------ maintenance
    def start(self) -> None:
        """Start lock renewal (every half lock duration), the stalled check and presence."""
        if self.tasks:
            return
        self._closing = False
        stalled_s = self.stalled_ms / 1000
        self.tasks[:] = [
            self._loop("locks", self.lock_ms / 2000, self._renew),
            self._loop("stalled", stalled_s, self._check_stalled),
            self._loop("presence", stalled_s, self._announce),
        ]

    def _loop(self, what: str, interval_s: float, fn: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def step() -> float:
            await fn()
            return interval_s

        soon = min(interval_s, RETRY_S)
        return asyncio.create_task(
            supervised(f"{what} of {self.name}", step, stop=lambda: self._closing,
                       backoff=Backoff(first_s=soon, max_s=soon), transient=is_transient, logger=log),
            name=f"{what}-{self.name}")

    async def _renew(self) -> None:
        try:
            lost = await self.renew()
        except BaseException:
            self.renewed = False
            raise
        self.renewed = True
        for job_id in lost:
            log.warning("lost the lock of job %s", job_id, extra={"job_id": job_id})

    async def _check_stalled(self) -> None:
        # After Redis was unreachable, our own locks may have expired meanwhile: take them back
        # (the renewal retries every half second) before looking for other consumers' stalls.
        if self.renewed:
            await self.recover_stalled()

    async def _announce(self) -> None:
        # The blocking connection carries the BullMQ worker name (`Queue.getWorkers()`, bull-board's
        # Workers list), but only marker waits use it, and a consumer kept busy by a backlog never
        # waits: keep it open from the start, and open it again soon after a drop.
        await self.blocking.ping()

    async def close(self) -> None:
        """Stop the maintenance loops (held jobs keep their locks until they expire)."""
        self._closing = True
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tasks.clear()
