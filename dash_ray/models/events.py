"""The seed's job events and the WebSocket messages, as discriminated unions on `type`; the
event frame (`Frame`: an event's JSON text as it is published, kept and relayed, and the one
parser of it); the one rule of "each frame once" (`Seen`).

`JobEvent` is the one name of "any job event" (`Event` in `dash_ray.client` is an older name of
it, kept for users). `LiveEvent` (what a running job publishes besides its
end) and `ServerMessage` (what a socket sends) are other sets.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, TypeAdapter, model_validator

from dash_ray.models.base import LookupId, RequestModel, WireModel
from dash_ray.models.status import FINAL_EVENT_TYPES, JobStatus

__all__ = [
    "EVENT_TYPES",
    "NOT_SEEN",
    "ClientMessage",
    "ErrorMessage",
    "Frame",
    "JobCompletedEvent",
    "JobEvent",
    "JobFailedEvent",
    "JobLogEvent",
    "JobPreviewEvent",
    "JobProgressEvent",
    "LiveEvent",
    "PingMessage",
    "PongMessage",
    "Seen",
    "ServerMessage",
    "SubscribeMessage",
    "SubscribedMessage",
    "UnsubscribeMessage",
    "parse_client_message",
    "parse_event",
    "unseen",
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
    """`job:failed {jobId, queue, error}` plus seq, ts and status (`failed`, `cancelled`, or `expired`:
    not started by its deadline)."""

    type: Literal["job:failed"] = "job:failed"
    error: str
    status: Literal["failed", "cancelled", "expired"] = "failed"


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

_JobEvents = JobProgressEvent | JobCompletedEvent | JobFailedEvent | JobPreviewEvent | JobLogEvent

# Any job event (parsed by its `type`): the one name of this union.
JobEvent = Annotated[_JobEvents, Field(discriminator="type")]

# Their `type`s: job:progress, job:completed, job:failed, job:preview, job:log.
EVENT_TYPES: tuple[str, ...] = tuple(c.model_fields["type"].default for c in get_args(_JobEvents))


Scope = Literal["mine", "all"]


class SubscribeMessage(RequestModel):
    """Client -> server: `{"type":"subscribe","jobIds":[...]}`; `since` maps jobId -> last seq seen.
    `{"type":"subscribe","scope":"mine"}` follows the caller's jobs: those unfinished now and
    every one made from then on, from any client (`"all"`: every user's new jobs, admins)."""

    type: Literal["subscribe"]
    job_ids: list[LookupId] = Field(default_factory=list, max_length=MAX_SUBSCRIBE_IDS)
    since: dict[LookupId, Annotated[int, Field(ge=0, le=2**53)]] | None = None
    previews: bool = True  # false: this socket gets no `job:preview` events of these jobs
    scope: Scope | None = None

    @model_validator(mode="after")
    def _something(self) -> SubscribeMessage:
        if not self.job_ids and self.scope is None:
            raise ValueError("jobIds or scope is required")
        return self


class UnsubscribeMessage(RequestModel):
    """Client -> server: `{"type":"unsubscribe","jobIds":[...]}`; `{"type":"unsubscribe","scope":"mine"}`
    stops the feed of new jobs (the jobs it brought are followed until they end)."""

    type: Literal["unsubscribe"]
    job_ids: list[LookupId] = Field(default_factory=list, max_length=MAX_SUBSCRIBE_IDS)
    scope: Scope | None = None

    @model_validator(mode="after")
    def _something(self) -> UnsubscribeMessage:
        if not self.job_ids and self.scope is None:
            raise ValueError("jobIds or scope is required")
        return self


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
    scope: Scope | None = None  # the socket's feed of new jobs, if it has one


class ErrorMessage(WireModel):
    """Server -> client: a request was bad; the socket stays usable."""

    type: Literal["error"] = "error"
    code: str
    message: str
    job_id: str | None = None


ServerMessage = Annotated[_JobEvents | PongMessage | SubscribedMessage | ErrorMessage, Field(discriminator="type")]

_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)
_event_adapter: TypeAdapter[Any] = TypeAdapter(JobEvent)


def parse_client_message(raw: str | bytes) -> SubscribeMessage | UnsubscribeMessage | PingMessage:
    """Parse a client frame; raises pydantic.ValidationError naming the bad field."""
    return _client_adapter.validate_json(raw)


def parse_event(raw: str | bytes | dict[str, Any]) -> JobEvent:
    """Parse one job event."""
    if isinstance(raw, dict):
        return _event_adapter.validate_python(raw)
    return _event_adapter.validate_json(raw)


# ------------------------------------------------------------------ the frame
_STATUS_KEYS = {s: f'"status":"{s}"' for s in get_args(JobStatus)}


