"""Ray scheduling: queue consumer actors dispatching to fractional-GPU worker actors.

The policy (Dispatcher, WorkerPool, Reporter) is plain code; the actors are thin shells.
"""

from dash_ray.scheduler.contract import BatchReply, Outcome
from dash_ray.scheduler.resources import QueueSpec, node_resources, queue_specs, with_runner
from dash_ray.scheduler.runner import JobContext, Reporter, Runner, RunnerSpec

__all__ = [
    "BatchReply",
    "JobContext",
    "Outcome",
    "QueueSpec",
    "Reporter",
    "Runner",
    "RunnerSpec",
    "node_resources",
    "queue_specs",
    "with_runner",
]
