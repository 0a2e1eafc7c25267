"""A queue added through the plug-in contract alone: its payload model, its runner and its
definition, registered by one line (`load_queue_plugins("tests.plugin_queue:QUEUE")` in
tests/conftest.py; a deployment sets DASH_QUEUE_PLUGINS=tests.plugin_queue:QUEUE). Nothing in
dash_ray names it. Like any plug-in module it imports only `dash_ray.models` and `dash_ray.runners`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import Field

from dash_ray.models.base import JobId
from dash_ray.models.payloads import ImageUrl, JobPayload, ModelName
from dash_ray.models.queues import QueueDef
from dash_ray.runners import JobContext, Reporter, Runner, RunnerSpec

__all__ = ["QUEUE", "EchoJob", "EchoRunner", "echo_cost", "echo_model"]


class EchoJob(JobPayload):
    """`{jobId, userId, text, repeat, model, imageUrl}`: say `text` `repeat` times."""

    job_id: JobId | None = None
    text: str = Field(min_length=1, max_length=200)
    repeat: int = Field(1, ge=1, le=20)
    model: ModelName | None = None  # a pretend model, for model affinity
    image_url: ImageUrl | None = None  # checked at submit like any image field
    step_s: float = Field(0.0, ge=0, le=5)


class EchoRunner(Runner):
    """Echoes the text, a progress report per repeat; holds the models it was asked for."""

    def __init__(self, settings: Any = None) -> None:
        self.models: list[str] = []
        self.jobs = 0

    def run(self, job: JobContext, reporter: Reporter) -> dict[str, Any]:
        """Say the text `repeat` times; returns it with what the worker knows of itself."""
        p = EchoJob.model_validate(job.data)
        if p.model and p.model not in self.models:
            self.models.append(p.model)
        for i in range(1, p.repeat + 1):
            if p.step_s:
                time.sleep(p.step_s)
            reporter.progress(100.0 * i / p.repeat, f"echo {i}/{p.repeat}", step=i, steps=p.repeat,
                              milestone=True)  # each repeat is reported, never throttled away
        reporter.log(f"echoed {p.repeat} time(s)")
        self.jobs += 1
        return {"echo": " ".join([p.text] * p.repeat), "jobs": self.jobs, "pid": os.getpid()}

    def loaded_models(self) -> list[str]:
        """The pretend models this worker has been asked for."""
        return list(self.models)


def echo_cost(data: dict[str, Any]) -> tuple[str, float]:
    """One shape; units: the repeats."""
    repeat = data.get("repeat")
    return "echo", float(repeat) if isinstance(repeat, int) and repeat > 0 else 1.0


def echo_model(data: dict[str, Any]) -> str | None:
    """The pretend model a payload asks for."""
    model = data.get("model")
    return str(model) if model else None


QUEUE = QueueDef("echo", "echo (a plug-in queue of the tests)", EchoJob, RunnerSpec("tests.plugin_queue:EchoRunner"),
                 2, 0.0, timeout_s=60, cost=echo_cost, model_of=echo_model, image_fields=("image_url",),
                 test_only=True)