class Frame:
    """A job event's frame: its JSON text as the scripts publish it on the job's channel, keep it
    in its replay stream and put it in the webhook outbox, and as sockets, SSE and webhooks send
    it on, unchanged. Its fields are read from the text by position, not by a JSON parse:
    relaying a frame must stay as cheap as relaying a string. Its `type` and `seq` are read at
    once (every reader of a frame needs them), the rest when asked.

    The text is `Frame.body_of(event)` (pydantic's compact JSON: `type` first, ids and statuses
    without a quote in them) to which the script adds `,"queuePosition":N` (a waiting job's
    place) and `,"seq":N}`; a waiting job's place refresh (`gateway/ws.py`) has no `seq`. This
    class is the only code that reads that shape; `event()` parses the whole event."""

    __slots__ = ("seq", "text", "type")

    def __init__(self, text: str) -> None:
        self.text = text
        # The event's type (`job:progress`, ...: the first field), '' if the text has none.
        self.type = text[9:text.find('"', 9)] if text.startswith('{"type":"') else ""
        # The seq (the scripts end every frame with `"seq":N}`); 0 for none.
        i = text.rfind('"seq":')
        try:
            self.seq = int(text[i + 6:-1]) if i >= 0 else 0
        except ValueError:
            self.seq = 0

    def __repr__(self) -> str:
        return f"Frame({self.text[:80]!r})"

    @staticmethod
    def body_of(event: JobEvent) -> str:
        """An event's frame as the scripts take it: its JSON without `seq` and the closing brace
        (stamps the event's `ts` if it has none)."""
        if not event.ts:
            event.ts = round(time.time(), 3)
        return event.model_dump_json(by_alias=True, exclude_none=True, exclude={"seq"})[:-1]

    @property
    def is_final(self) -> bool:
        """True for a job's final event (`models.status.FINAL_EVENT_TYPES`): nothing follows it."""
        return self.type in FINAL_EVENT_TYPES

    @property
    def is_preview(self) -> bool:
        """True for a `job:preview` frame (a picture: a socket may opt out of them)."""
        return self.type == "job:preview"

    @property
    def job_id(self) -> str | None:
        """The job's id."""
        return _string(self.text, '"jobId":"')

    @property
    def user_id(self) -> str | None:
        """The job's owner (None if the frame names none). The first `"userId":"` starts it (the
        field comes before any free text; a user id holds no quote)."""
        return _string(self.text, _USER_KEY)

    @property
    def status(self) -> str | None:
        """The status the event carries (None for previews and log lines). A completed event's
        result comes before its status and may hold that key: its status is known by its type."""
        return "completed" if self.type == "job:completed" else _string(self.text, '"status":"')

    def has_status(self, status: str) -> bool:
        """`status == self.status`, cheaper: a progress or failed event's only `"status":"` is its
        own (it comes before free text, which holds no bare quote)."""
        if self.type == "job:completed":
            return status == "completed"
        key = _STATUS_KEYS.get(status)
        return key in self.text if key is not None else self.status == status

    def of_another(self, owner: str | None) -> bool:
        """True when the frame names an owner other than `owner`: its job id changed hands (the
        job expired and another user's job took the id) after the reader checked whose it was."""
        if owner is None:
            return False
        got = _string(self.text, _USER_KEY)
        return got is not None and got != owner

    def event(self) -> JobEvent:
        """The whole event, parsed."""
        return parse_event(self.text)


_USER_KEY = '"userId":"'


def _string(text: str, key: str) -> str | None:
    """The value of the first string field `key` (`"name":"`) in a frame's text."""
    i = text.find(key)
    if i < 0:
        return None
    i += len(key)
    j = text.find('"', i)
    return text[i:j] if j > 0 else None


# ------------------------------------------------------------------ each frame once
NOT_SEEN = -1  # the last seq a reader had of a job it had nothing of (a snapshot at seq 0 is new)


def unseen(seq: int, last: int) -> bool:
    """The one rule of "each frame once, in order": a job's frames carry increasing seqs, so a
    frame is new to a reader when its seq is past the last one the reader had. (The gateway's
    catch-up, `queues/frames.py`, and the client's resubscribe with `since` both keep to it.)"""
    return seq > last


class Seen:
    """The last seq a reader had of each of several jobs (`last`; what it resubscribes `since`)."""

    __slots__ = ("last",)

    def __init__(self, last: dict[str, int] | None = None) -> None:
        self.last: dict[str, int] = dict(last or {})

    def fresh(self, job_id: str, seq: int) -> bool:
        """Whether a frame of `job_id` at `seq` is new to the reader; it counts as had if so."""
        if not unseen(seq, self.last.get(job_id, NOT_SEEN)):
            return False
        self.last[job_id] = seq
        return True

    def since(self, job_ids: list[str]) -> dict[str, int]:
        """The last seq had of those of `job_ids` the reader had anything of."""
        return {j: self.last[j] for j in job_ids if j in self.last}
