"""The runner contract: what a queue's runner is given, what it may call, and what it may offer.

It sits below both `scheduler/` (which drives runners) and `workers/` (which implements them),
so neither imports the other. A runner subclasses `Runner` and implements `run(job, reporter)`;
every other hook has a default here, and the worker calls them by name (no `getattr` probing).
Only the standard library and `errors.py` are imported: a runner module loads light.
"""

from __future__ import annotations

import importlib
import resource
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["JobContext", "Reporter", "Runner", "RunnerSpec", "load_runner", "peak_rss"]


@dataclass
class JobContext:
    """What a runner knows of the job it runs."""

    id: str
    queue: str
    data: dict[str, Any]
    attempt: int = 1
    attempts: int = 1
    user_id: str | None = None
    token: str = ""  # this attempt's lock token: its events are refused once another attempt holds the job
    created_at: float = 0.0  # when the job was submitted (epoch seconds; 0: unknown)
    # Its `active` event went out as it was taken (`QueueConsumer.take`), so the worker publishes
    # none; `stop`: a cancel was requested before it reached the worker.
    announced: bool = False
    stop: bool = False
    trace: str | None = None  # the trace its run on the worker belongs to (dash_ray/tracing.py carrier)


class Reporter(Protocol):
    """What a runner may call while it runs a job (the worker's implementation is
    `scheduler.runner.EventReporter`): progress, previews, log lines, cancel checks, checkpoints."""

    job: JobContext
    yield_asked: bool
    previews: int

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested."""

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""

    def progress(self, progress: float, message: str = "", *, milestone: bool = False, **extra: Any) -> None:
        """Report progress 0-100 (throttled unless `milestone`); raises JobCancelled once cancelled."""

    def preview(self, render: Callable[[], str], *, kind: str = "latent", force: bool = False,
                **extra: Any) -> bool:
        """Publish a `job:preview` with the data URL `render()` returns (rate limited); whether it was sent."""

    def log(self, message: str, level: str = "info") -> None:
        """Add a line to the job's log."""

    def saved_checkpoint(self) -> str:
        """The artifact path of the job's last committed checkpoint ('' for none)."""

    def commit_checkpoint(self, path: str) -> str:
        """Make `path` the job's checkpoint while this attempt holds the job; the path it replaced."""

    def yield_point(self, after: str) -> None:
        """Raise JobPreempted if the job was asked to yield its GPU (call right after a checkpoint)."""

    def flush(self) -> None:
        """Send the held report now and wait until every report is published."""


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Runner(ABC):
    """A workload: runs one job in a worker thread, reporting progress; returns a JSON-able result.

    Raise `JobCancelled` (the reporter does it for you) to stop, `WorkerError` for a bad input
    that no retry can fix, anything else for a failure worth retrying. It is built once per
    worker as `cls(settings=..., **spec.kwargs)` and may keep models between jobs; the hooks
    below tell the scheduler about them (each has a default for a runner that holds nothing).
    """

    @abstractmethod
    def run(self, job: JobContext, reporter: Reporter) -> Any:
        """Run one job."""

    def run_batch(self, jobs: list[JobContext], reporters: list[Reporter]) -> list[Any]:
        """Run jobs that the queue's batch rule (`QueueDef.batch`) found compatible, together.

        Returns a result or the exception, per job, in order: one job's failure or cancel (its
        reporter raises `JobCancelled`) must not end the others'. Each job keeps its own reporter
        (progress, previews, logs). Default: one after another, which any runner may keep.
        """
        out: list[Any] = []
        for job, reporter in zip(jobs, reporters, strict=True):
            try:
                out.append(self.run(job, reporter))
            except Exception as exc:
                out.append(exc)
        return out

    def preload(self, models: list[str]) -> None:
        """Load these models before the worker takes its first job (the queue's waiting jobs
        need them; "" is the default model); a model that cannot be loaded is left for its job."""
        return None

    def limit_memory(self, gpu_fraction: float) -> None:
        """Hold this worker to its share of the device (`gpu_fraction` of the GPU, as Ray placed
        it; 0: none), so that an out-of-memory error lands on its own job, never a neighbour's."""
        return None

    def loaded_models(self) -> list[str]:
        """Names of the models this worker holds (the consumer prefers it for jobs needing them)."""
        return []

    def device_memory(self) -> int | None:
        """Bytes of the worker's GPU (None: no GPU)."""
        return None

    def device_name(self) -> str:
        """The worker's device, as the usage ledger names it: the GPU's model, else `cpu`."""
        return "cpu"

    def reset_peak_memory(self) -> None:
        """Start measuring a job's peak memory (called before each job)."""
        return None

    def peak_memory(self) -> tuple[str, int]:
        """The last job's peak memory: ("cuda", bytes) on a GPU, else ("rss", the process's peak)."""
        return "rss", peak_rss()

    def after_job(self) -> None:
        """Clean up after each job, whatever its outcome (give memory back)."""
        return None

    def close(self) -> None:
        """Release what the runner holds (the worker is going away)."""
        return None


@dataclass(frozen=True)
class RunnerSpec:
    """Where a runner class lives (`module:Class`) and the keyword arguments it is built with."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def load_runner(spec: RunnerSpec, settings: Any) -> Runner:
    """Import and build the runner of a spec; it gets `settings=` plus the spec's kwargs."""
    module, _, name = spec.path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    runner = cls(settings=settings, **spec.kwargs)
    if not isinstance(runner, Runner):
        raise TypeError(f"{spec.path} is not a dash_ray.runners.Runner (subclass it: run() plus optional hooks)")
    return runner
