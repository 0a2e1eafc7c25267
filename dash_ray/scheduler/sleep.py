"""SleepRunner: a built-in runner for tests and benchmarks only (not one of the three queues)."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

from dash_ray.runners import JobContext, Reporter, Runner

__all__ = ["SleepRunner"]


class SleepRunner(Runner):
    """Sleeps `durationS` in `steps` steps, reporting each; fails the first `failAttempts` attempts.

    Payload fields (all optional): durationS, steps, failAttempts, failMessage, crash. The spec's
    kwargs give defaults, so it can stand in for any queue's runner in tests; with `record_dir`,
    every execution appends a line to `<record_dir>/<job id>` (tests count executions).
    """

    def __init__(self, settings: Any = None, duration_s: float = 0.0, steps: int = 1,
                 fail_attempts: int = 0, record_dir: str | None = None) -> None:
        self.duration_s = duration_s
        self.steps = steps
        self.fail_attempts = fail_attempts
        self.record_dir = record_dir

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Sleep and report; returns the attempt number and how long it slept."""
        d = job.data
        duration = float(d.get("durationS", self.duration_s))
        steps = max(1, int(d.get("steps", self.steps)))
        if self.record_dir:
            with open(os.path.join(self.record_dir, job.id), "a") as f:
                f.write(f"{job.attempt} {os.getpid()}\n")
        if job.attempt <= int(d.get("failAttempts", self.fail_attempts)):
            raise RuntimeError(d.get("failMessage", "planned failure"))
        if d.get("crash") == "segfault":
            ctypes.string_at(0)  # a real invalid read: the process dies of SIGSEGV
        t0 = time.monotonic()
        for i in range(1, steps + 1):
            if duration:
                # sleep in slices so a cancel lands between reports too
                end = t0 + duration * i / steps
                while (left := end - time.monotonic()) > 0:
                    reporter.check()
                    time.sleep(min(left, 0.05))
            reporter.progress(100.0 * i / steps, f"step {i}/{steps}", step=i, steps=steps)
        return {"attempt": job.attempt, "slept_s": round(time.monotonic() - t0, 4), "pid": os.getpid()}
