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
from dataclasses import replace
from typing import Any

from dash_ray import tracing
from dash_ray.config import Settings
from dash_ray.errors import DeviceOutOfMemory, JobCancelled, JobPreempted, WorkerError
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


def _process_started() -> float:
    """When this process started (epoch seconds); now if that cannot be read."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


class WorkerCore:
    """Runs jobs with its runner, one at a time or a compatible batch in one pass; cancel stops a
    job at its next progress check (a batch member alone: the others go on)."""

    def __init__(self, queue: str, settings: Settings, spec: RunnerSpec, redis_url: str,
                 gpu_fraction: float = 0.0) -> None:
        self.queue = queue
        self.settings = settings
        self.spec = spec
        self.gpu_fraction = gpu_fraction
        tracing.configure(f"dash-ray-worker-{queue}", settings)
        self.lifecycle = SyncLifecycle(connect_sync(redis_url, name=f"dash:worker:{queue}"),
                                       Keys(settings.key_prefix), Retention.of(settings))
        self.publisher = Publisher(self.lifecycle)
        self.runner: Runner | None = None
        self._load_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._requeue: set[str] = set()  # jobs stopped by a shutdown, not by their user
        self.jobs_done = 0
        self.jobs_run = 0  # attempts begun (the first one pays the cold start)
        started = _process_started()
        # The cold start by phase (seconds): process start to this object, building the runner
        # (imports), preloading models, and process start to ready in all.
        self.cold: dict[str, float] = {"processS": round(max(0.0, time.time() - started), 4)}
        self._process_started = started
        self.ready_at = 0.0  # when the runner was built (epoch seconds)

    def load(self, preload: list[str] | None = None) -> dict[str, Any]:
        """Build the runner (imports torch etc. once), hold it to its GPU share and preload the
        models the queue's waiting jobs need; returns `info()` (with the cold start's phases)."""
        with self._load_lock:
            if self.runner is None:
                t0 = time.perf_counter()
                runner = load_runner(self.spec, self.settings)
                runner.limit_memory(self.gpu_fraction)
                self.cold["importS"] = round(time.perf_counter() - t0, 4)
                t1 = time.perf_counter()
                if preload:
                    try:
                        runner.preload(list(preload))
                    except Exception:
                        log.exception("preloading %s failed", preload)
                self.cold["loadS"] = round(time.perf_counter() - t1, 4)
                self.ready_at = time.time()
                self.cold["readyS"] = round(max(0.0, self.ready_at - self._process_started), 4)
                self.runner = runner
        return self.info()

    def models(self) -> tuple[str, ...]:
        """The models this worker holds (for model affinity)."""
        return tuple(self.runner.loaded_models()) if self.runner is not None else ()

    def info(self) -> dict[str, Any]:
        """pid, queue, jobs done, the models held, the jobs running and the cold start's phases."""
        return {"pid": os.getpid(), "queue": self.queue, "jobs_done": self.jobs_done, "models": list(self.models()),
                "running": list(self._cancels), "cold": dict(self.cold),
                "gpu_bytes": self.runner.device_memory() if self.runner is not None else None,
                "device": _device(self.runner)}

    def _runner(self) -> Runner:
        if self.runner is None:
            self.load()
        assert self.runner is not None
        return self.runner

    def _begin(self, ctx: JobContext) -> tuple[EventReporter, float]:
        """Publish a job's start, unless the take that handed it out did (`ctx.announced`;
        whether a cancel came before it goes out with the first reports, or came with the job as
        `ctx.stop`), and make its reporter."""
        cancel = self._cancels.setdefault(ctx.id, threading.Event())  # run_batch may have made it
        self.jobs_run += 1
        if ctx.stop:
            cancel.set()
        if not ctx.announced:
            self.publisher.send(started_event(ctx.id, ctx.queue, ctx.user_id, ctx.attempt, ctx.attempts),
                                cancel=cancel, token=ctx.token)
        began = time.time()
        if tracing.tracer() is None:
            return EventReporter(ctx, self.publisher, max_hz=self.settings.progress_max_hz, cancelled=cancel), began
        return _PhasedReporter(ctx, self.publisher, began, max_hz=self.settings.progress_max_hz, cancelled=cancel), began

    def run(self, ctx: JobContext, wait: bool = True) -> Outcome:
        """Run one job to its outcome (with the seconds it ran). Its reports are all published
        when it returns, or (`wait` False) queued: the caller waits for them before its outcome
        goes back (`run_batch`: once for a Ray call of short jobs, not a round trip each)."""
        runner = self._runner()
        first = self.jobs_run == 0
        reporter, began = self._begin(ctx)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            try:
                reporter.check()
                runner.reset_peak_memory()
                result: Any = runner.run(ctx, reporter)
            except Exception as exc:
                result = exc
            out = self._settle(runner, ctx, reporter, result, t0, began, first, time.process_time() - c0)
            reporter.flush(wait)  # every report is published before the outcome goes back
            return out
        finally:
            self._cancels.pop(ctx.id, None)
            self._after(runner)

    def run_together(self, jobs: list[JobContext]) -> list[Outcome]:
        """Run compatible jobs (the queue's batch rule) in one pass of the runner: each keeps its
        own events, result, cancel and outcome; a member cancelled before the pass is left out."""
        runner = self._runner()
        first = self.jobs_run == 0
        begun = [self._begin(ctx) for ctx in jobs]
        t0, c0 = time.perf_counter(), time.process_time()
        results: list[Any] = [JobCancelled(ctx.id) if rep.cancelled else None for ctx, (rep, _) in zip(jobs, begun, strict=True)]
        live = [i for i, r in enumerate(results) if r is None]
        try:
            if live:
                runner.reset_peak_memory()
                try:
                    got = runner.run_batch([jobs[i] for i in live], [begun[i][0] for i in live])
                    if len(got) != len(live):
                        raise RuntimeError(f"run_batch returned {len(got)} results for {len(live)} jobs")
                except Exception as exc:
                    got = [exc] * len(live)
                for i, value in zip(live, got, strict=True):
                    results[i] = value
            # A member cancelled during the pass is discarded at its end, whatever it returned.
            results = [JobCancelled(ctx.id) if rep.cancelled and not isinstance(r, JobPreempted) else r
                       for ctx, (rep, _), r in zip(jobs, begun, results, strict=True)]
            cpu_s = (time.process_time() - c0) / len(jobs)  # the pass's CPU time, split as its GPU time is
            out = [self._settle(runner, ctx, rep, result, t0, began, first, cpu_s)
                   for ctx, (rep, began), result in zip(jobs, begun, results, strict=True)]
            for rep, _ in begun:
                rep.flush()
            return out
        finally:
            for ctx in jobs:
                self._cancels.pop(ctx.id, None)
            self._after(runner)

    def _after(self, runner: Runner) -> None:
        try:
            runner.after_job()
        except Exception:
            log.exception("runner cleanup failed")

    def _settle(self, runner: Runner, ctx: JobContext, reporter: EventReporter, result: Any, t0: float,
                began: float, first: bool, cpu_s: float) -> Outcome:
        """A job's outcome from what its run returned or raised, with the CPU seconds this
        process spent on it (the usage ledger's)."""
        return replace(self._outcome(runner, ctx, reporter, result, t0, began, first), cpu_s=round(cpu_s, 6))

    def _outcome(self, runner: Runner, ctx: JobContext, reporter: EventReporter, result: Any, t0: float,
                 began: float, first: bool) -> Outcome:
        run_s = time.perf_counter() - t0
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
        if tracing.tracer() is not None:
            self._trace(ctx, reporter, result, began, run_s)
        if not isinstance(result, Exception):
            self.jobs_done += 1
            if isinstance(result, dict):
                result = self._with_timings(result, ctx, reporter, began, first)
            return Outcome("done", result, run_s=run_s, memory=_peak(runner))
        exc = result
        if isinstance(exc, JobCancelled):
            if ctx.id in self._requeue:
                self._requeue.discard(ctx.id)
                log.info("job %s interrupted by a shutdown; it goes back to its queue", ctx.id,
                         extra={"job_id": ctx.id})
                return Outcome("skipped", error="interrupted by a shutdown", run_s=run_s)
            log.info("job %s cancelled", ctx.id, extra={"job_id": ctx.id})
            return Outcome("cancelled", error="cancelled", run_s=run_s)
        if isinstance(exc, JobPreempted):
            log.info("job %s yields its GPU after %s", ctx.id, exc.after, extra={"job_id": ctx.id})
            return Outcome("skipped", error=f"preempted after {exc.after} so that waiting jobs of other queues "
                                            "can run; it resumes from its checkpoint", run_s=run_s, preempted=True)
        if isinstance(exc, DeviceOutOfMemory):
            log.warning("job %s: %s", ctx.id, exc, extra={"job_id": ctx.id})
            kind, _ = _peak(runner)
            return Outcome("failed", error=str(exc), run_s=run_s, memory=(kind, exc.peak_bytes) if exc.peak_bytes
                           else None)
        if isinstance(exc, WorkerError):
            log.info("job %s rejected: %s", ctx.id, exc, extra={"job_id": ctx.id})
            return Outcome("failed", error=str(exc), run_s=run_s)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.warning("job %s failed: %s\n%s", ctx.id, exc, trace, extra={"job_id": ctx.id})
        return Outcome("failed", error=public_error(exc), retry=True, run_s=run_s, trace=trace[-8000:])

    def _trace(self, ctx: JobContext, reporter: EventReporter, result: Any, began: float, run_s: float) -> None:
        """The run's span on this worker (under the consumer's, by the job's carrier), its model
        load's when it loaded one, and a `phase <name>` span for each phase its reports named."""
        timings = result.get("timings") if isinstance(result, dict) else None
        load_s = float(timings.get("load_s") or 0.0) if isinstance(timings, dict) else 0.0
        outcome = "done" if not isinstance(result, Exception) else type(result).__name__
        tm = tracing.record(f"run {ctx.queue}", began, began + run_s, ctx.trace, **{
            "dash.job_id": ctx.id, "dash.attempt": ctx.attempt, "dash.outcome": outcome, "process.pid": os.getpid()})
        if load_s > 0:
            tracing.record(f"load model {ctx.queue}", began, began + load_s, tm, **{"dash.job_id": ctx.id})
        if isinstance(reporter, _PhasedReporter):
            try:
                for name, start, end, attributes in reporter.phases.spans(began + run_s):
                    tracing.record(f"phase {name}", start, end, tm, **{"dash.job_id": ctx.id, **attributes})
            except Exception:  # (never fails a job)
                log.debug("phases of job %s not recorded", ctx.id, exc_info=True)

    def _with_timings(self, result: dict[str, Any], ctx: JobContext, reporter: EventReporter, began: float,
                      first: bool) -> dict[str, Any]:
        """A result's `timings` with where the job's time went before it ran: `queuedS` (submitted
        to started), `coldStartS` (the part of this worker's start it waited for, its first job only), `loadS` (models
        loaded for it), `firstStepS` (started to its first step done)."""
        timings = result.get("timings")
        timings = dict(timings) if isinstance(timings, dict) else {}
        timings.update({
            "queuedS": round(max(0.0, began - ctx.created_at), 4) if ctx.created_at else None,
            "coldStartS": self._waited_for_start(ctx) if first else 0.0,
            "loadS": round(float(timings.get("load_s") or 0.0), 4),
            "firstStepS": round(reporter.first_step_s, 4) if reporter.first_step_s is not None else None,
        })
        return {**result, "timings": timings}

    def _waited_for_start(self, ctx: JobContext) -> float:
        """How much of this worker's start its first job waited for: none when the worker was ready
        (kept warm) before the job was submitted."""
        ready_s = self.cold.get("readyS", 0.0)
        if not ctx.created_at:
            return ready_s
        return round(min(ready_s, max(0.0, self.ready_at - ctx.created_at)), 4)

    def run_batch(self, jobs: list[JobContext], budget_s: float = 0.0, together: bool = False) -> BatchReply:
        """Run jobs: `together` (compatible jobs of a batching queue), in one pass of the runner;
        else one after another. An outcome per job, in order, and the models held after.

        Every job of the batch can be cancelled from the start. Run one after another, once the
        batch has run longer than `budget_s` (when > 0), the jobs not yet started come back
        `skipped` (the consumer puts them back at the head of the queue), so a misjudged batch
        cannot hold jobs, or a higher-priority job behind them, for long.
        """
        for job in jobs:
            self._cancels.setdefault(job.id, threading.Event())
        out: list[Outcome] = []
        t0 = time.perf_counter()
        try:
            if together and len(jobs) > 1:
                out = self.run_together(jobs)
            else:
                for i, job in enumerate(jobs):
                    if i and budget_s and time.perf_counter() - t0 > budget_s:
                        out.extend(SKIPPED for _ in jobs[i:])
                        break
                    out.append(self.run(job, wait=len(jobs) == 1))
        finally:
            if len(jobs) > 1:
                self.publisher.wait()  # the jobs' reports, published while the next ones ran
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


