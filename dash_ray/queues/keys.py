"""Every Redis key and channel name dash-ray uses, in one place.

BullMQ's own keys (`{prefix}:{queue}:...`) are left to BullMQ; ours live under
`{prefix}:__dash__:` so BullMQ dashboards that list `{prefix}:*:meta` do not see them.

The Lua scripts get their keys from here, in KEYS; the few a script must build itself (for ids
it reads in Redis) come from functions generated from these methods (`includes/keys`, queues/lua.py).
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    """Key and channel names for one key prefix."""

    def __init__(self, prefix: str = "bull") -> None:
        self.prefix = prefix
        self.ns = f"{prefix}:__dash__:"

    # BullMQ's keys, for reads that BullMQ's API does not offer.
    def bull(self, queue: str, suffix: str) -> str:
        """A BullMQ key of a queue: `{prefix}:{queue}:{suffix}` (suffix may be a job id)."""
        return f"{self.prefix}:{queue}:{suffix}"

    def bull_lock(self, queue: str, job_id: str) -> str:
        """BullMQ's lock of a job (its value: the holding attempt's token). extend_locks.lua builds
        it as `bull(queue, "") .. id .. ':lock'` for the ids it is given."""
        return self.bull(queue, f"{job_id}:lock")

    def bull_logs(self, queue: str, job_id: str) -> str:
        """BullMQ's log of a job (a list of lines)."""
        return self.bull(queue, f"{job_id}:logs")

    def worker_client(self, queue: str, worker: str) -> str:
        """The client name a queue's worker connection carries, by Node BullMQ's convention
        (`{prefix}:{base64(queue)}:w:{worker}`), so `Queue.getWorkers()` and bull-board list it."""
        import base64

        return f"{self.prefix}:{base64.b64encode(queue.encode()).decode()}:w:{worker}"

    # Ours.
    def job(self, job_id: str) -> str:
        """Hash: the job's queue, owner, payload digest and latest state (status, progress, seq...).
        Built in Lua too, as `job_key(id)` (generated from this method: `includes/keys` in queues/lua.py)."""
        return f"{self.ns}job:{job_id}"

    def events(self, job_id: str) -> str:
        """Stream: the job's events, entry id `{seq}-0`, capped. Built in Lua too, as `events_key(id)`
        (generated from this method: `includes/keys` in queues/lua.py)."""
        return f"{self.ns}ev:{job_id}"

    def channel(self, job_id: str) -> str:
        """Pub/sub channel of one job's live events."""
        return f"{self.ns}ch:{job_id}"

    @property
    def feed(self) -> str:
        """Pub/sub channel of every new job's first event (a socket's `scope: mine` / `all` feed)."""
        return f"{self.ns}feed"

    def user_jobs(self, user_id: str) -> str:
        """Sorted set: a user's job ids, scored by a per-user submission counter."""
        return f"{self.ns}user:{user_id}"

    @property
    def recent(self) -> str:
        """Sorted set: every user's job ids, scored by a global submission counter (admins' view), capped."""
        return f"{self.ns}recent"

    @property
    def recent_counter(self) -> str:
        """Counter behind `recent` scores."""
        return f"{self.ns}recentn"

    def user_counter(self, user_id: str) -> str:
        """Counter behind `user_jobs` scores."""
        return f"{self.ns}usern:{user_id}"

    def costs(self, queue: str) -> str:
        """Hash: measured seconds per unit of each job shape of a queue (`*`: all shapes), for ETAs."""
        return f"{self.ns}cost:{queue}"

    def capacity(self, queue: str) -> str:
        """Hash: a queue's workers now (`slots`, `busy`, `ts`), written by its consumer, for ETAs."""
        return f"{self.ns}cap:{queue}"

    def memory(self, queue: str) -> str:
        """Hash: a queue's measured peak memory per job shape (`kind:bytes`, kind `cuda` or `rss`)."""
        return f"{self.ns}mem:{queue}"

    def fair_usage(self, queue: str) -> str:
        """Hash: fair share's memory of a queue: user -> `<turns> <ms>`, the jobs' worth of work
        they were served lately (each attempt's seconds over the queue's mean, decayed with a
        half-life) as of that time (queues/ledger.py writes it, create.lua reads it)."""
        return f"{self.ns}fairuse:{queue}"

    def fair(self, queue: str) -> str:
        """Hash: a queue's fair-share clocks: `u:{priority}:{user}` (where the user's next job
        starts, in virtual time) and `last:{priority}` (the latest end given: where a job starts
        when nothing of its priority waits)."""
        return f"{self.ns}fair:{queue}"

    def adopt_cursor(self, queue: str) -> str:
        """String: the last entry of a queue's BullMQ event stream scanned for plain producers' jobs."""
        return f"{self.ns}adopt:{queue}"

    def finished(self, queue: str) -> str:
        """Sorted set: finished job ids of a queue by finish time, trimmed for retention."""
        return f"{self.ns}fin:{queue}"

    def yield_flag(self, job_id: str) -> str:
        """Flag: a running (training) job is asked to yield its GPU at its next checkpoint."""
        return f"{self.ns}yield:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Flag: a cancel was requested for this (running) job."""
        return f"{self.ns}cancel:{job_id}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel on which cancel requests of running jobs are announced."""
        return f"{self.ns}cancel"

    def metrics(self, queue: str) -> str:
        """Hash: per-queue job duration histogram and counters."""
        return f"{self.ns}metrics:{queue}"

    def ledger(self, user_id: str, hour: int) -> str:
        """Hash: a user's use in one hour (Unix seconds at its start), `<queue>\x1f<model>\x1f<metric>`
        -> sum (queues/ledger.py)."""
        return f"{self.ns}led:{user_id}:{hour}"

    def spend(self, user_id: str, period: str) -> str:
        """Float: a user's GPU seconds charged in one UTC day (`d20261207`) or month (`m202612`)."""
        return f"{self.ns}spend:{user_id}:{period}"

    @property
    def budgets(self) -> str:
        """Hash: user (or `org:<group>`) -> their GPU budget (JSON), as admins set it."""
        return f"{self.ns}budgets"

    def gpu_held(self, queue: str) -> str:
        """Hash: a queue's running jobs counted against GPU shares, job -> `<milli-GPUs>\\x1f<the
        attempt's lock token>\\x1f<user>[\\x1forg:<group>]` (queues/shares.py)."""
        return f"{self.ns}held:{queue}"

    @property
    def gpu_holding(self) -> str:
        """Hash: user or `org:<group>` -> the GPU share their running jobs hold now, milli-GPUs."""
        return f"{self.ns}holding"

    def parked(self, who: str) -> str:
        """Sorted set: jobs taken while `who`'s (a user's, `org:<group>`'s) GPU share was full,
        waiting for it, by when: `<BullMQ job prefix>\x1f<job id>`."""
        return f"{self.ns}parked:{who}"

    @property
    def durability(self) -> str:
        """Counter: written before each WAIT for replicas (queues/lifecycle.py `Durability`)."""
        return f"{self.ns}durable"

    @property
    def parkers(self) -> str:
        """Set: the users and groups with jobs parked for their GPU share (queues/shares.py)."""
        return f"{self.ns}parkers"

    def gpu_users(self, queue: str) -> str:
        """Sorted set: each user's GPU seconds on a queue, all time (`/metrics` per user, when on)."""
        return f"{self.ns}gpuu:{queue}"

    def ledger_users(self, hour: int) -> str:
        """Set: the users charged in one hour."""
        return f"{self.ns}ledu:{hour}"

    @property
    def audit(self) -> str:
        """Stream: the audit trail (queues/audit.py), capped."""
        return f"{self.ns}audit"

    def start_by(self, queue: str) -> str:
        """Sorted set: a queue's jobs with a deadline to start, scored by it (ms); swept by its consumer."""
        return f"{self.ns}startby:{queue}"

    def cache(self, user_id: str, digest: str) -> str:
        """String: the job that ran a user's repeatable submit of this digest (its result cached
        while its record lives; an unfinished one: identical submits follow it)."""
        return f"{self.ns}cache:{user_id}:{digest}"

    def followers(self, job_id: str) -> str:
        """Set: the jobs that follow this one (identical submits made while it ran: they end as
        it ends, with its result). Built in Lua too, as `followers_key(id)` (`includes/keys`)."""
        return f"{self.ns}follow:{job_id}"

    def waiters(self, job_id: str) -> str:
        """Hash: the jobs waiting for this one (`options.after`), id of each -> its policy and
        BullMQ queue key (`includes/after`); released when it ends (finish.lua). Built in Lua
        too, as `waiters_key(id)` (`includes/keys`)."""
        return f"{self.ns}after:{job_id}"

    def deps(self, job_id: str) -> str:
        """Set: the ids of the jobs this one still waits for (`options.after`; BullMQ's own
        `dependencies` are a flow's). Built in Lua too, as `deps_key(id)`."""
        return f"{self.ns}deps:{job_id}"

    def settle(self, queue: str) -> str:
        """Sorted set: a queue's jobs that ended with followers to end too (by when, ms); its
        consumer's upkeep ends them."""
        return f"{self.ns}settle:{queue}"

    def rate(self, user_id: str) -> str:
        """List: the times of a user's last submissions, newest first (their rate's moving window)."""
        return f"{self.ns}rate:{user_id}"

    def upload_bytes(self, user_id: str) -> str:
        """Counter: bytes of uploads a user keeps (for DASH_UPLOAD_QUOTA_BYTES)."""
        return f"{self.ns}upbytes:{user_id}"

    def ticket(self, ticket: str) -> str:
        """String: a one-use WebSocket ticket -> `user id` + `\x1f` + `1` if admin (expires by itself)."""
        return f"{self.ns}ticket:{ticket}"

    def waiting_count(self, user_id: str) -> str:
        """Set: a user's jobs that are not finished yet (for the waiting-jobs limit)."""
        return f"{self.ns}open:{user_id}"

    # What each user keeps in Redis (DASH_MAX_BYTES_PER_USER), released as job records expire.
    @property
    def usage(self) -> str:
        """Sorted set: user -> bytes their jobs keep in Redis now."""
        return f"{self.ns}usage"

    def sizes(self, user_id: str) -> str:
        """Hash: a user's job -> the bytes it was charged."""
        return f"{self.ns}sizes:{user_id}"

    def kept(self, user_id: str) -> str:
        """Sorted set: a user's job -> when its records expire (ms; inf while it is not final).
        Built in Lua too, as `kept_key(user)` (generated from this method: `includes/keys` in queues/lua.py)."""
        return f"{self.ns}kept:{user_id}"

    # The webhook outbox: deliveries due (by time), their bodies and tries, and those given up.
    @property
    def hooks(self) -> str:
        """Sorted set: webhook deliveries by when they are due (ms; a claimed one: its lease's end)."""
        return f"{self.ns}hook:due"

    @property
    def hook_bodies(self) -> str:
        """Hash: delivery -> the event frame to send (`{jobId}:{seq}`, or `{jobId}:progress` /
        `{jobId}:preview`, which hold the latest one)."""
        return f"{self.ns}hook:body"

    @property
    def hook_tries(self) -> str:
        """Hash: delivery -> attempts made."""
        return f"{self.ns}hook:tries"

    @property
    def hook_dead(self) -> str:
        """List: deliveries given up (JSON: id, url, tries, why), newest first, capped."""
        return f"{self.ns}hook:dead"
