"""Queue specs and the Ray resources that enforce per-queue concurrency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from dash_ray.config import Settings
from dash_ray.models.queues import QUEUE_TABLE
from dash_ray.scheduler.runner import RunnerSpec

__all__ = ["HEAD_RESOURCE", "QueueSpec", "head_options", "logical_gpus", "node_resources", "queue_specs",
           "with_runner"]

# Ray gives the head node this resource; a sliver of it pins an actor there.
HEAD_RESOURCE = "node:__internal_head__"


def head_options(on_head: bool) -> dict[str, Any]:
    """Ray actor options that keep an actor on the head node (none when `on_head` is false)."""
    return {"resources": {HEAD_RESOURCE: 0.001}} if on_head else {}


@dataclass(frozen=True)
class QueueSpec:
    """A queue as the scheduler runs it: slots per GPU node, GPU share per worker, its runner."""

    name: str
    concurrency: int
    gpu_fraction: float
    runner: RunnerSpec
    timeout_s: float = 600.0
    num_cpus: float = 0.0
    worker_env: dict[str, str] = field(default_factory=dict)
    max_workers: int = 64  # on the whole cluster

    def bundle(self) -> dict[str, float]:
        """The resources one worker takes: what the autoscaler must find room for."""
        out = {self.resource: 1.0}
        if self.gpu_fraction:
            out["GPU"] = self.gpu_fraction
        if self.num_cpus:
            out["CPU"] = self.num_cpus
        return out

    @property
    def resource(self) -> str:
        """The custom Ray resource counting this queue's worker slots (`dash_<queue>`)."""
        return f"dash_{self.name}"

    def actor_options(self) -> dict[str, Any]:
        """Ray options of one worker actor: its GPU share plus one unit of the queue's resource."""
        opts: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.gpu_fraction,
            "resources": {self.resource: 1},
            "max_restarts": 0,
        }
        if self.worker_env:
            opts["runtime_env"] = {"env_vars": dict(self.worker_env)}
        return opts


def queue_specs(settings: Settings, *, test_queues: bool = False) -> list[QueueSpec]:
    """The queues settings serve (with `test_queues`, the test-only ones too), as the scheduler runs them."""
    names = tuple(QUEUE_TABLE) if test_queues else settings.queue_names
    return [QueueSpec(q.name, q.concurrency, q.gpu_fraction, RunnerSpec(q.runner), q.timeout_s,
                      max_workers=q.max_workers)
            for q in (settings.queue(n) for n in names)]


def with_runner(specs: list[QueueSpec], runner: RunnerSpec) -> list[QueueSpec]:
    """The same queues, every one running `runner` (tests and benchmarks)."""
    return [replace(s, runner=runner) for s in specs]


def node_resources(specs: list[QueueSpec]) -> dict[str, float]:
    """Custom resources one GPU node offers: each queue's slots (`dash_generation: 5`, ...)."""
    return {s.resource: float(s.concurrency) for s in specs}


def logical_gpus(specs: list[QueueSpec]) -> float:
    """Logical GPUs a GPU-less node declares so every queue can fill its slots at once."""
    return float(max(1, math.ceil(sum(s.concurrency * s.gpu_fraction for s in specs) - 1e-9)))
