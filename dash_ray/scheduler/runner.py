"""The worker's side of the runner contract: `Publisher` (events off the runner's thread) and
`EventReporter`, the `Reporter` a runner is given. The contract itself (JobContext, Runner,
RunnerSpec) lives in `dash_ray/runners.py`; its names are re-exported here."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dash_ray.errors import JobCancelled, JobPreempted
from dash_ray.models.events import JobLogEvent, JobPreviewEvent, JobProgressEvent, LiveEvent
from dash_ray.queues.eta import left_from_progress
from dash_ray.runners import JobContext, Runner, RunnerSpec, load_runner

__all__ = ["EventReporter", "JobContext", "Publisher", "Reporter", "Runner", "RunnerSpec", "load_runner"]

log = logging.getLogger(__name__)


class Publisher:
    """A worker's background thread that publishes events in order, off the runner's thread.

    Events queued together go out in one round trip. `lifecycle.publish(events)` publishes
    them and returns, per event, whether a cancel was requested for its job. `wait()` (the end
    of a job) publishes what is still queued on the calling thread when the background thread
    is idle, which saves a thread hand-off per job; one batch is in flight at a time, so order holds.
    """

    def __init__(self, lifecycle: Any) -> None:
        self.lifecycle = lifecycle
        self._items: deque[tuple[Any, ...]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="dash-publisher", daemon=True)
        self._thread.start()

    def send(self, event: LiveEvent, cancel: threading.Event | None = None, token: str = "") -> None:
        """Publish an event (in order) of the attempt holding `token`; with `cancel`, set it if
        the job should stop (a cancel was requested, or the attempt is stale)."""
        self._put(("event", event, cancel, token))

    def submit(self, fn: Callable[[], None]) -> None:
        """Run fn on the publisher thread, after everything queued before it."""
        self._put(("call", fn))

    def wait(self) -> None:
        """Return once everything queued so far is published (publishing it here if need be)."""
        while True:
            with self._cond:
                while self._busy:
                    self._cond.wait()
                if not self._items:
                    return
                batch = self._take()
            self._process(batch)

    def close(self) -> None:
        """Stop the thread after what is queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._cond:
            self._items.append(item)
            if not self._busy:
                self._cond.notify_all()

    def _take(self) -> list[tuple[Any, ...]]:
        """Under the lock: the queued events up to and including the first call; marks busy."""
        batch = []
        while self._items:
            item = self._items.popleft()
            batch.append(item)
            if item[0] == "call":
                break
        self._busy = True
        return batch

    def _process(self, batch: list[tuple[Any, ...]]) -> None:
        try:
            events = [it for it in batch if it[0] == "event"]
            if events:
                cancelled = self.lifecycle.publish([it[1] for it in events], [it[3] for it in events])
                for it, was_cancelled in zip(events, cancelled, strict=True):
                    if it[2] is not None and was_cancelled:
                        it[2].set()
            if batch[-1][0] == "call":
                batch[-1][1]()
        except Exception:
            log.exception("event publish failed")
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (self._busy or not self._items) and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return  # closed and nothing left
                batch = self._take()
            self._process(batch)


