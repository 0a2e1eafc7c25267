"""Ray scheduling: queue consumer actors dispatching to fractional-GPU worker actors.

The policy (Dispatcher, WorkerPool, Reporter) is plain code; the actors are thin shells.
"""

from dash_ray.scheduler.resources import DEFAULT_RUNNERS, QueueSpec, node_resources, queue_specs
from dash_ray.scheduler.runner import JobContext, Reporter, Runner, RunnerSpec

__all__ = [
    "DEFAULT_RUNNERS",
    "JobContext",
    "QueueSpec",
    "Reporter",
    "Runner",
    "RunnerSpec",
    "node_resources",
    "queue_specs",
]
