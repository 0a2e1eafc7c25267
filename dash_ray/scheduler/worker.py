"""WorkerCore: what a GPU worker actor does, as plain code (the actor is a thin shell).

The worker is a threaded actor: `run` executes the runner on the calling thread (no event
loop in the way: a Ray call to an async actor costs ~60% more CPU here), while `cancel`
arrives on another thread and sets the job's cancel flag. Events go out on a publisher
thread so a slow Redis never stalls a GPU step; each reply says whether the job's cancel
flag is set in Redis, so a cancel that came before the job started lands at its first report.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import traceback
from typing import Any

from dash_ray.config import Settings
from dash_ray.errors import JobCancelled, JobPreempted, WorkerError
from dash_ray.queues import Keys, Retention, SyncLifecycle, connect_sync, started_event
from dash_ray.runners import JobContext, Runner, RunnerSpec, load_runner, peak_rss
from dash_ray.scheduler.contract import SKIPPED, BatchReply, Outcome
from dash_ray.scheduler.runner import EventReporter, Publisher

__all__ = ["WorkerCore", "public_error"]

log = logging.getLogger(__name__)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+~-]+){2,}/?")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)


def public_error(exc: BaseException) -> str:
    """An error as users may see it: its type and message with absolute paths cut to their last
    part and URLs (hosts, Redis passwords) left out; the whole error goes to the log."""
    text = f"{type(exc).__name__}: {exc}"
    text = _URL.sub("<url>", text)
    text = _PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return text[:1000]


class WorkerCore:
    """Runs one job at a time with its runner; cancel stops it at its next progress check."""

    def __init__(self, queue: str, settings: Settings, spec: RunnerSpec, redis_url: str) -> None:
        self.queue = queue
        self.settings = settings
        self.spec = spec
        self.lifecycle = SyncLifecycle(connect_sync(redis_url, name=f"dash:worker:{queue}"),
                                       Keys(settings.key_prefix), Retention.of(settings))
        self.publisher = Publisher(self.lifecycle)
        self.runner: Runner | None = None
        self._load_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._requeue: set[str] = set()  # jobs stopped by a shutdown, not by their user
        self.jobs_done = 0

    def load(self) -> dict[str, Any]:
        """Build the runner (imports torch etc. once); returns `info()`."""
        with self._load_lock:
            if self.runner is None:
                self.runner = load_runner(self.spec, self.settings)
        return self.info()

    def models(self) -> tuple[str, ...]:
        """The models this worker holds (for model affinity)."""
        return tuple(self.runner.loaded_models()) if self.runner is not None else ()

    def info(self) -> dict[str, Any]:
        """pid, queue, jobs done, the models held and the jobs running."""
        return {"pid": os.getpid(), "queue": self.queue, "jobs_done": self.jobs_done, "models": list(self.models()),
                "running": list(self._cancels),
                "gpu_bytes": self.runner.device_memory() if self.runner is not None else None}

    def run(self, ctx: JobContext) -> Outcome:
        """Run one job to its outcome (with the seconds it ran)."""
        if self.runner is None:
            self.load()
        runner = self.runner
        assert runner is not None
        cancel = self._cancels.setdefault(ctx.id, threading.Event())  # run_batch may have made it
        t0 = time.perf_counter()
        # The start event, and whether a cancel came before it, go out with the first reports.
        self.publisher.send(started_event(ctx.id, ctx.queue, ctx.user_id, ctx.attempt, ctx.attempts), cancel=cancel,
                            token=ctx.token)
        reporter = EventReporter(ctx, self.publisher, max_hz=self.settings.progress_max_hz, cancelled=cancel)
        try:
            out = self._outcome(runner, ctx, reporter, t0)
            reporter.flush()  # every report is published before the outcome goes back
            return out
        finally:
            self._cancels.pop(ctx.id, None)
            try:
                runner.after_job()
            except Exception:
                log.exception("runner cleanup failed")

    def _outcome(self, runner: Runner, ctx: JobContext, reporter: EventReporter, t0: float) -> Outcome:
        try:
            reporter.check()
            runner.reset_peak_memory()
            result = runner.run(ctx, reporter)
            self.jobs_done += 1
            return Outcome("done", result, run_s=time.perf_counter() - t0, memory=_peak(runner))
        except JobCancelled:
            if ctx.id in self._requeue:
                self._requeue.discard(ctx.id)
                log.info("job %s interrupted by a shutdown; it goes back to its queue", ctx.id,
                         extra={"job_id": ctx.id})
                return Outcome("skipped", error="interrupted by a shutdown", run_s=time.perf_counter() - t0)
            log.info("job %s cancelled", ctx.id, extra={"job_id": ctx.id})
            return Outcome("cancelled", error="cancelled", run_s=time.perf_counter() - t0)
        except JobPreempted as exc:
            log.info("job %s yields its GPU after %s", ctx.id, exc.after, extra={"job_id": ctx.id})
            return Outcome("skipped", error=f"preempted after {exc.after} so that waiting jobs of other queues "
                                            "can run; it resumes from its checkpoint", run_s=time.perf_counter() - t0,
                           preempted=True)
        except WorkerError as exc:
            log.info("job %s rejected: %s", ctx.id, exc, extra={"job_id": ctx.id})
            return Outcome("failed", error=str(exc), run_s=time.perf_counter() - t0)
        except Exception as exc:
            trace = traceback.format_exc()
            log.warning("job %s failed: %s\n%s", ctx.id, exc, trace, extra={"job_id": ctx.id})
            return Outcome("failed", error=public_error(exc), retry=True, run_s=time.perf_counter() - t0,
                           trace=trace[-8000:])

    def run_batch(self, jobs: list[JobContext], budget_s: float = 0.0) -> BatchReply:
        """Run jobs one after another; an outcome per job, in order, and the models held after.

        Every job of the batch can be cancelled from the start. Once the batch has run longer
        than `budget_s` (when > 0), the jobs not yet started come back `skipped` (the consumer
        puts them back at the head of the queue), so a misjudged batch cannot hold jobs, or a
        higher-priority job behind them, for long.
        """
        for job in jobs:
            self._cancels.setdefault(job.id, threading.Event())
        out: list[Outcome] = []
        t0 = time.perf_counter()
        try:
            for i, job in enumerate(jobs):
                if i and budget_s and time.perf_counter() - t0 > budget_s:
                    out.extend(SKIPPED for _ in jobs[i:])
                    break
                out.append(self.run(job))
        finally:
            for job in jobs:
                self._cancels.pop(job.id, None)
        return BatchReply(out, self.models())

    def cancel(self, job_id: str, requeue: bool = False) -> bool:
        """Ask the running job to stop at its next progress check; False if not running here.

        With `requeue` (a shutdown past its drain time), it stops the same way but comes back
        `skipped`: its consumer puts it back in the queue without using an attempt (training
        resumes from its last checkpoint)."""
        ev = self._cancels.get(job_id)
        if ev is None:
            return False
        if requeue:
            self._requeue.add(job_id)
        ev.set()
        return True

    def close(self) -> None:
        """Release the runner, the publisher and the Redis connection."""
        if self.runner is not None:
            self.runner.close()
        self.publisher.close()
        self.lifecycle.redis.close()


def _peak(runner: Runner) -> tuple[str, int]:
    """The job's peak memory, as the runner measures it (GPU; by default the process's peak RSS)."""
    try:
        kind, nbytes = runner.peak_memory()
        return str(kind), int(nbytes)
    except Exception:
        log.debug("peak memory not measured", exc_info=True)
    return "rss", peak_rss()
