"""Durable queues on Redis (BullMQ's layout and Lua scripts), the job lifecycle, events and
embedded Redis.

Only this package imports bullmq or writes Redis keys.
"""

from dash_ray.queues.batch import Batch
from dash_ray.queues.connection import (
    MAYBE_TRANSIENT,
    TRANSIENT_ERRORS,
    connect,
    connect_sync,
    is_transient,
    redacted,
)
from dash_ray.queues.consumer import ActiveJob, FailOutcome, LockLost, QueueConsumer
from dash_ray.queues.embedded import EmbeddedRedis
from dash_ray.queues.events import EventBus, EventHub, event_from_state
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Lifecycle, Retention, SyncLifecycle, frame_seq, started_event
from dash_ray.queues.store import JobStore

__all__ = [
    "MAYBE_TRANSIENT",
    "TRANSIENT_ERRORS",
    "ActiveJob",
    "Batch",
    "EmbeddedRedis",
    "EventBus",
    "EventHub",
    "FailOutcome",
    "JobStore",
    "Keys",
    "Lifecycle",
    "LockLost",
    "QueueConsumer",
    "Retention",
    "SyncLifecycle",
    "connect",
    "connect_sync",
    "event_from_state",
    "frame_seq",
    "is_transient",
    "redacted",
    "started_event",
]
