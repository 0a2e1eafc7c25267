"""The runner interface the workloads plug into: `run(job, reporter) -> result`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dash_ray.errors import JobCancelled
from dash_ray.models.events import JobProgressEvent

__all__ = ["JobContext", "Reporter", "Runner", "RunnerSpec", "load_runner"]

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a runner knows of the job it runs."""

    id: str
    queue: str
    data: dict[str, Any]
    attempt: int = 1
    attempts: int = 1
    user_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for sending to a worker actor."""
        return {"id": self.id, "queue": self.queue, "data": self.data, "attempt": self.attempt,
                "attempts": self.attempts, "user_id": self.user_id}


@runtime_checkable
class Runner(Protocol):
    """A workload: runs one job in a worker thread, reporting progress; returns a JSON-able result.

    Raise `JobCancelled` (the reporter does it for you) to stop, `WorkerError` for a bad input
    that no retry can fix, anything else for a failure worth retrying.
    """

    def run(self, job: JobContext, reporter: Reporter) -> Any:
        """Run one job."""


@dataclass(frozen=True)
class RunnerSpec:
    """Where a runner class lives (`module:Class`) and the keyword arguments it is built with."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def load_runner(spec: RunnerSpec, settings: Any) -> Runner:
    """Import and build the runner of a spec; it gets `settings=` plus the spec's kwargs."""
    module, _, name = spec.path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(settings=settings, **spec.kwargs)  # type: ignore[no-any-return]


Publish = Callable[[JobProgressEvent], Awaitable[Any]]


class Reporter:
    """Progress from a runner thread to the event bus: throttled, ordered, never decreasing.

    At most `max_hz` events a second are published; a report that comes too soon is held
    and sent when its turn comes (the last one is always sent). `progress()` and `check()`
    raise JobCancelled once the job was cancelled.
    """

    def __init__(self, job: JobContext, publish: Publish, loop: asyncio.AbstractEventLoop,
                 *, max_hz: float = 20.0, cancelled: threading.Event | None = None) -> None:
        self.job = job
        self._publish = publish
        self._loop = loop
        self._interval = 1.0 / max_hz
        self._cancel = cancelled or threading.Event()
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._last_progress = 0.0
        self._pending: JobProgressEvent | None = None
        self._timer_armed = False
        self._started = time.monotonic()
        self._queue: asyncio.Queue[JobProgressEvent | None] = asyncio.Queue()
        self._task = loop.create_task(self._drain())
        self.sent = 0

    # --- runner side (any thread) ---
    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested."""
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self._cancel.is_set():
            raise JobCancelled(self.job.id)

    def progress(self, progress: float, message: str = "", **extra: Any) -> None:
        """Report progress 0-100 with a message (and extras: epoch, epochs, loss, step, steps)."""
        self.check()
        now = time.monotonic()
        with self._lock:
            progress = min(100.0, max(self._last_progress, float(progress)))
            self._last_progress = progress
            elapsed = now - self._started
            eta = elapsed * (100.0 - progress) / progress if 0 < progress < 100 else None
            event = JobProgressEvent(
                job_id=self.job.id, queue=self.job.queue, user_id=self.job.user_id, status="active",
                progress=round(progress, 2), message=message, attempt=self.job.attempt,
                attempts=self.job.attempts, eta_s=round(eta, 2) if eta is not None else None, **extra,
            )
            wait = self._interval - (now - self._last_sent)
            if wait <= 0:
                self._last_sent = now
                self._pending = None
                self._send(event)
            else:
                self._pending = event
                if not self._timer_armed:
                    self._timer_armed = True
                    self._loop.call_soon_threadsafe(self._loop.call_later, wait, self._flush_pending)

    def _send(self, event: JobProgressEvent) -> None:
        self.sent += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def _flush_pending(self) -> None:
        with self._lock:
            self._timer_armed = False
            event, self._pending = self._pending, None
            if event is not None:
                self._last_sent = time.monotonic()
                self.sent += 1
                self._queue.put_nowait(event)

    # --- worker side (event loop) ---
    async def _drain(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                if event is None:
                    return
                await self._publish(event)
            except Exception:
                log.exception("progress publish failed", extra={"job_id": self.job.id})
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Send the held report, wait until every report is published, stop."""
        self._flush_pending()
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
