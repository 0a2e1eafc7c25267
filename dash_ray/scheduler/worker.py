"""WorkerCore: what a GPU worker actor does, as plain code (the actor is a thin shell).

The worker is a threaded actor: `run` executes the runner on the calling thread (no event
loop in the way: a Ray call to an async actor costs ~60% more CPU here), while `cancel`
arrives on another thread and sets the job's cancel flag. Events go out on a publisher
thread so a slow Redis never stalls a GPU step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import JobCancelled, WorkerError
from dash_ray.models.events import JobProgressEvent
from dash_ray.queues import Keys, SyncEventBus, connect_sync
from dash_ray.scheduler.runner import (
    JobContext,
    Publisher,
    Reporter,
    Runner,
    RunnerSpec,
    load_runner,
)

__all__ = ["WorkerCore"]

log = logging.getLogger(__name__)


class WorkerCore:
    """Runs one job at a time with its runner; cancel stops it at its next progress check."""

    def __init__(self, queue: str, settings: Settings, spec: RunnerSpec, redis_url: str) -> None:
        self.queue = queue
        self.settings = settings
        self.spec = spec
        self.keys = Keys(settings.key_prefix)
        self.bus = SyncEventBus(
            connect_sync(redis_url, name=f"dash:worker:{queue}"), self.keys,
            events_per_job=settings.events_per_job, finished_ttl_s=settings.finished_ttl_s,
            keep_finished=settings.keep_completed + settings.keep_failed,
        )
        self.publisher = Publisher(self.bus)
        self.runner: Runner | None = None
        self._load_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self.jobs_done = 0
        self.started_at = time.time()

    def load(self) -> dict[str, Any]:
        """Build the runner (imports torch etc. once); returns `info()`."""
        with self._load_lock:
            if self.runner is None:
                self.runner = load_runner(self.spec, self.settings)
        return self.info()

    def models(self) -> list[str]:
        """The models this worker holds (for model affinity)."""
        loaded = getattr(self.runner, "loaded_models", None)
        return list(loaded()) if callable(loaded) else []

    def info(self) -> dict[str, Any]:
        """pid, queue, jobs done, the models held and the jobs running."""
        return {"pid": os.getpid(), "queue": self.queue, "jobs_done": self.jobs_done, "models": self.models(),
                "running": list(self._cancels)}

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job; returns {ok, result, s} or {ok: False, error, cancelled, retry, s} (s: seconds it ran)."""
        ctx = JobContext(**job)
        if self.runner is None:
            self.load()
        runner = self.runner
        assert runner is not None
        cancel = self._cancels.setdefault(ctx.id, threading.Event())  # run_batch may have made it
        t0 = time.perf_counter()
        started = JobProgressEvent(
            job_id=ctx.id, queue=ctx.queue, user_id=ctx.user_id, status="active", progress=0,
            message=f"started (attempt {ctx.attempt} of {ctx.attempts})", attempt=ctx.attempt,
            attempts=ctx.attempts,
        )
        if ctx.cancelled:
            cancel.set()
        # The start event, and whether a cancel came before it, go out with the first reports.
        self.publisher.send(started, cancel=cancel)
        reporter = Reporter(ctx, self.publisher, max_hz=self.settings.progress_max_hz, cancelled=cancel)
        try:
            out = self._outcome(runner, ctx, reporter)
            reporter.flush()  # every report is published before the outcome goes back
            out["s"] = time.perf_counter() - t0  # the job's run time, for the consumer's batch sizing
            return out
        finally:
            self._cancels.pop(ctx.id, None)
            after = getattr(runner, "after_job", None)
            if callable(after):
                try:
                    after()
                except Exception:
                    log.exception("runner cleanup failed")

    def _outcome(self, runner: Runner, ctx: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Run the runner: {ok, result} or {ok: False, error, cancelled, retry}."""
        try:
            reporter.check()
            result = runner.run(ctx, reporter)
            self.jobs_done += 1
            return {"ok": True, "result": result}
        except JobCancelled:
            log.info("job %s cancelled", ctx.id, extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": True, "retry": False, "error": "cancelled"}
        except WorkerError as exc:
            log.info("job %s rejected: %s", ctx.id, exc, extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": False, "retry": False, "error": str(exc)}
        except Exception as exc:
            log.warning("job %s failed: %s\n%s", ctx.id, exc, traceback.format_exc(), extra={"job_id": ctx.id})
            return {"ok": False, "cancelled": False, "retry": True, "error": f"{type(exc).__name__}: {exc}"}

    def run_batch(self, jobs: list[dict[str, Any]], budget_s: float = 0.0) -> list[dict[str, Any]]:
        """Run jobs one after another; returns an outcome per job, in order.

        Every job of the batch can be cancelled from the start. Once the batch has run longer
        than `budget_s` (when > 0), the jobs not yet started come back as `{"skipped": True}`
        (the consumer puts them back at the head of the queue), so a misjudged batch cannot hold
        jobs, or a higher-priority job behind them, for long.
        """
        for job in jobs:
            self._cancels.setdefault(job["id"], threading.Event())
        out: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        try:
            for i, job in enumerate(jobs):
                if i and budget_s and time.perf_counter() - t0 > budget_s:
                    out.extend({"ok": False, "skipped": True} for _ in jobs[i:])
                    break
                out.append(self.run(job))
        finally:
            for job in jobs:
                self._cancels.pop(job["id"], None)
        return out

    def cancel(self, job_id: str) -> bool:
        """Ask the running job to stop at its next progress check; False if not running here."""
        ev = self._cancels.get(job_id)
        if ev is None:
            return False
        ev.set()
        return True

    def close(self) -> None:
        """Release the runner, the publisher and the Redis connection."""
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()
        self.publisher.close()
        self.bus.redis.close()
