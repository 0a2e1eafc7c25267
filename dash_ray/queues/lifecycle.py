"""The job lifecycle: every write of a job's state, as explicit operations.

| operation  | when                                                   | script  |
|------------|--------------------------------------------------------|---------|
| `create`   | a job is added: BullMQ's add and the record, one script | CREATE  |
| `start`    | an attempt begins on a worker                          | EVENT   |
| `progress` | the running attempt reports                            | EVENT   |
| `wait_again` | the job waits again: retried, recovered, attempt failed | EVENT (live) |
| `finish`   | completed, failed or cancelled for good                | FINISH  |
| `cancel`   | a running job is asked to stop: the flag, one notification |  -   |
| `adopt`    | a plain BullMQ producer's job is found: its record, history, event | ADOPT_SCAN, ADOPT |

Each operation builds its event here (the only place that does) and runs one script
(`queues/lua.py`). `Lifecycle` runs them on an asyncio client, optionally on a `Batch`;
`SyncLifecycle` publishes the worker's `start` and `progress` events from plain threads.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from limits import parse as parse_rate
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from dash_ray.config import Settings
from dash_ray.errors import RateLimited, Unavailable
from dash_ray.models.events import (
    Frame,
    JobCompletedEvent,
    JobEvent,
    JobFailedEvent,
    JobLogEvent,
    JobPreviewEvent,
    JobProgressEvent,
    LiveEvent,
)
from dash_ray.models.status import Status
from dash_ray.queues.batch import Batch, Grouped, register
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import (
    ADOPT,
    ADOPT_SCAN,
    CHECKPOINT,
    CREATE,
    EVENT,
    FAIR_PRUNE,
    FINISH,
    REOPEN,
    TAKE,
    Script,
    with_bull_add,
    with_bull_take,
)

__all__ = [
    "DURATION_BUCKETS",
    "After",
    "BullAdd",
    "BullAddRecorder",
    "Created",
    "Durability",
    "Lifecycle",
    "Quota",
    "Rate",
    "Retention",
    "SyncLifecycle",
    "duration_bucket",
    "started_event",
]

_SEP = "\x1f"
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True)
class Retention:
    """How long job records live: events kept per job, seconds a finished job's record lives,
    finished jobs kept per queue, history entries kept per user."""

    events_per_job: int = 1000
    logs_per_job: int = 1000  # lines of a job's log kept (the newest)
    finished_ttl_s: int = 7 * 24 * 3600
    keep_finished: int = 6000
    history_max: int = 10_000
    recent_max: int = 100_000  # jobs of all users in the admins' list

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        """The retention a deployment's settings ask for."""
        return cls(events_per_job=settings.events_per_job, finished_ttl_s=settings.finished_ttl_s,
                   keep_finished=settings.keep_completed + settings.keep_failed,
                   history_max=settings.user_history_max)


@dataclass(frozen=True)
class Durability:
    """Writes a replica must have before they count (DASH_REDIS_WAIT_REPLICAS): after a job's
    creation (a flow's too), `replicated` writes a counter of its own and WAITs for `replicas`
    acknowledgements of it, on one connection, in one round trip (a completion does the same at
    the end of its own batch: `QueueConsumer.complete`). The
    replication offset is the primary's, one for all its writes: a replica that has the counter's
    write has every write made before it, from any connection (scripts run again after NOSCRIPT
    included). A creation fewer replicas acknowledged in time is refused (`Unavailable`, a 503:
    the job may exist on the primary; a submit sent again with its id is answered only once a
    replica has it too); a completion is logged (it is written: the job does not run again
    unless the primary is lost before a replica has it). 0 replicas: nothing waits."""

    replicas: int = 0
    timeout_ms: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> Durability:
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    def on(self, batch: Batch, keys: Keys) -> bool:
        """Queue the counter's write and the WAIT at the end of `batch` (False: no replicas asked
        for, nothing queued); `acked` takes their replies off its replies."""
        if not self.replicas:
            return False
        batch.add("incr", keys.durability).add("wait", self.replicas, self.timeout_ms)
        return True

    @staticmethod
    def acked(replies: list[Any]) -> int:
        """The replicas that acknowledged, from the end of a batch's replies (the two `on` queued
        are taken off)."""
        acked = replies.pop()
        replies.pop()
        return acked if isinstance(acked, int) else 0

    async def replicated(self, redis: Redis, keys: Keys) -> int:
        """How many replicas have every write made so far (at most `replicas`; waits up to `timeout_ms`)."""
        batch = Batch(redis)
        return self.acked(await batch.execute()) if self.on(batch, keys) else 0

    async def check(self, redis: Redis, keys: Keys, what: str) -> None:
        """Unavailable unless `replicas` replicas have every write made so far (no-op with 0)."""
        if not self.replicas:
            return
        acked = await self.replicated(redis, keys)
        if acked < self.replicas:
            raise Unavailable(f"{what} was written, but {acked} of {self.replicas} replicas acknowledged it within "
                              f"{self.timeout_ms} ms (DASH_REDIS_WAIT_REPLICAS); send it again with its id")


