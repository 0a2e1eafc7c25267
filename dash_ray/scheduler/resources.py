"""Queue specs (the queue table's definitions as configured) and the Ray resources that enforce
per-queue concurrency."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from dash_ray.config import Settings
from dash_ray.models.queues import QueueDef, served_queues
from dash_ray.runners import RunnerSpec

__all__ = ["HEAD_RESOURCE", "QueueSpec", "head_options", "logical_gpus", "node_resources", "queue_specs",
           "with_runner"]

# Ray gives the head node this resource; a sliver of it pins an actor there.
HEAD_RESOURCE = "node:__internal_head__"


def head_options(on_head: bool) -> dict[str, Any]:
    """Ray actor options that keep an actor on the head node (none when `on_head` is false)."""
    return {"resources": {HEAD_RESOURCE: 0.001}} if on_head else {}


# A queue as the scheduler runs it is its definition as configured (`Settings.queue`): slots per
# GPU node, GPU share per worker, its runner, the Ray options of a worker (models/queues.py).
QueueSpec = QueueDef


def queue_specs(settings: Settings, *, test_queues: bool = False) -> list[QueueDef]:
    """The queues settings serve (with `test_queues`, the test-only ones too), as the scheduler runs them."""
    return [settings.queue(n) for n in (served_queues(test_queues=True) if test_queues else settings.queue_names)]


def with_runner(specs: list[QueueSpec], runner: RunnerSpec) -> list[QueueSpec]:
    """The same queues, every one running `runner` (tests and benchmarks): one job a pass, since a
    queue's batch rule is its own runner's (`Runner.run_batch`)."""
    return [replace(s, runner=runner, batch=None, max_batch=1) for s in specs]


def node_resources(specs: list[QueueSpec]) -> dict[str, float]:
    """Custom resources one GPU node offers: each queue's slots (`dash_generation: 5`, ...)."""
    return {s.resource: float(s.concurrency) for s in specs}


def logical_gpus(specs: list[QueueSpec]) -> float:
    """Logical GPUs a GPU-less node declares so every queue can fill its slots at once."""
    return float(max(1, math.ceil(sum(s.concurrency * s.gpu_fraction for s in specs) - 1e-9)))
