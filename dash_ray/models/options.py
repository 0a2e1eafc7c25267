"""Job options: priority, delay, attempts, backoff, a client-given id, a start deadline and a webhook."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from dash_ray.models.base import JobId, LookupId, RequestModel

__all__ = ["MAX_AFTER", "MAX_DELAY_S", "WEBHOOK_EVENTS", "Backoff", "BudgetRequest", "FlowRequest", "JobOptions", "MoveRequest", "Priority", "ReplayRequest",
           "ScheduleOptions", "ScheduleRequest", "Webhook"]

Priority = Literal[1, 2, 3]
MAX_DELAY_S = 30 * 24 * 3600
_NUMERIC = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


class Backoff(RequestModel):
    """Wait before a retry: `fixed` waits `delay_s`; `exponential` waits delay_s * 2^(n-1)."""

    type: Literal["fixed", "exponential"] = "exponential"
    delay_s: float = Field(1.0, ge=0, le=24 * 3600)


WebhookEvent = Literal["progress", "preview", "log", "completed", "failed"]
WEBHOOK_EVENTS: tuple[str, ...] = ("progress", "preview", "log", "completed", "failed")
_DEFAULT_EVENTS: list[WebhookEvent] = ["completed", "failed"]


def _webhook_url(url: str) -> str:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlparse(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number, a bracket left open
        raise ValueError("must be a valid URL (a port is 1-65535)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    if port == 0:
        raise ValueError("must be a valid URL (a port is 1-65535)")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (the signature proves the sender)")
    return url


class Webhook(RequestModel):
    """Where a job's events are POSTed, signed (Standard Webhooks), retried until answered 2xx.
    `events`: which (`progress` and `preview` send the latest one; `failed` covers cancelled)."""

    url: Annotated[str, Field(min_length=8, max_length=2048), AfterValidator(_webhook_url)]
    events: list[WebhookEvent] = Field(default_factory=lambda: _DEFAULT_EVENTS.copy(), min_length=1, max_length=5)


_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _start_by(value: object) -> object:
    """A deadline to start: seconds from the submit (a JSON number, more than 0, at most 30
    days) or a time (an ISO 8601 string; UTC without a zone). One clear error for anything else."""
    if value is None:
        return value
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, bool):
        raise ValueError("a number of seconds from the submit, or an ISO 8601 time")
    if isinstance(value, int | float):
        if not 0 < value <= MAX_DELAY_S:  # (NaN fails both)
            raise ValueError(f"seconds from the submit: more than 0, at most {MAX_DELAY_S} (30 days)")
        return float(value)
    if isinstance(value, str) and value.strip() and not _NUMERIC.fullmatch(value):
        try:
            when = _TIME.validate_python(value.strip())
        except ValidationError:
            raise ValueError("not an ISO 8601 time (e.g. 2026-12-06T22:00:00Z)") from None
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # no zone: UTC
    raise ValueError("a number of seconds from the submit (not in quotes), or an ISO 8601 time")


MAX_AFTER = 20  # jobs one job may wait for (options.after)


class JobOptions(RequestModel):
    """How a job is queued: priority 1-3 (1 = high), delay, attempts, backoff, job id, run-time
    limit, a deadline to start by, and a webhook for its events."""

    priority: Priority = 2
    delay_s: float = Field(0.0, ge=0, le=MAX_DELAY_S)
    attempts: int | None = Field(None, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)
    job_id: JobId | None = None
    timeout_s: float | None = Field(None, ge=1, le=7 * 24 * 3600)  # capped by the queue's DASH_<QUEUE>_TIMEOUT_S
    # Not started by then, the job ends `expired` (never run, not retried): seconds from the submit,
    # or a time (ISO 8601; UTC without a zone). Default: the queue's DASH_<QUEUE>_START_BY_S, if set.
    start_by: Annotated[float | datetime | None, BeforeValidator(_start_by)] = None
    # A repeatable payload (an explicit seed; a lanczos upscale of an upload) answered by your
    # completed run of the same one (200, `cached`), or following your unfinished run of it.
    # Default: the deployment's DASH_CACHE_RESULTS.
    cache: bool | None = None
    # Jobs of yours this one waits for (BullMQ's flow layout: it sits in `waiting-children`
    # until they end). `afterFailure`: what one of them failing does: `fail` (this job ends
    # failed, unrun) or `ignore` (it runs without). A `job://<id>/images/<n>` input, or a
    # `settings.loraId` that is your unfinished training job, is waited for without being named.
    after: list[LookupId] | None = Field(None, max_length=MAX_AFTER)
    after_failure: Literal["fail", "ignore"] = "fail"

    @model_validator(mode="after")
    def _after(self) -> JobOptions:
        if self.after and len(set(self.after)) != len(self.after):
            raise ValueError("options.after names a job twice")
        if self.after and self.delay_s:
            raise ValueError("a job that waits for others (after) takes no delay")
        return self

    def start_by_ms(self, submitted_ms: int, default_s: float | None = None) -> int | None:
        """The deadline to start by, in ms (None: none), for a job submitted at `submitted_ms`."""
        value = self.start_by if self.start_by is not None else default_s
        if value is None:
            return None
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        return submitted_ms + int(value * 1000)

    def start_within_ms(self, default_s: float | None = None) -> int | None:
        """A deadline given in seconds from the submit (or the queue's default), in ms; None for
        none or for a time (`start_by_ms`)."""
        value = self.start_by if self.start_by is not None else default_s
        return None if value is None or isinstance(value, datetime) else int(value * 1000)
    webhook: Webhook | None = None


class MoveRequest(RequestModel):
    """Where a waiting job goes (one of): `{"to": "front"}`, `{"before": "<job id>"}` (another
    waiting job of the same owner and priority), `{"priority": 1-3}` (admins)."""

    to: Literal["front"] | None = None
    before: LookupId | None = None
    priority: Priority | None = None

    @model_validator(mode="after")
    def _one(self) -> MoveRequest:
        if sum(x is not None for x in (self.to, self.before, self.priority)) != 1:
            raise ValueError("give one of to, before, priority")
        return self


class BudgetRequest(RequestModel):
    """A user's GPU budget (admins: `PUT /v1/budgets/{userId}`): GPU seconds per UTC day and per
    UTC month (null: no limit), and whether it is `hard` (a submit past it is refused until it
    resets) or soft (the user's fair-share weight is lowered while past it); and the GPU share
    their running jobs may hold at once (`gpuShare`, in GPUs; null: no limit)."""

    gpu_seconds_per_day: float | None = Field(None, gt=0, le=1e9)
    gpu_seconds_per_month: float | None = Field(None, gt=0, le=1e10)
    hard: bool = True
    gpu_share: float | None = Field(None, gt=0, le=10_000)  # GPUs their running jobs may hold at once


class ReplayRequest(RequestModel):
    """Which given-up webhook deliveries to send again (admins: `POST /v1/webhooks/dead/replay`):
    `ids` (`<jobId>:<seq>`, as the dead list names them), or else the newest `limit`."""

    ids: list[Annotated[str, Field(max_length=200)]] | None = Field(None, max_length=1000)
    limit: int = Field(100, ge=1, le=1000)


ScheduleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")]


class ScheduleOptions(RequestModel):
    """The options each job a schedule makes is queued with (a subset of JobOptions')."""

    priority: Priority = 2
    attempts: int | None = Field(None, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)
    timeout_s: float | None = Field(None, ge=1, le=7 * 24 * 3600)


class ScheduleRequest(RequestModel):
    """A recurring job (BullMQ's job scheduler): `every` N seconds or on a `cron` pattern (in `tz`),
    until `endAt` or `limit` runs, each run a job of `payload` on `queue`. A name is the user's:
    posting it again replaces the schedule."""

    name: ScheduleName
    queue: str = Field(min_length=1, max_length=64)
    every: float | None = Field(None, gt=0, le=366 * 24 * 3600)
    cron: str | None = Field(None, min_length=9, max_length=120)
    tz: str | None = Field(None, min_length=1, max_length=64)
    end_at: Annotated[float | datetime | None, BeforeValidator(_start_by)] = None
    limit: int | None = Field(None, ge=1, le=10_000_000)
    payload: dict[str, object]
    options: ScheduleOptions = Field(default_factory=ScheduleOptions)

    @model_validator(mode="after")
    def _one_rhythm(self) -> ScheduleRequest:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give one of every (seconds) or cron (a pattern)")
        if self.tz is not None and self.cron is None:
            raise ValueError("tz goes with cron")
        return self

    def end_ms(self, now_ms: int) -> int | None:
        """When the schedule ends, ms (a number is seconds from now), or None."""
        if self.end_at is None:
            return None
        if isinstance(self.end_at, datetime):
            return int(self.end_at.timestamp() * 1000)
        return now_ms + int(self.end_at * 1000)


class FlowRequest(RequestModel):
    """A job and the jobs it waits for (`children`, each a flow of its own): made together, the
    children run first, the job when they are done. Its payload may name a child's image as
    `job://<child id>/images/<n>`. `onFailure` (a child's): what its failure does to the job that
    waits for it: `fail` it (default), or `ignore` it (the job runs; an image of it fails then)."""

    queue: str = Field(min_length=1, max_length=64)
    payload: dict[str, object]
    options: JobOptions | None = None
    on_failure: Literal["fail", "ignore"] = "fail"
    children: list[FlowRequest] = Field(default_factory=list, max_length=16)
