"""GatewayServices: what the app's routes use (job store, event hub, auth, limits, artifacts)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from dash_ray.config import Settings
from dash_ray.gateway.auth import TokenAuth
from dash_ray.gateway.metrics import ReplicaMetrics
from dash_ray.gateway.ratelimit import SubmitLimiter
from dash_ray.models.payloads import JobPayload
from dash_ray.queues import EventHub, JobStore, connect
from dash_ray.services import ArtifactStore, ModelRegistry

__all__ = ["GatewayServices"]


@dataclass
class GatewayServices:
    """One replica's connections and helpers; `start()` before serving, `close()` after."""

    settings: Settings
    redis: Redis
    store: JobStore
    hub: EventHub
    auth: TokenAuth
    limiter: SubmitLimiter
    artifacts: ArtifactStore
    queues: tuple[str, ...]
    metrics: ReplicaMetrics = field(default_factory=lambda: ReplicaMetrics(uuid.uuid4().hex[:8]))
    sockets_by_user: dict[str, int] = field(default_factory=dict)  # open WebSockets on this replica
    started: bool = False

    @classmethod
    def create(cls, settings: Settings, redis_url: str, *, queues: Iterable[str] | None = None,
               validate: Callable[[JobPayload], None] | None = None) -> GatewayServices:
        """Build the services of one replica from settings and a Redis URL (`queues`: those it
        serves, by default the settings' queues)."""
        queues = tuple(queues) if queues is not None else settings.queue_names
        artifacts = ArtifactStore(settings.artifacts_location)
        if validate is None:
            validate = ModelRegistry(settings, artifacts).validate
        redis = connect(redis_url, name="dash:gateway")
        store = JobStore(
            redis, prefix=settings.key_prefix, keep_completed=settings.keep_completed,
            keep_failed=settings.keep_failed, default_attempts=settings.default_attempts,
            finished_ttl_s=settings.finished_ttl_s, events_per_job=settings.events_per_job,
            user_history_max=settings.user_history_max, queues=queues, validate=validate,
        )
        limiter = SubmitLimiter(redis_url, store.keys.ratelimit_prefix, settings.rate_submit,
                                settings.max_waiting_per_user, store.open_jobs)
        return cls(
            settings=settings, redis=redis, store=store, hub=EventHub(redis_url),
            auth=TokenAuth(settings.secret(), settings.token_ttl_s), limiter=limiter,
            artifacts=artifacts, queues=queues,
        )

    async def start(self) -> None:
        """Start the event hub (one pub/sub connection for all sockets of this replica)."""
        if not self.started:
            await self.hub.start()
            self.started = True

    async def close(self) -> None:
        """Close connections."""
        with contextlib.suppress(Exception):
            await self.hub.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        self.started = False

    def queue_info(self, name: str) -> dict[str, Any]:
        """Concurrency and GPU fraction of a queue (from settings)."""
        q = self.settings.queue(name)
        return {"concurrency": q.concurrency, "gpu_fraction": q.gpu_fraction}
