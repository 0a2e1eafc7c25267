"""What the API returns: job and queue views."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dash_ray.models.base import WireModel
from dash_ray.models.status import JobStatus, is_final

__all__ = ["Allowance", "BudgetUse", "BudgetView", "FlowView", "GpuUsage", "JobList", "JobView", "QueueView", "ScheduleView", "ShareUse", "SubmitResult",
           "UsageView"]


class JobView(WireModel):
    """One job as a caller sees it."""

    id: str
    queue: str
    user_id: str | None = None
    status: JobStatus
    progress: float = 0.0
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    attempts_made: int = 0
    attempts: int = 1
    priority: int = 0
    queue_position: int | None = None
    # Waiting: seconds until it starts (`etaS`) and finishes (`finishEtaS`), from the measured
    # run times of the jobs ahead and of the queue's workers; running: until it finishes.
    eta_s: float | None = None
    finish_eta_s: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seq: int = 0
    # `cached`: this answer to a submit is an earlier completed job of the same payload (its id);
    # `sameAs`: the job follows that unfinished run of its payload and ends as it does.
    cached: bool | None = None
    same_as: str | None = None
    parent_id: str | None = None  # a flow's job: the job that waits for it
    after: list[str] | None = None  # the jobs it waits for (options.after, and those its inputs name)

    def wire(self, **kwargs: Any) -> dict[str, Any]:
        """The view as a camelCase JSON-able dict; `cached`, `sameAs`, `parentId` and `after` only
        when they say something."""
        out = super().wire(**kwargs)
        for name, key in (("cached", "cached"), ("same_as", "sameAs"), ("parent_id", "parentId"), ("after", "after")):
            if getattr(self, name) is None:
                out.pop(key, None)
        return out

    @property
    def done(self) -> bool:
        """True once the job completed, failed or was cancelled."""
        return is_final(self.status)


class SubmitResult(WireModel):
    """The outcome of an add: the job, and whether it was created now or existed."""

    job: JobView
    created: bool


class JobList(WireModel):
    """One page of a user's job history, newest first; pass `next_cursor` for the next page."""

    jobs: list[JobView]
    next_cursor: str | None = None

    def wire(self, **kwargs: Any) -> dict[str, Any]:
        """The page as a camelCase JSON-able dict (each job as `JobView.wire` has it)."""
        return {"jobs": [j.wire(**kwargs) for j in self.jobs], "nextCursor": self.next_cursor}


class MemoryPeak(WireModel):
    """The largest peak memory measured for one job shape: `cuda` (GPU allocator) or `rss`
    (the worker process's resident memory, on the CPU)."""

    kind: str
    bytes: int


class QueueView(WireModel):
    """A queue's counts by state, its concurrency per GPU node and whether it is paused; the
    GPU share its workers ask for now (`gpuFraction`: sized from the measured peaks, at most
    `configuredGpuFraction`) and those peaks by job shape (model and size)."""

    name: str
    counts: dict[str, int]
    concurrency: int
    gpu_fraction: float
    paused: bool
    configured_gpu_fraction: float | None = None
    memory_peaks: dict[str, MemoryPeak] = {}


class Allowance(WireModel):
    """How much of a limit is used."""

    used: int
    limit: int


class GpuUsage(WireModel):
    """GPU use charged in a time range (the ledger: queues/ledger.py), summed (`total`) and by
    `groupBy` (`rows`, largest first). Each: `gpuS` (GPU share x seconds), `runS` (wall seconds
    on a worker), `attempts` charged, `completed`, `failed`, `preempted`, `batched` (ran in a
    pass with others, charged their share), `lost` (its worker died under it: not charged)."""

    user_id: str
    from_: float = Field(alias="from")
    to: float
    group_by: str
    total: dict[str, Any]
    rows: list[dict[str, Any]]


class BudgetUse(WireModel):
    """One GPU budget and what is spent of it: GPU seconds `used` of `limit` in the current UTC
    day or month, which ends at `resetsAt` (Unix seconds)."""

    used: float
    limit: float
    resets_at: float


class ShareUse(WireModel):
    """A GPU share: the GPUs a user's (or group's) running jobs hold now (`held`), of `limit`."""

    held: float
    limit: float


class BudgetView(WireModel):
    """A user's GPU budget (their own, or the deployment's default) and its use now."""

    hard: bool
    gpu_seconds_per_day: BudgetUse | None = None
    gpu_seconds_per_month: BudgetUse | None = None
    gpu_share: ShareUse | None = None


class UsageView(WireModel):
    """What a user holds, each against its limit (`GET /v1/usage`): bytes their jobs keep in the
    queue's store, unfinished jobs, uploaded bytes, and the sockets and event streams open on
    the gateway replica that answered; and the GPU time charged to them (`gpu`)."""

    user_id: str
    bytes_kept: Allowance
    jobs_unfinished: Allowance
    upload_bytes: Allowance
    sockets: Allowance
    streams: Allowance
    submit_rate: str
    gpu: GpuUsage | None = None
    budget: BudgetView | None = None
    org: str | None = None  # the group (token `org`) whose budget they share, if any
    org_budget: BudgetView | None = None  # that group's, and what its members used of it


class ScheduleView(WireModel):
    """A recurring job: its name (the user's), the scheduler's id in BullMQ (`{user}.{name}`), its
    rhythm (`every` seconds or `cron` in `tz`), its end, the runs made, the next run's time (Unix
    seconds) and the payload each run gets."""

    id: str
    name: str
    queue: str
    user_id: str | None = None
    every: float | None = None
    cron: str | None = None
    tz: str | None = None
    end_at: float | None = None
    limit: int | None = None
    runs: int = 0
    next_at: float | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class FlowView(WireModel):
    """A flow as made: its job and the flows it waits for."""

    job: JobView
    children: list[FlowView] = Field(default_factory=list)
    created: bool = Field(True, exclude=True)  # False: the same flow sent again, answered by what it made

    def wire(self, **kwargs: Any) -> dict[str, Any]:
        """The flow as a camelCase JSON-able dict (each job as `JobView.wire` has it)."""
        return {"job": self.job.wire(**kwargs), "children": [c.wire(**kwargs) for c in self.children]}
