"""GatewayServices: what the app's routes use (job store, event hub, auth, limits, artifacts).
What the gateway keeps in Redis goes through `queues/` (the store, `Accounts`, `SubmitLimiter`):
no key is read or written here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from dash_ray import tracing
from dash_ray.config import Settings
from dash_ray.errors import Unauthorized
from dash_ray.gateway.auth import Principal, TokenAuth, UrlSigner
from dash_ray.gateway.metrics import ReplicaMetrics
from dash_ray.gateway.policy import SubmitPolicy
from dash_ray.gateway.ratelimit import OpenSlots
from dash_ray.gateway.webhooks import WebhookSender
from dash_ray.models.payloads import JobPayload
from dash_ray.queues import Durability, EventHub, Feed, JobStore, connect
from dash_ray.queues.accounts import Accounts, SubmitLimiter
from dash_ray.queues.audit import AuditLog
from dash_ray.queues.schedules import Schedules
from dash_ray.services import ArtifactStore, ModelRegistry

__all__ = ["GatewayServices"]


@dataclass
class GatewayServices:
    """One replica's connections and helpers; `start()` before serving, `close()` after."""

    settings: Settings
    redis: Redis  # the connection the store and accounts share (closed with the services)
    store: JobStore
    hub: EventHub
    auth: TokenAuth
    signer: UrlSigner
    limiter: SubmitLimiter
    policy: SubmitPolicy
    artifacts: ArtifactStore
    queues: tuple[str, ...]
    metrics: ReplicaMetrics = field(default_factory=lambda: ReplicaMetrics(uuid.uuid4().hex[:8]))
    sockets: OpenSlots = field(default_factory=lambda: OpenSlots(20))  # open WebSockets on this replica, by user
    streams: OpenSlots = field(default_factory=lambda: OpenSlots(20))  # open event streams (SSE), by user
    webhooks: WebhookSender | None = None  # sends the outbox's webhooks (on its own connection)
    started: bool = False
    accounts: Accounts = field(init=False)  # tickets, upload bytes, health: on `redis`, by the store's keys
    feed: Feed = field(init=False)  # new jobs' first events, by owner (the sockets' `scope` feeds)
    schedules: Schedules = field(init=False)  # recurring jobs (BullMQ's job schedulers)

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.redis, self.store.keys)
        budgets = self.policy.budgets
        assert budgets is not None  # (a policy over a store has them)
        self.budgets = budgets  # GPU budgets per user (queues/ledger.py)
        self.audit = AuditLog(self.redis, self.store.keys, max_len=self.settings.audit_max_entries)
        self.feed = Feed(self.hub, self.store.keys.feed)
        o = self.store.producer.options
        self.schedules = Schedules(self.redis, self.store.keys, self.store.control, self.store.lifecycle,
                                   keep_completed=o.keep_completed,
                                   keep_failed=o.keep_failed, keep_s=o.finished_ttl_s,
                                   default_attempts=o.default_attempts)

    @classmethod
    def create(cls, settings: Settings, redis_url: str, *, queues: Iterable[str] | None = None,
               validate: Callable[[JobPayload], None] | None = None) -> GatewayServices:
        """Build the services of one replica from settings and a Redis URL (`queues`: those it
        serves, by default the settings' queues)."""
        queues = tuple(queues) if queues is not None else settings.queue_names
        artifacts = ArtifactStore(settings.artifacts_location)
        registry = ModelRegistry(settings, artifacts)
        if validate is None:
            validate = registry.validate
        tracing.configure("dash-ray-gateway", settings)
        redis = connect(redis_url, name="dash:gateway")
        store = JobStore(
            redis, prefix=settings.key_prefix, keep_completed=settings.keep_completed,
            keep_failed=settings.keep_failed, default_attempts=settings.default_attempts,
            finished_ttl_s=settings.finished_ttl_s, events_per_job=settings.events_per_job,
            user_history_max=settings.user_history_max, queues=queues, validate=validate,
            fair_share=settings.fair_share, user_weights=settings.user_weights,
            start_by_s={q: s for q in queues if (s := getattr(settings, f"{q}_start_by_s", None))},
            cache_results=settings.cache_results, allow_cache=settings.allow_cache, content=registry.content,
            fair_half_life_s=settings.fair_half_life_s, durability=Durability.of(settings),
        )
        limiter = SubmitLimiter(redis, store.keys, settings.rate_submit)
        signer = UrlSigner(settings.secret(), settings.artifact_url_ttl_s)
        metrics = ReplicaMetrics(uuid.uuid4().hex[:8])
        webhooks = WebhookSender(settings, connect(redis_url, name="dash:webhooks"), store.keys, signer, metrics)
        return cls(
            settings=settings, redis=redis, store=store, hub=EventHub(redis_url),
            auth=TokenAuth.of(settings), signer=signer,
            limiter=limiter, policy=SubmitPolicy(settings, store, artifacts),
            artifacts=artifacts, queues=queues, metrics=metrics, webhooks=webhooks,
            sockets=OpenSlots(settings.max_sockets_per_user), streams=OpenSlots(settings.max_streams_per_user),
        )

    async def issue_ticket(self, who: Principal) -> str:
        """A one-use WebSocket ticket for `who`, valid `ws_ticket_ttl_s` (kept in Redis, so any
        replica redeems it)."""
        return await self.accounts.issue_ticket(who.user_id, who.admin, self.settings.ws_ticket_ttl_s)

    async def redeem_ticket(self, ticket: str) -> Principal:
        """The caller a ticket was issued to; the ticket is gone afterwards (GETDEL)."""
        if not ticket or len(ticket) > 64:
            raise Unauthorized("invalid ticket")
        found = await self.accounts.redeem_ticket(ticket)
        if found is None:
            raise Unauthorized("invalid or used ticket")
        return Principal(user_id=found[0], admin=found[1])

    async def start(self) -> None:
        """Start the event hub (one pub/sub connection for all sockets of this replica) and the
        webhook sender."""
        if not self.started:
            await self.hub.start()
            if self.webhooks is not None:
                self.webhooks.start()
            self.started = True

    async def close(self) -> None:
        """Close connections."""
        if self.webhooks is not None:
            with contextlib.suppress(Exception):
                await self.webhooks.close()
        with contextlib.suppress(Exception):
            await self.hub.close()
        with contextlib.suppress(Exception):
            await self.store.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        self.started = False

    def queue_info(self, name: str) -> dict[str, Any]:
        """Concurrency and GPU fraction of a queue (from settings)."""
        q = self.settings.queue(name)
        return {"concurrency": q.concurrency, "gpu_fraction": q.gpu_fraction}
