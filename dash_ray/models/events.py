"""The seed's job events and the WebSocket messages, as discriminated unions on `type`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from dash_ray.models.base import LookupId, RequestModel, WireModel

__all__ = [
    "ClientMessage",
    "ErrorMessage",
    "JobCompletedEvent",
    "JobEvent",
    "JobFailedEvent",
    "JobLogEvent",
    "JobPreviewEvent",
    "JobProgressEvent",
    "LiveEvent",
    "PingMessage",
    "PongMessage",
    "ServerMessage",
    "SubscribeMessage",
    "SubscribedMessage",
    "UnsubscribeMessage",
    "parse_client_message",
    "parse_event",
]

MAX_SUBSCRIBE_IDS = 200


class _Event(WireModel):
    type: str
    job_id: str
    queue: str
    seq: int = 0
    ts: float = 0.0
    user_id: str | None = None


class JobProgressEvent(_Event):
    """`job:progress {jobId, queue, status, progress, message}` plus seq, ts and extras."""

    type: Literal["job:progress"] = "job:progress"
    status: str
    progress: float = 0.0
    message: str = ""
    queue_position: int | None = None
    attempt: int | None = None
    attempts: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None  # waiting: seconds until it starts; running: until it finishes
    finish_eta_s: float | None = None  # waiting: seconds until it finishes


class JobCompletedEvent(_Event):
    """`job:completed {jobId, queue, result}` plus seq and ts."""

    type: Literal["job:completed"] = "job:completed"
    result: Any = None
    status: Literal["completed"] = "completed"


class JobFailedEvent(_Event):
    """`job:failed {jobId, queue, error}` plus seq, ts and status (`failed` or `cancelled`)."""

    type: Literal["job:failed"] = "job:failed"
    error: str
    status: Literal["failed", "cancelled"] = "failed"


class JobPreviewEvent(_Event):
    """`job:preview {jobId, queue, step, image}`: a picture of the job as it forms (`image`, a
    small WebP data URL): a cheap decode of a generation's latents, or a training sample."""

    type: Literal["job:preview"] = "job:preview"
    image: str
    kind: Literal["latent", "sample"] = "latent"
    step: int | None = None
    steps: int | None = None
    epoch: int | None = None
    epochs: int | None = None


class JobLogEvent(_Event):
    """`job:log {jobId, queue, level, message}`: a line of the job's log (also kept per job)."""

    type: Literal["job:log"] = "job:log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


# What a running job publishes besides its end (the EVENT script's events).
LiveEvent = JobProgressEvent | JobPreviewEvent | JobLogEvent

JobEvent = Annotated[
    JobProgressEvent | JobCompletedEvent | JobFailedEvent | JobPreviewEvent | JobLogEvent,
    Field(discriminator="type"),
]


class SubscribeMessage(RequestModel):
    """Client -> server: `{"type":"subscribe","jobIds":[...]}`; `since` maps jobId -> last seq seen."""

    type: Literal["subscribe"]
    job_ids: list[LookupId] = Field(min_length=1, max_length=MAX_SUBSCRIBE_IDS)
    since: dict[LookupId, Annotated[int, Field(ge=0, le=2**53)]] | None = None
    previews: bool = True  # false: this socket gets no `job:preview` events of these jobs


class UnsubscribeMessage(RequestModel):
    """Client -> server: `{"type":"unsubscribe","jobIds":[...]}`."""

    type: Literal["unsubscribe"]
    job_ids: list[LookupId] = Field(min_length=1, max_length=MAX_SUBSCRIBE_IDS)


class PingMessage(RequestModel):
    """Client -> server: `{"type":"ping"}`."""

    type: Literal["ping"]


ClientMessage = Annotated[
    SubscribeMessage | UnsubscribeMessage | PingMessage, Field(discriminator="type")
]


class PongMessage(WireModel):
    """Server -> client: the answer to `ping`."""

    type: Literal["pong"] = "pong"
    ts: float = 0.0
    replica: str | None = None


class SubscribedMessage(WireModel):
    """Server -> client: which job ids are now subscribed."""

    type: Literal["subscribed"] = "subscribed"
    job_ids: list[str]


class ErrorMessage(WireModel):
    """Server -> client: a request was bad; the socket stays usable."""

    type: Literal["error"] = "error"
    code: str
    message: str
    job_id: str | None = None


ServerMessage = Annotated[
    JobProgressEvent
    | JobCompletedEvent
    | JobFailedEvent
    | JobPreviewEvent
    | JobLogEvent
    | PongMessage
    | SubscribedMessage
    | ErrorMessage,
    Field(discriminator="type"),
]

_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)
_event_adapter: TypeAdapter[Any] = TypeAdapter(JobEvent)


def parse_client_message(raw: str | bytes) -> SubscribeMessage | UnsubscribeMessage | PingMessage:
    """Parse a client frame; raises pydantic.ValidationError naming the bad field."""
    return _client_adapter.validate_json(raw)


def parse_event(raw: str | bytes | dict[str, Any]) -> (
        JobProgressEvent | JobCompletedEvent | JobFailedEvent | JobPreviewEvent | JobLogEvent):
    """Parse one job event."""
    if isinstance(raw, dict):
        return _event_adapter.validate_python(raw)
    return _event_adapter.validate_json(raw)