class EventReporter:
    """The `Reporter` (dash_ray/runners.py) a worker gives its runner: progress to the event bus,
    throttled, ordered, never decreasing, never blocking.

    Ordinary reports are held to `max_hz` a second: one that comes too soon is held and sent
    when its turn comes, replaced by a newer one meanwhile (the last one is always sent).
    Milestones (a finished denoising step, a finished epoch) are never held or dropped. `progress()` and `check()`
    raise JobCancelled once the job was cancelled.
    """

    def __init__(self, job: JobContext, publisher: Publisher, *, max_hz: float = 20.0,
                 cancelled: threading.Event | None = None, preview_max_hz: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self._clock = clock  # the throttle's clock (tests drive it)
        self._pub = publisher
        self._interval = 1.0 / max_hz
        self._cancel = cancelled or threading.Event()
        self.yield_asked = False  # the last checkpoint commit said: yield the GPU
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._last_progress = 0.0
        self._pending: JobProgressEvent | None = None
        self._timer_armed = False
        self._started = clock()
        self._preview_interval = 1.0 / preview_max_hz
        self._last_preview = -1e9
        self.previews = 0  # previews sent
        self.first_step_s: float | None = None  # from the start to the first step done (`step` >= 1)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested."""
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self._cancel.is_set():
            raise JobCancelled(self.job.id)

    def progress(self, progress: float, message: str = "", *, milestone: bool = False, **extra: Any) -> None:
        """Report progress 0-100 with a message (and extras: epoch, epochs, loss, step, steps).

        A `milestone` (a finished denoising step, a finished epoch) is always sent at once, in
        order; other reports are held to `max_hz`. The last report is always sent.
        """
        self.check()
        now = self._clock()
        if self.first_step_s is None and (extra.get("step") or extra.get("epoch") or 0) >= 1:
            self.first_step_s = now - self._started
        with self._lock:
            progress = min(100.0, max(self._last_progress, float(progress)))
            self._last_progress = progress
            eta = left_from_progress(now - self._started, progress)
            event = JobProgressEvent(
                job_id=self.job.id, queue=self.job.queue, user_id=self.job.user_id, status="active",
                progress=round(progress, 2), message=message, attempt=self.job.attempt,
                attempts=self.job.attempts, eta_s=round(eta, 2) if eta is not None else None,
                ts=round(time.time(), 3), **extra,
            )
            wait = self._interval - (now - self._last_sent)
            if milestone or wait <= 0:
                self._last_sent = now
                self._pending = None
                self._pub.send(event, token=self.job.token)
            else:
                self._pending = event
                if not self._timer_armed:
                    self._timer_armed = True
                    due = now + wait
                    self._pub.submit(lambda: self._send_pending(due))

    def preview(self, render: Callable[[], str], *, kind: str = "latent", force: bool = False,
                **extra: Any) -> bool:
        """Publish a `job:preview` with the image `render()` returns (a data URL), at most
        `preview_max_hz` a second (unless `force`): `render` is not called when the preview is
        skipped, so a runner may offer one every step. Returns whether it was sent."""
        self.check()
        now = time.monotonic()
        if not force and now - self._last_preview < self._preview_interval:
            return False
        self._last_preview = now
        try:
            image = render()
            self._last_preview = time.monotonic()  # the spacing counts from when it goes out
        except Exception:
            log.warning("preview of job %s failed", self.job.id, exc_info=True, extra={"job_id": self.job.id})
            return False
        self.previews += 1
        self._pub.send(JobPreviewEvent(job_id=self.job.id, queue=self.job.queue, user_id=self.job.user_id,
                                       image=image, kind=kind, ts=round(time.time(), 3), **extra),
                       token=self.job.token)
        return True

    def log(self, message: str, level: str = "info") -> None:
        """Add a line to the job's log: a `job:log` event, kept with the job (BullMQ's job log)."""
        self._pub.send(JobLogEvent(job_id=self.job.id, queue=self.job.queue, user_id=self.job.user_id,
                                   level=level, message=message[:2000], ts=round(time.time(), 3)),
                       token=self.job.token)

    def _send_pending(self, due: float) -> None:
        """On the publisher thread: wait for the held report's turn, then send it."""
        with self._lock:
            if self._pending is None:  # already sent (by a flush): no need to wait for the turn
                self._timer_armed = False
                return
        delay = due - self._clock()
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            self._timer_armed = False
            event, self._pending = self._pending, None
            if event is None:
                return
            self._last_sent = self._clock()
            # Queued behind every report sent before it (under this lock), like any other send:
            # one path out, in order. Publishing it here directly could overtake a report the
            # runner sent while this timer waited in the publisher's queue.
            self._pub.send(event, token=self.job.token)

    def saved_checkpoint(self) -> str:
        """The artifact path of the job's last committed checkpoint ('' for none)."""
        return str(self._pub.lifecycle.checkpoint_of(self.job.id))

    def commit_checkpoint(self, path: str) -> str:
        """Make `path` (an artifact this attempt wrote) the job's checkpoint, atomically in
        Redis and only while this attempt holds the job; returns the path it replaced ('' for
        none). A stale attempt (another one holds the job, or it is final) is refused: the
        job's flag is set and JobCancelled raised, so it stops."""
        self.flush()
        done, prev, yield_now = self._pub.lifecycle.commit_checkpoint(self.job.id, self.job.queue, self.job.token,
                                                                     path)
        if not done:
            self._cancel.set()
            raise JobCancelled(self.job.id)
        self.yield_asked = yield_now
        return str(prev)

    def yield_point(self, after: str) -> None:
        """A safe point to stop (the checkpoint just committed holds everything so far): raise
        JobPreempted if the job was asked to yield its GPU. `after`: what it did, for the event."""
        if self.yield_asked:
            raise JobPreempted(self.job.id, after)

    def flush(self, wait: bool = True) -> None:
        """Send the held report now and (unless `wait` is False) wait until every report is published."""
        with self._lock:
            event, self._pending = self._pending, None
            if event is not None:  # a queued timer finds nothing held and returns at once
                self._last_sent = self._clock()
                self._pub.send(event, token=self.job.token)
        if wait:
            self._pub.wait()


# The name the scheduler's callers and tests use for the implementation.
Reporter = EventReporter