@dataclass(frozen=True)
class Quota:
    """The owner's limits a new job must fit, checked and taken by `create` in the script that
    creates it (so concurrent submits cannot overshoot): unfinished jobs (`max_open`), bytes kept
    in Redis (`max_bytes`; a job is charged its payload's bytes plus `overhead_bytes` for its
    record, events and result), and, for a job that counts as high priority (`high`),
    unfinished high-priority jobs (`max_high`). None: no limit."""

    overhead_bytes: int = 0
    max_open: int | None = None
    max_bytes: int | None = None
    high: bool = False
    max_high: int | None = None
    rate: Rate | None = None  # the owner's submission rate, counted by `create` (None: counted before)


@dataclass(frozen=True)
class Rate:
    """A submission rate: at most `limit` in any `window_ms` (a moving window per user, counted
    in Redis by the script that makes the job, or by `SubmitLimiter`); `text` names it."""

    limit: int
    window_ms: int
    text: str

    @classmethod
    def parse(cls, rate: str) -> Rate:
        """`120/minute`, `2 per second`, `1000/hour`... (the `limits` package's notation)."""
        item = parse_rate(rate.replace(" per ", "/"))
        return cls(int(item.amount), int(item.get_expiry() * 1000), str(item))

    def refused(self, wait_ms: int) -> RateLimited:
        """The error of a submission over this rate whose next place frees in `wait_ms`
        (`wait_ms` on it: the gateway remembers the refusal that long)."""
        retry = max(1, math.ceil(wait_ms / 1000))
        err = RateLimited(f"rate limit {self.text} exceeded; retry in {retry}s", retry_after_s=retry)
        err.wait_ms = wait_ms  # type: ignore[attr-defined]
        return err