class _PhasedReporter(EventReporter):
    """The reporter of a run while tracing is on: an EventReporter that also notes the phases
    its progress reports name (`tracing.Phases`), for the run's `phase <name>` spans. With
    tracing off the plain EventReporter runs: the hot path has nothing more to do."""

    def __init__(self, job: JobContext, publisher: Publisher, began: float, **kwargs: Any) -> None:
        super().__init__(job, publisher, **kwargs)
        self.phases = tracing.Phases(began)

    def progress(self, progress: float, message: str = "", *, milestone: bool = False, **extra: Any) -> None:
        """Report progress (EventReporter.progress), and note the phase it names."""
        super().progress(progress, message, milestone=milestone, **extra)
        try:
            self.phases.note(progress, message, extra, time.time())
        except Exception:  # (a report that names no phase, oddly: still a report)
            log.debug("phase of job %s not noted", self.job.id, exc_info=True)


def _device(runner: Runner | None) -> str | None:
    """The worker's device name (the ledger's `device`), None before its runner is made."""
    if runner is None:
        return None
    try:
        return runner.device_name()
    except Exception:
        log.debug("device name not known", exc_info=True)
        return None


def _peak(runner: Runner) -> tuple[str, int]:
    """The job's peak memory, as the runner measures it (GPU; by default the process's peak RSS)."""
    try:
        kind, nbytes = runner.peak_memory()
        return str(kind), int(nbytes)
    except Exception:
        log.debug("peak memory not measured", exc_info=True)
    return "rss", peak_rss()
