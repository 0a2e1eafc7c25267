"""One exception tree for dash-ray, each carrying its data as fields."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "BudgetExceeded",
    "ConfigError",
    "DashError",
    "DeviceOutOfMemory",
    "Forbidden",
    "InvalidJobState",
    "InvalidPayload",
    "JobCancelled",
    "JobConflict",
    "JobNotFound",
    "JobPreempted",
    "QuotaExceeded",
    "RateLimited",
    "ScheduleNotFound",
    "Unauthorized",
    "Unavailable",
    "UnknownQueue",
    "WorkerError",
]


class DashError(Exception):
    """Base of every dash-ray error; `code` is a stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-able dict (`code`, `message`, and its data)."""
        return {"code": self.code, "message": self.message, **self.data}


class ConfigError(DashError):
    """A setting has a bad value; the message names the environment variable."""

    code = "config"


class InvalidPayload(DashError):
    """A job payload or option failed validation; `errors` lists each field and why."""

    code = "invalid_payload"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, errors=errors or [])
        self.errors = errors or []


class UnknownQueue(DashError):
    """The queue name is not one of training, upscaling, generation."""

    code = "unknown_queue"

    def __init__(self, queue: str) -> None:
        super().__init__(f"unknown queue {queue!r}", queue=queue)
        self.queue = queue


class JobNotFound(DashError):
    """No job has this id (or it was removed by retention)."""

    code = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found", jobId=job_id)
        self.job_id = job_id


class ScheduleNotFound(JobNotFound):
    """The caller has no schedule of this name."""

    def __init__(self, name: str) -> None:
        DashError.__init__(self, f"schedule {name!r} not found", name=name)
        self.job_id = name


class JobConflict(DashError):
    """A job with this id exists with another payload or in another queue."""

    code = "conflict"

    def __init__(self, job_id: str, reason: str = "a job with this id exists with another payload") -> None:
        super().__init__(f"job {job_id!r}: {reason}", jobId=job_id)
        self.job_id = job_id


class InvalidJobState(DashError):
    """The job is in a state that does not allow the operation (e.g. retry of a running job)."""

    code = "invalid_state"

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r} in state {state!r}", jobId=job_id, state=state)
        self.job_id = job_id
        self.state = state


class Unauthorized(DashError):
    """No token, or a bad or expired one."""

    code = "unauthorized"


class Forbidden(DashError):
    """The caller may not touch this job or queue."""

    code = "forbidden"


class RateLimited(DashError):
    """Over a per-user limit; try again after `retry_after_s`."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retryAfterS=retry_after_s)
        self.retry_after_s = retry_after_s


class BudgetExceeded(RateLimited):
    """A user's hard GPU budget (per day or month), or their group's (`org`), is spent; it resets
    after `retry_after_s`."""

    code = "budget_exceeded"

    def __init__(self, message: str, retry_after_s: int, budget: str, limit: float, used: float,
                 resets_at: float, org: str | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.data.update(budget=budget, limit=limit, used=round(used, 3), resetsAt=resets_at)
        if org is not None:
            self.data["org"] = org


class JobPreempted(DashError):
    """Raised inside a runner at a safe point (a training epoch's checkpoint committed) when its
    job was asked to yield its GPU: the attempt ends without using an attempt, the job goes back
    to the head of its queue and resumes from that checkpoint."""

    code = "preempted"

    def __init__(self, job_id: str = "", after: str = "") -> None:
        super().__init__(f"preempted{' after ' + after if after else ''}", jobId=job_id)
        self.job_id = job_id
        self.after = after


class JobCancelled(DashError):
    """Raised inside a runner when its job was cancelled; the job ends as `cancelled`."""

    code = "cancelled"

    def __init__(self, job_id: str = "") -> None:
        super().__init__("cancelled", jobId=job_id)
        self.job_id = job_id


class WorkerError(DashError):
    """A workload rejected its input or could not run (a clear message, no retry helps)."""

    code = "worker_error"


class DeviceOutOfMemory(WorkerError):
    """A job ran out of its worker's device memory (its GPU share, enforced), already retried alone:
    `out of GPU memory at 1024x1024, batch 4: ...`. Its peak teaches the sizing book."""

    code = "out_of_memory"

    def __init__(self, message: str, peak_bytes: int = 0) -> None:
        super().__init__(message, peak_bytes=peak_bytes)
        self.peak_bytes = peak_bytes


class Unavailable(DashError):
    """A dependency (Redis) cannot be reached now; try again after `retry_after_s`.

    A submit that got this may or may not have created its job: retry it with the same
    `jobId` (or `loraId`) and it is created at most once.
    """

    code = "unavailable"

    def __init__(self, message: str = "the job store is unavailable; try again shortly", retry_after_s: int = 1) -> None:
        super().__init__(message, retryAfterS=retry_after_s)
        self.retry_after_s = retry_after_s


class BadRequest(DashError):
    """A request that could not be read at all (a JSON body that is not UTF-8 text): the
    framework's 400, `http_error`."""

    code = "http_error"


class BodyTooLarge(DashError):
    """A request body over the gateway's limit (DASH_MAX_BODY_BYTES; an upload, DASH_MAX_IMAGE_BYTES),
    refused as it arrives."""

    code = "too_large"

    def __init__(self, message: str = "request body too large") -> None:
        super().__init__(message)


class QuotaExceeded(DashError):
    """A per-user storage quota (uploads) would be exceeded."""

    code = "quota_exceeded"

    def __init__(self, message: str) -> None:
        super().__init__(message)