@dataclass(frozen=True)
class Created:
    """What `create` did: `seq`/`position` of the new job's event, or (seq 0) the existing
    record's queue, digest, status and owner (all empty: BullMQ holds the id without a record),
    or (seq 0, `refused` set) the quota it did not fit: ("open" | "high" | "bytes", the limit,
    the bytes kept now), or ("rate", the limit, the ms until a place frees)."""

    seq: int
    position: int | None
    queue: str = ""
    digest: str = ""
    status: str = ""
    owner: str = ""
    refused: tuple[str, int, int] | None = field(default=None, kw_only=True)
    follows: str = field(default="", kw_only=True)  # made, following this unfinished run of its payload
    cached: str = field(default="", kw_only=True)  # not made: this completed job ran its payload

    @property
    def created(self) -> bool:
        """True when the job was new."""
        return self.seq > 0

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Created:
        """The reply of CREATE (REOPEN's refusal too) as a `Created`: {seq, position} for a new
        job; {0, -2, what, limit[, used]} for a refused quota; else {0, -1, queue, digest, status,
        owner} of the record that holds the id."""
        seq, pos = int(reply[0]), int(reply[1])
        if seq:
            return cls(seq, pos if pos > 0 else None, follows=_text(reply[2]) if len(reply) > 2 else "")
        if pos == -3:
            return cls(0, None, cached=_text(reply[2]))
        if pos == -2:
            what = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
            return cls(0, None, refused=(what, int(reply[3]), int(reply[4]) if len(reply) > 4 else 0))
        return cls(0, None, *(str(x) for x in reply[2:6]))


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def log_line(event: JobLogEvent) -> str:
    """How a log line is kept in BullMQ's job log (bull-board's Logs tab shows these)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.ts or time.time()))
    return f"{when} {event.level.upper()} {event.message}"


def _limit(n: int | None) -> str:
    """A limit as a script argument ('' for none)."""
    return "" if n is None else str(n)


def state_fields(event: JobEvent, extra: dict[str, Any] | None = None) -> str:
    """The job hash fields an event sets, as one argument: key, value, ... joined by \\x1f.
    The hash's `status` is its last state event's (`events.event_from_state` reads it back;
    `models/status.derive` refines it with BullMQ's state). A preview or a log line sets none:
    the job's state is its progress."""
    if isinstance(event, JobPreviewEvent | JobLogEvent):
        return ""
    fields: dict[str, Any] = {"queue": event.queue, "updated": event.ts, **(extra or {})}
    if event.user_id:
        fields["userId"] = event.user_id
    if isinstance(event, JobCompletedEvent):
        fields.update(status=event.status, progress=100, message="",
                      result=json.dumps(event.result, separators=(",", ":")), finished=event.ts)
    elif isinstance(event, JobFailedEvent):
        fields.update(status=event.status, error=event.error, finished=event.ts, message=event.error)
    else:
        fields.update(status=event.status, progress=event.progress, message=event.message)
        if event.status == Status.ACTIVE:
            fields["started"] = event.ts
        if event.attempt is not None:
            fields["attempt"] = event.attempt
    return _SEP.join(f"{k}{_SEP}{str(v).replace(_SEP, ' ')}" for k, v in fields.items())


def duration_bucket(seconds: float) -> str:
    """The histogram field of a duration: `le_<bound>` of the first bound it fits, else `le_inf`."""
    for b in DURATION_BUCKETS:
        if seconds <= b:
            return f"le_{b:g}"
    return "le_inf"


def started_event(job_id: str, queue: str, user_id: str | None, attempt: int, attempts: int) -> JobProgressEvent:
    """The `active` event of an attempt that begins on a worker."""
    return JobProgressEvent(
        job_id=job_id, queue=queue, user_id=user_id, status="active", progress=0,
        message=f"started (attempt {attempt} of {attempts})", attempt=attempt, attempts=attempts,
    )


# What TAKE fills in, in `started_marks`' frame and fields (Lua constants: MARK_JOB...): none
# can occur in an event's text by chance (ids and owners are JSON strings there, numbers these).
MARKS = {"mark_job": "zzMARKJOBzz", "mark_user": "zzMARKUSERzz", "mark_attempt": "777000001",
         "mark_attempts": "777000002", "mark_ts": "777000003.0"}


def started_marks(queue: str) -> tuple[str, str]:
    """`started_event`'s frame and state fields with marks where the job's id, owner, attempt,
    attempts and time go: TAKE fills them in for the job it takes."""
    event = started_event(MARKS["mark_job"], queue, MARKS["mark_user"], int(MARKS["mark_attempt"]),
                          int(MARKS["mark_attempts"]))
    event.ts = float(MARKS["mark_ts"])
    frame, fields = Frame.body_of(event), state_fields(event)
    if any(m not in frame for m in MARKS.values()):
        raise ValueError(f"started_event's frame lost a mark: {frame}")
    if MARKS["mark_job"] in fields:  # TAKE fills the owner, attempt(s) and time in the fields, not the id
        raise ValueError(f"started_event's fields have a mark TAKE does not fill: {fields!r}")
    return frame, fields


@dataclass(frozen=True)
class After:
    """The jobs a new job waits for (`options.after`): (id, queue) each, and what one of them
    failing does to it (`fail` / `ignore`)."""

    jobs: tuple[tuple[str, str], ...]
    policy: str = "fail"

    @property
    def ids(self) -> list[str]:
        return [job_id for job_id, _queue in self.jobs]


@dataclass(frozen=True)
class BullAdd:
    """One call of a BullMQ add script: its SHA and source, and the KEYS and ARGV it was given."""

    sha: str
    source: str
    keys: tuple[Any, ...]
    args: tuple[Any, ...]


class BullAddRecorder:
    """Stands in as the client of BullMQ's `addJob` and records the script call it makes
    (`Lifecycle.create` runs it, inside CREATE)."""

    _SOURCES: dict[str, str] = {}  # SHA -> source: a SHA names one text, whatever the queue

    def __init__(self, scripts: dict[str, Any]) -> None:
        self._scripts = scripts
        self.call: BullAdd | None = None

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> int:
        """Record the call; answers 0 (BullMQ's add takes it as success)."""
        source = self._SOURCES.get(sha)
        if source is None:  # once per script (a map of them all per add was 1% of a submit)
            source = self._SOURCES[sha] = next(s.script for s in self._scripts.values() if s.sha == sha)
        self.call = BullAdd(sha, source, keys_and_args[:numkeys], keys_and_args[numkeys:])
        return 0


# ------------------------------------------------------------------ calls
class _Calls:
    """The keys and arguments of each operation (shared by the async and sync runners)."""

    def __init__(self, keys: Keys, retention: Retention) -> None:
        self.keys = keys
        self.retention = retention
        self.texts = {s.name: self.text(s) for s in (EVENT, FINISH, CHECKPOINT, ADOPT, ADOPT_SCAN, FAIR_PRUNE, REOPEN)}

    def text(self, script: Script, after: tuple[int, int] = (0, 0), prelude: str = "") -> str:
        """A script's source with this deployment's constants."""
        r = self.retention
        return script.text(after=after, prelude=prelude, maxlen=r.events_per_job, ttl=r.finished_ttl_s,
                           logs_max=r.logs_per_job,
                           keep=r.keep_finished, ns=self.keys.ns, history_max=r.history_max,
                           recent_max=r.recent_max, **MARKS)

    def take_text(self, move_to_active: str) -> str:
        """TAKE's source, with BullMQ's moveToActive (`move_to_active`, its text) as its prelude."""
        return self.text(TAKE, after=(11, 3), prelude=with_bull_take(move_to_active))

    def take(self, queue: str) -> tuple[list[str], list[Any]]:
        """TAKE's own KEYS and ARGV (after moveToActive's) for a queue: the job's are placeholders."""
        frame, fields = started_marks(queue)
        keys = {"job": self.keys.job("-"), "events": self.keys.events("-"), "hooks": self.keys.hooks,
                "hook_bodies": self.keys.hook_bodies}
        return TAKE.pack(keys, {"frame": frame, "fields": fields, "channel": "", "job_id": "", "queue": queue})

    def _common(self, event: JobEvent) -> tuple[dict[str, str], dict[str, Any]]:
        k = self.keys
        user = event.user_id or "_"
        keys = {"job": k.job(event.job_id), "events": k.events(event.job_id), "finished": k.finished(event.queue),
                "open": k.waiting_count(user), "hooks": k.hooks, "hook_bodies": k.hook_bodies, "kept": k.kept(user)}
        args = {"channel": k.channel(event.job_id), "frame": Frame.body_of(event), "job_id": event.job_id}
        return keys, args

    def create(self, event: JobProgressEvent, digest: str, created_ms: int, position: bool,
               hook: tuple[str, list[str]] | None = None,
               fair: tuple[int, float] | None = None, quota: Quota | None = None,
               size: int = 0, start_by: str = "", cache: str = "", data: str = "",
               after: After | None = None, half_life_s: float = 0.0) -> tuple[list[str], list[Any]]:
        keys, args = self._common(event)
        user = event.user_id or "_"
        k = self.keys
        keys.update(history=k.user_jobs(user), history_n=k.user_counter(user), wait=k.bull(event.queue, "wait"),
                    prioritized=k.bull(event.queue, "prioritized"), bull_job=k.bull(event.queue, event.job_id),
                    recent=k.recent, recent_n=k.recent_counter, fair=k.fair(event.queue), pc=k.bull(event.queue, "pc"),
                    usage=k.usage, sizes=k.sizes(user), rate=k.rate(user), start_by=k.start_by(event.queue),
                    cache=k.cache(user, cache) if cache else k.cache(user, "-"), fair_usage=k.fair_usage(event.queue))
        level, inc = fair if fair else (0, None)
        q = quota or Quota()
        nonce = secrets.token_hex(8)  # this call's: a copy of it sent again is told from other submits

        args.update(fair_level=str(level), fair_user=event.user_id or "_",
                    fair_inc="" if inc is None else repr(float(inc)), user=user, now_ms=created_ms,
                    bytes=size + q.overhead_bytes, max_bytes=_limit(q.max_bytes), max_open=_limit(q.max_open),
                    high="1" if q.high else "", max_high=_limit(q.max_high),
                    rate_limit=_limit(q.rate.limit if q.rate else None),
                    rate_window_ms=q.rate.window_ms if q.rate else 0,
                    start_by=start_by, nonce=nonce, feed=k.feed, cache="1" if cache else "", data=data if cache else "",
                    after="" if after is None else _SEP.join([after.policy, *after.ids]),
                    half_life_ms=str(int(half_life_s * 1000)) if half_life_s > 0 else "")
        extra: dict[str, Any] = {"created": created_ms, "digest": digest, "made": nonce}
        if q.high:
            extra["high"] = 1
        if after is not None:  # the jobs it waits for
            extra["after"] = json.dumps(after.ids, separators=(",", ":"))
        if hook:  # the webhook: its URL, and the kinds of event it wants (",completed,failed,")
            extra.update(hookUrl=hook[0], hookEvents=f",{','.join(hook[1])},")
        args.update(fields=state_fields(event, extra), position="1" if position else "")
        return CREATE.pack(keys, args)

    def adopt(self, event: JobProgressEvent, created_ms: int) -> tuple[list[str], list[Any]]:
        keys, args = self._common(event)
        user = event.user_id or ""
        k = self.keys
        keys.update(history=k.user_jobs(user or "_"), history_n=k.user_counter(user or "_"),
                    wait=k.bull(event.queue, "wait"), prioritized=k.bull(event.queue, "prioritized"),
                    bull_job=k.bull(event.queue, event.job_id), recent=k.recent, recent_n=k.recent_counter)
        args.update(fields=state_fields(event, {"created": created_ms}), user=user,
                    position="1" if event.status == "waiting" else "", feed=k.feed)
        return ADOPT.pack(keys, args)

    def event(self, event: LiveEvent, live: bool | str = False, position: bool = False,
              token: str = "") -> tuple[list[str], list[Any]]:
        keys, args = self._common(event)
        keys.update(cancel=self.keys.cancel(event.job_id), wait=self.keys.bull(event.queue, "wait"),
                    prioritized=self.keys.bull(event.queue, "prioritized"),
                    lock=self.keys.bull_lock(event.queue, event.job_id),
                    logs=self.keys.bull_logs(event.queue, event.job_id),
                    bull_job=self.keys.bull(event.queue, event.job_id),
                    bull_events=self.keys.bull(event.queue, "events"), bull_meta=self.keys.bull(event.queue, "meta"))
        progress = f"{event.progress:g}" if isinstance(event, JobProgressEvent) and event.status == "active" else ""
        args.update(fields=state_fields(event), live=live if isinstance(live, str) else "1" if live else "",
                    position="1" if position else "",
                    token=token, log=log_line(event) if isinstance(event, JobLogEvent) else "", progress=progress)
        return EVENT.pack(keys, args)

    def finish(self, event: JobCompletedEvent | JobFailedEvent, guard: str | None,
               duration_s: float | None) -> tuple[list[str], list[Any]]:
        keys, args = self._common(event)
        keys.update(cancel=self.keys.cancel(event.job_id), durations=self.keys.metrics(event.queue),
                    bull_job=self.keys.bull(event.queue, event.job_id), settle=self.keys.settle(event.queue))
        args.update(fields=state_fields(event), now_ms=int(event.ts * 1000), finished_on=guard or "",
                    bucket=duration_bucket(duration_s) if duration_s is not None else "",
                    seconds=round(duration_s or 0.0, 6))
        return FINISH.pack(keys, args)


class Lifecycle:
    """The lifecycle operations on an asyncio Redis client; `batch=` queues one on a Batch
    (its reply then comes from `batch.execute()`)."""

    def __init__(self, redis: Redis, keys: Keys, retention: Retention | None = None,
                 durability: Durability | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.durability = durability or Durability()
        self.calls = _Calls(keys, retention or Retention())
        self._scripts: dict[str, Any] = {n: redis.register_script(t) for n, t in self.calls.texts.items()}
        self._creates: dict[str, Any] = {}  # BullMQ add script's SHA -> CREATE around it
        self._grouped = Grouped(redis)
        register(*self._scripts.values())

    async def _run(self, script: Script, call: tuple[list[str], list[Any]], batch: Batch | None) -> Any:
        keys, args = call
        if batch is not None:
            await self._scripts[script.name](keys=keys, args=args, client=batch)
            return None
        return await self._scripts[script.name](keys=keys, args=args)

    async def create(self, event: JobProgressEvent, bull: BullAdd, *, digest: str, created_ms: int,
                     position: bool = True, hook: tuple[str, list[str]] | None = None,
                     fair: tuple[int, float] | None = None, quota: Quota | None = None,
                     size: int = 0, start_by: str = "", cache: str = "", data: str = "",
                     after: After | None = None, half_life_s: float = 0.0) -> Created:
        """Create a job in one script: BullMQ's add (`bull`, recorded from BullMQ's client) and
        the job's record, history entry and first event; or, when a job with this id has a
        record, change nothing and say whose (`Created.created` False). `hook`: the job's
        webhook (URL, event kinds), whose events then go to the outbox. `fair`: (its priority,
        1 / its owner's weight) to place it in its priority by fair share (None: FIFO), later by the
        work its owner was served lately, decayed over `half_life_s` (0: no memory). `quota`:
        the owner's limits it must fit, `size` its payload's bytes (refused: `Created.refused`,
        nothing written). `start_by`: its deadline to start, ms ('+<ms>': that long after the create,
        on Redis's clock): the record's `startBy`, and its queue's deadlines set, which
        `QueueConsumer.expire_overdue` sweeps. `cache`: the digest of a repeatable payload (and
        `data`, its JSON): the owner's completed run of it answers instead (`Created.cached`),
        an unfinished one is followed (`Created.follows`). `after`: the jobs it waits for (`bull`
        is then BullMQ's addParentJob), attached by the script that makes it (includes/after)."""
        script = self._create_script(bull)
        keys, args = self.calls.create(event, digest, created_ms, position, hook, fair, quota, size, start_by,
                                       cache, data, after, half_life_s)
        # Concurrent submits share a connection and its round trips (Grouped); a CREATE sent
        # again after a dropped connection answers as the first did (create.lua).
        made = Created.from_reply(await script(keys=[*bull.keys, *keys], args=[*bull.args, *args],
                                               client=self._grouped))
        if not made.refused:  # (made now, or before: either way acknowledged once a replica has it)
            await self.durability.check(self.redis, self.keys, "the job")
        return made

    def _create_script(self, bull: BullAdd) -> Any:
        """CREATE around one of BullMQ's add scripts (registered once per add script)."""
        script: Any = self._creates.get(bull.sha)
        if script is None:
            prelude = with_bull_add(bull.source, len(bull.keys), len(bull.args))
            text = self.calls.text(CREATE, after=(len(bull.keys), len(bull.args)), prelude=prelude)
            script = self._creates[bull.sha] = self.redis.register_script(text)
        return script

    async def create_many(self, items: list[tuple[JobProgressEvent, BullAdd, dict[str, Any]]]) -> list[Created | Exception]:
        """Several creates (each as `create`'s arguments: its event, BullMQ's add, the rest by
        name) in one MULTI/EXEC, in order: a flow, its parent before its children (BullMQ's add
        of a child needs its parent's job). Each one's outcome (an error reply as an exception)."""
        pipe = self.redis.pipeline(transaction=True)
        for event, bull, kw in items:
            keys, args = self.calls.create(event, kw["digest"], kw["created_ms"], kw.get("position", True),
                                           kw.get("hook"), kw.get("fair"), kw.get("quota"), kw.get("size", 0),
                                           kw.get("start_by", ""), half_life_s=kw.get("half_life_s", 0.0))
            await self._create_script(bull)(keys=[*bull.keys, *keys], args=[*bull.args, *args], client=pipe)
        replies = await pipe.execute(raise_on_error=False)
        await self.durability.check(self.redis, self.keys, "the flow")
        return [r if isinstance(r, Exception) else Created.from_reply(r) for r in replies]

    async def aclose(self) -> None:
        """Close the connection of its own that creates go out on (the client's stay open)."""
        await self._grouped.aclose()

    async def reopen(self, job_id: str, user_id: str, quota: Quota, size: int) -> tuple[str, int, int] | None:
        """Take the owner's limits for a finished job that is about to run again (a retry), as
        `create` takes them for a new one; returns the quota it did not fit, else None."""
        k = self.keys
        q = quota

        keys, args = REOPEN.pack(
            {"job": k.job(job_id), "open": k.waiting_count(user_id), "usage": k.usage, "sizes": k.sizes(user_id),
             "kept": k.kept(user_id)},
            {"job_id": job_id, "user": user_id, "now_ms": int(time.time() * 1000), "bytes": size + q.overhead_bytes,
             "max_bytes": _limit(q.max_bytes), "max_open": _limit(q.max_open), "max_high": _limit(q.max_high)})
        reply = await self._scripts[REOPEN.name](keys=keys, args=args)
        return Created.from_reply([0, *reply[1:]]).refused if int(reply[0]) == 0 else None

    async def report(self, event: JobProgressEvent, *, token: str = "", batch: Batch | None = None) -> bool | None:
        """A `start` (`started_event`) or `progress` event from asyncio code, the twin of
        `SyncLifecycle.publish`; returns whether the job should stop (None when queued on a batch)."""
        reply = await self._run(EVENT, self.calls.event(event, token=token), batch)
        return None if reply is None else bool(int(reply[2]))

    async def wait_again(self, job_id: str, queue: str, user_id: str | None, message: str, *,
                      status: str = "waiting", attempt: int | None = None, attempts: int | None = None,
                      position: bool = True, reopen: bool = False) -> int:
        """The job waits again (retried, recovered, or its attempt failed with retries left);
        returns the event's seq (0: it is final, and this is no `reopen`: a retry of a final job)."""
        event = JobProgressEvent(job_id=job_id, queue=queue, user_id=user_id, status=status, progress=0,
                                 message=message, attempt=attempt, attempts=attempts)
        seq, _pos, _c = await self._run(EVENT, self.calls.event(event, live="2" if reopen else "1", position=position),
                                        None)
        return int(seq)

    async def finish(self, event: JobCompletedEvent | JobFailedEvent, *, batch: Batch | None = None,
                     guard: str | None = None, duration_s: float | None = None) -> int | None:
        """The job's final event: completed, failed or cancelled. With `guard` (the finishedOn of
        BullMQ's completion in the same batch) only if that completion was ours. Returns the
        seq (0: the guard refused), or None when queued on a batch (its reply is [seq])."""
        reply = await self._run(FINISH, self.calls.finish(event, guard, duration_s), batch)
        return None if reply is None else int(reply[0])

    async def adopt_scan(self, queue: str, count: int = 1000) -> tuple[list[str], bool]:
        """Ids of jobs plain BullMQ producers added to `queue` since the last scan (no record of
        ours), among the next `count` BullMQ events; and whether there may be more events."""
        keys, args = ADOPT_SCAN.pack({"bull_events": self.keys.bull(queue, "events"),
                                      "cursor": self.keys.adopt_cursor(queue)}, {"count": count})
        reply = await self._scripts[ADOPT_SCAN.name](keys=keys, args=args)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in reply[2:]], int(reply[1]) >= count

    async def fair_prune(self, queue: str, fields: list[str]) -> int:
        """Forget those of a queue's fair-share clocks (`fields`) that give their user nothing now
        and never will again; returns how many."""
        if not fields:
            return 0
        keys, args = FAIR_PRUNE.pack({"fair": self.keys.fair(queue), "prioritized": self.keys.bull(queue, "prioritized")},
                                     {"fields": "\n".join(fields)})
        return int(await self._scripts[FAIR_PRUNE.name](keys=keys, args=args))

    async def adopt(self, job_id: str, queue: str, user_id: str | None, *, delayed: bool, created_ms: int) -> int:
        """Give a plain BullMQ producer's job a record: in its user's history (`userId` in its
        data), the admins' list, and its `waiting` / `delayed` event. Returns the event's seq
        (0: it has a record already, or is gone; -1: recorded without an event, it had started)."""
        event = JobProgressEvent(job_id=job_id, queue=queue, user_id=user_id, progress=0,
                                 status="delayed" if delayed else "waiting",
                                 message="delayed" if delayed else "waiting")
        keys, args = self.calls.adopt(event, created_ms)
        return int((await self._scripts[ADOPT.name](keys=keys, args=args))[0])

    async def cancel(self, job_id: str) -> None:
        """Ask a running job to stop: the flag in Redis (read with each of its events) and one
        notification to its consumer, which tells the worker at once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.cancel(job_id), "1", ex=24 * 3600)
        pipe.publish(self.keys.cancel_channel, job_id)
        await pipe.execute()


class SyncLifecycle:
    """`start` (`started_event`) and `progress` events from plain threads (GPU workers), several
    per round trip."""

    def __init__(self, redis: SyncRedis, keys: Keys, retention: Retention | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.calls = _Calls(keys, retention or Retention())
        self._event = redis.register_script(self.calls.texts[EVENT.name])
        self._checkpoint = redis.register_script(self.calls.texts[CHECKPOINT.name])

    def commit_checkpoint(self, job_id: str, queue: str, token: str, path: str) -> tuple[bool, str, bool]:
        """Make `path` the job's checkpoint if the attempt holding `token` still holds the job
        (and it is not final); returns (done, the path it replaced or '', whether the job is
        asked to yield its GPU now that it can resume from there)."""
        keys, args = CHECKPOINT.pack({"job": self.keys.job(job_id), "lock": self.keys.bull_lock(queue, job_id),
                                      "yield": self.keys.yield_flag(job_id)},
                                     {"token": token, "path": path})
        reply = self._checkpoint(keys=keys, args=args)
        prev = reply[1]
        return (bool(int(reply[0])), prev.decode() if isinstance(prev, bytes) else str(prev),
                len(reply) > 2 and bool(int(reply[2])))

    def checkpoint_of(self, job_id: str) -> str:
        """The job's last committed checkpoint ('' for none)."""
        value = self.redis.hget(self.keys.job(job_id), "checkpoint")
        return value.decode() if isinstance(value, bytes) else str(value or "")

    def publish(self, events: list[LiveEvent], tokens: list[str] | None = None) -> list[bool]:
        """Publish `start`/`progress`/`preview`/`log` events in order in one round trip; returns, per event,
        whether its job should stop: a cancel was requested, or (with the attempt's lock token
        in `tokens`) another attempt holds the job now, or it is already final."""
        calls = [self.calls.event(e, token=t) for e, t in zip(events, tokens or [""] * len(events), strict=True)]
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._event.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        out = []
        for (keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                reply = self._event(keys=keys, args=args)  # loads the script, then runs it
            elif isinstance(reply, Exception):
                raise reply
            out.append(bool(int(reply[2])))
        return out
