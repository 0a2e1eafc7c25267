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
from dash_ray.queues.eta import CostBook
from dash_ray.queues.events import EventBus, EventHub, Feed, event_from_state
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import (
    Durability,
    Lifecycle,
    Quota,
    Rate,
    Retention,
    SyncLifecycle,
    started_event,
)
from dash_ray.queues.outbox import Delivery, WebhookOutbox
from dash_ray.queues.store import JobStore

__all__ = [
    "MAYBE_TRANSIENT",
    "TRANSIENT_ERRORS",
    "ActiveJob",
    "Batch",
    "CostBook",
    "Delivery",
    "Durability",
    "EmbeddedRedis",
    "EventBus",
    "EventHub",
    "FailOutcome",
    "Feed",
    "JobStore",
    "Keys",
    "Lifecycle",
    "LockLost",
    "QueueConsumer",
    "Quota",
    "Rate",
    "Retention",
    "SyncLifecycle",
    "WebhookOutbox",
    "connect",
    "connect_sync",
    "event_from_state",
    "is_transient",
    "redacted",
    "started_event",
]
