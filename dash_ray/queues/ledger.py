"""Ledger: who used which GPU for how long. Every attempt a worker ran is charged when its
outcome comes back (the dispatcher): the GPU share its worker held x the seconds it
ran (a batch's pass split between its jobs), its wall seconds, and what it came to. An attempt
whose worker died is not the user's to pay: it is counted (`lost`), not charged.

Kept in Redis per user per hour, in one hash each (`Keys.ledger`): fields `<queue>\\x1f<model>\\x1f
<device>\\x1f<metric>`, summed with HINCRBYFLOAT (a peak, `peakMemB`: the largest, peak.lua),
expiring after `keep_days`; the users with usage in an hour in a set beside it
(`Keys.ledger_users`), for the admins' view of everyone. A read sums the hours of a range (at
most MAX_RANGE_S) grouped by queue, model, device, day, hour or user. Besides GPU seconds: the
attempts' wall and CPU seconds, their peak memory, what they came to, and the submits the result
cache answered (`cached`, free). Each queue's GPU
seconds also go to its metrics hash (`/metrics`: `dash_gpu_seconds_total`), and to the user's
spend of the UTC day and month (`Keys.spend`), which their budget (`Budgets`, set by admins,
DASH_GPU_SECONDS_PER_DAY / _PER_MONTH by default) is held to."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from redis.asyncio import Redis

from dash_ray.config import Settings
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import PEAK, REMEMBER

__all__ = ["GROUPS", "HOUR_S", "MAX_RANGE_S", "METRICS", "ORG", "SOFT_WEIGHT", "Budget", "Budgets", "Charge", "Group",
           "Ledger", "default_budgets", "org_id", "resets_at", "total"]

HOUR_S = 3600
MAX_RANGE_S = 31 * 24 * 3600  # a read covers at most this (744 hours)
CHUNK = 2000  # hashes read per round trip
METRICS = ("gpuS", "runS", "cpuS", "attempts", "completed", "failed", "preempted", "batched", "lost", "lostGpuS",
           "cached", "peakMemB")
GROUPS = ("queue", "model", "device", "day", "hour", "user", "none")
Group = Literal["queue", "model", "device", "day", "hour", "user", "none"]
PEAKS = ("peakMemB",)  # the metrics kept as the largest value, not summed
_SEP = "\x1f"


@dataclass(frozen=True)
class Charge:
    """One attempt's use: its owner, queue and model, the seconds it held its worker (its share
    of a batch's pass), the GPU share that worker held and its device (the GPU's model, `cpu`),
    the CPU seconds and peak memory (bytes) it took, and what the attempt came to (`kind`:
    done, failed, cancelled, skipped; `preempted`; `batched`: it ran in a pass with others;
    `lost`: its worker died, so nothing is charged). `cached`: no attempt, a submit the result
    cache answered (counted, free)."""

    user: str
    queue: str
    model: str
    seconds: float
    gpu: float
    kind: str
    batched: bool = False
    preempted: bool = False
    lost: bool = False
    turns: float = 0.0  # its work in jobs' worth (its seconds over the queue's mean): fair share's memory
    device: str = ""
    cpu_s: float = 0.0
    memory: int = 0
    cached: bool = False
    org: str | None = None  # the group its job was submitted for (its token's `org`), charged too

    def fields(self) -> dict[str, float]:
        """The metric increments it makes (and `peakMemB`, a peak)."""
        if self.cached:
            return {"cached": 1}
        if self.lost:  # counted, with what it held, but not the owner's to pay
            return {"lost": 1, "lostGpuS": round(self.gpu * self.seconds, 6)}
        out: dict[str, float] = {"gpuS": round(self.gpu * self.seconds, 6), "runS": round(self.seconds, 6),
                                 "attempts": 1}
        if self.cpu_s:
            out["cpuS"] = round(self.cpu_s, 6)
        if self.memory:
            out["peakMemB"] = self.memory
        if self.kind == "done":
            out["completed"] = 1
        elif self.kind == "failed":
            out["failed"] = 1
        if self.preempted:
            out["preempted"] = 1
        if self.batched:
            out["batched"] = 1
        return out


_SECONDS = ("gpuS", "runS", "cpuS", "lostGpuS")  # the metrics in seconds; the others are counts (or bytes)


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    for m in METRICS:
        row[m] = round(row[m], 3) if m in _SECONDS else int(row[m])
    return row


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of `Ledger.read`'s rows, metric by metric (a peak: the largest)."""
    return _rounded({m: max((float(r[m]) for r in rows), default=0.0) if m in PEAKS else sum(float(r[m]) for r in rows)
                     for m in METRICS})


def _dim(value: str) -> str:
    """A name as a ledger field's part (no separator in it; none: `-`)."""
    return value.replace(_SEP, " ") or "-"


def _hour(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


def _periods(ts: float) -> tuple[str, str]:
    """The budget periods a moment falls in: its UTC day (`d20261207`) and month (`m202612`)."""
    at = datetime.fromtimestamp(ts, timezone.utc)
    return at.strftime("d%Y%m%d"), at.strftime("m%Y%m")


def resets_at(period: str, now: float) -> float:
    """When the current `day` or `month` (UTC) ends, Unix seconds."""
    at = datetime.fromtimestamp(now, timezone.utc)
    start = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return (start + timedelta(days=1)).timestamp()
    first = start.replace(day=1)
    return (first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)).timestamp()


@dataclass(frozen=True)
class Budget:
    """A user's (or a group's) GPU budget: GPU seconds per UTC day and per UTC month (None: no
    limit) and the GPU share their running jobs may hold at once (`share`, in GPUs; enforced as
    jobs are taken: queues/shares.py). `hard`: a submit past a GPU-seconds budget is refused
    until it resets; soft: the user's fair-share weight is lowered (`SOFT_WEIGHT` of it) while past it."""

    per_day: float | None = None
    per_month: float | None = None
    hard: bool = True
    share: float | None = None

    def wire(self) -> dict[str, Any]:
        return {"gpuSecondsPerDay": self.per_day, "gpuSecondsPerMonth": self.per_month, "hard": self.hard,
                "gpuShare": self.share}

    @classmethod
    def of_wire(cls, b: dict[str, Any]) -> Budget:
        return cls(b.get("gpuSecondsPerDay"), b.get("gpuSecondsPerMonth"), bool(b.get("hard", True)), b.get("gpuShare"))

    @property
    def empty(self) -> bool:
        """No GPU-seconds budget (a GPU share may still be set)."""
        return self.per_day is None and self.per_month is None

    def over(self, day_used: float, month_used: float) -> tuple[str, float, float] | None:
        """(period, limit, used) of the first budget spent, or None."""
        for period, limit, used in (("day", self.per_day, day_used), ("month", self.per_month, month_used)):
            if limit is not None and used >= limit:
                return period, limit, used
        return None


def default_budgets(s: Settings) -> tuple[Budget, Budget]:
    """A deployment's default budgets: every user's without one of their own, and every group's."""
    return (Budget(s.gpu_seconds_per_day, s.gpu_seconds_per_month, s.budget_hard, s.gpu_share_per_user),
            Budget(s.org_gpu_seconds_per_day, s.org_gpu_seconds_per_month, s.budget_hard, s.org_gpu_share))


SOFT_WEIGHT = 0.25  # a user past a soft budget keeps this share of their fair-share weight


ORG = "org:"  # a group's name in budgets and spends: `org:<group>` (no user id has a colon)


def org_id(org: str) -> str:
    """The budget and spend id of a group (a token's `org`)."""
    return ORG + org


class Budgets:
    """GPU budgets set by admins (`Keys.budgets`: user or `org:<group>` -> JSON), over the
    deployment's defaults (one for users, one for groups); read through a short cache (a submit
    costs no round trip for them). A job submitted with a token naming a group (`org`) carries
    it: the ledger charges its GPU time to the group's spend too, and its GPU share counts
    against the group's (queues/shares.py)."""

    CACHE_S = 2.0

    def __init__(self, redis: Redis, keys: Keys, default: Budget | None = None,
                 org_default: Budget | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.default = default or Budget()
        self.org_default = org_default or Budget()
        self._cache: tuple[float, dict[str, Budget]] = (0.0, {})

    async def all(self) -> dict[str, Budget]:
        """Every user's own budget (set by an admin), fresh within CACHE_S."""
        at, table = self._cache
        if time.monotonic() - at < self.CACHE_S:
            return table
        raw = await self.redis.hgetall(self.keys.budgets)
        table = {}
        for user, text in raw.items():
            try:
                b = json.loads(text)
                table[str(user)] = Budget.of_wire(b)
            except (ValueError, AttributeError):
                continue
        self._cache = (time.monotonic(), table)
        return table

    async def of(self, user: str) -> Budget:
        """A user's (or `org:<group>`'s) budget: each limit their own set, else the deployment's
        default for them (setting one limit leaves the others at the default; `hard` is theirs)."""
        default = self.org_default if user.startswith(ORG) else self.default
        own = (await self.all()).get(user)
        if own is None:
            return default
        return Budget(default.per_day if own.per_day is None else own.per_day,
                      default.per_month if own.per_month is None else own.per_month, own.hard,
                      default.share if own.share is None else own.share)

    async def shares(self) -> bool:
        """True if a GPU share is limited for anyone (a default, or a budget set): only then are
        the shares of taken jobs counted (queues/shares.py)."""
        return (self.default.share is not None or self.org_default.share is not None
                or any(b.share is not None for b in (await self.all()).values()))

    async def set(self, user: str, budget: Budget | None) -> Budget:
        """Set (None: remove, back to the default) a user's budget; returns what holds now."""
        if budget is None:
            await self.redis.hdel(self.keys.budgets, user)
        else:
            await self.redis.hset(self.keys.budgets, user, json.dumps(budget.wire()))
        self._cache = (0.0, {})
        return await self.of(user)

    async def share_held(self, who: str) -> float:
        """The GPU share `who` (a user, `org:<group>`) holds now, in GPUs (queues/shares.py)."""
        return int(await self.redis.hget(self.keys.gpu_holding, who) or 0) / 1000


class Ledger:
    """Charges attempts, and reads the sums back."""

    def __init__(self, redis: Redis, keys: Keys, keep_days: float = 400, half_life_s: float = 0.0,
                 per_user: bool = False) -> None:
        self.redis = redis
        self.keys = keys
        self.per_user = per_user  # each user's all-time GPU seconds per queue too (`Keys.gpu_users`: /metrics)
        self.keep_s = int(keep_days * 24 * 3600)
        self.half_life_ms = int(half_life_s * 1000)
        self._remember: Any = redis.register_script(REMEMBER.text()) if half_life_s > 0 else None
        self._peak: Any = redis.register_script(PEAK.text())

    async def charge(self, charges: Iterable[Charge], now: float | None = None) -> None:
        """Add attempts' use to their owners' hour, summed per owner, queue and model first (a
        batch of short jobs costs a few commands, not a few per job), in one round trip."""
        at = time.time() if now is None else now
        hour = _hour(at)
        day, month = _periods(hour)
        cells: dict[tuple[str, str, str, str], dict[str, float]] = {}
        spent: dict[str, float] = {}
        by_queue: dict[str, float] = {}
        served: dict[tuple[str, str], float] = {}
        per_user: dict[tuple[str, str], float] = {}
        for c in charges:
            cell = cells.setdefault((c.user, c.queue, c.model or "-", _dim(c.device)), {})
            for metric, value in c.fields().items():
                cell[metric] = max(cell.get(metric, 0.0), value) if metric in PEAKS else cell.get(metric, 0.0) + value
            if not c.lost and not c.cached:
                gpu_s = c.gpu * c.seconds
                spent[c.user] = spent.get(c.user, 0.0) + gpu_s
                if c.org:  # a job its group's token made: the group's GPU time too
                    spent[org_id(c.org)] = spent.get(org_id(c.org), 0.0) + gpu_s
                by_queue[c.queue] = by_queue.get(c.queue, 0.0) + gpu_s
                if c.turns > 0:
                    served[(c.queue, c.user)] = served.get((c.queue, c.user), 0.0) + c.turns
                if self.per_user:
                    per_user[(c.queue, c.user)] = per_user.get((c.queue, c.user), 0.0) + gpu_s
        if not cells:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (user, queue, model, device), cell in cells.items():
            key = self.keys.ledger(user, hour)
            peaks: list[Any] = []
            for metric, value in cell.items():
                field = f"{queue}{_SEP}{model}{_SEP}{device}{_SEP}{metric}"
                if metric in PEAKS:
                    peaks += [field, int(value)]
                else:
                    pipe.hincrbyfloat(key, field, round(value, 6))
            if peaks:
                await self._peak(keys=[key], args=peaks, client=pipe)
            pipe.expire(key, self.keep_s)
        for queue, gpu_s in by_queue.items():
            pipe.hincrbyfloat(self.keys.metrics(queue), "gpuS", round(gpu_s, 6))
        for (queue, user), gpu_s in per_user.items():
            pipe.zincrby(self.keys.gpu_users(queue), round(gpu_s, 6), user)
        for user, gpu_s in spent.items():
            for period, ttl in ((day, 3 * 86400), (month, 63 * 86400)):  # what budgets are held to
                pipe.incrbyfloat(self.keys.spend(user, period), round(gpu_s, 6))
                pipe.expire(self.keys.spend(user, period), ttl)
        if self._remember is not None:  # fair share's memory: each user's work, decayed, per queue
            for (queue, user), turns in served.items():
                keys, args = REMEMBER.pack({"fair_usage": self.keys.fair_usage(queue)},
                                           {"user": user, "turns": repr(turns), "now_ms": int(at * 1000),
                                            "half_life_ms": self.half_life_ms})
                await self._remember(keys=keys, args=args, client=pipe)
        users = {user for user, _q, _m, _d in cells}
        pipe.sadd(self.keys.ledger_users(hour), *users)
        pipe.expire(self.keys.ledger_users(hour), self.keep_s)
        await pipe.execute()

    async def top_users(self, queues: list[str], n: int) -> dict[str, list[tuple[str, float]]]:
        """Per queue, the `n` users with the most GPU seconds (all time; kept only with `per_user`)."""
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.zrevrange(self.keys.gpu_users(q), 0, n - 1, withscores=True)
        return {q: [(str(u), float(v)) for u, v in rows] for q, rows in zip(queues, await pipe.execute(), strict=True)}

    async def spent(self, user: str, now: float | None = None) -> tuple[float, float]:
        """The GPU seconds `user` (or `org:<group>`: its members') was charged this day and this
        month (UTC), as budgets count them."""
        day, month = _periods(time.time() if now is None else now)
        raw = await self.redis.mget(self.keys.spend(user, day), self.keys.spend(user, month))
        return float(raw[0] or 0), float(raw[1] or 0)

    async def read(self, users: list[str] | None, since: float, until: float, group: Group = "queue") -> list[dict[str, Any]]:
        """The sums over the hours from `since` to `until` (Unix seconds; at most MAX_RANGE_S),
        for `users` (None: every user with usage then), grouped by `group`; each row is its key
        (`queue`, `model`, `day` as YYYY-MM-DD, `hour` as Unix seconds, `user`; none for `none`)
        and METRICS, sorted by GPU seconds, largest first."""
        since = max(since, until - MAX_RANGE_S)
        hours = list(range(_hour(since), _hour(until) + 1, HOUR_S))
        if users is None:
            pipe = self.redis.pipeline(transaction=False)
            for h in hours:
                pipe.smembers(self.keys.ledger_users(h))
            per_hour = [sorted(str(u) for u in members) for members in await pipe.execute()]
        else:
            per_hour = [users for _h in hours]
        cells = [(h, u) for h, us in zip(hours, per_hour, strict=True) for u in us]
        read: list[Any] = []
        for i in range(0, len(cells), CHUNK):  # (Redis serves others between the chunks)
            pipe = self.redis.pipeline(transaction=False)
            for h, u in cells[i:i + CHUNK]:
                pipe.hgetall(self.keys.ledger(u, h))
            read += await pipe.execute()
        sums: dict[str, dict[str, Any]] = {}
        for (h, u), raw in zip(cells, read, strict=True):
            for name, value in raw.items():
                parts = str(name).split(_SEP)
                queue, model, metric = parts[0], parts[1], parts[-1]
                device = parts[2] if len(parts) == 4 else "-"  # (a field from before devices were kept)
                key = {"queue": queue, "model": model, "device": device, "user": u, "none": "",
                       "day": datetime.fromtimestamp(h, timezone.utc).strftime("%Y-%m-%d"), "hour": str(h)}[group]
                row = sums.setdefault(key, {**({group: int(key) if group == "hour" else key} if group != "none" else {}),
                                            **dict.fromkeys(METRICS, 0.0)})
                if metric in PEAKS:
                    row[metric] = max(row[metric], float(value))
                elif metric in METRICS:
                    row[metric] += float(value)
        rows = list(sums.values())
        for row in rows:
            _rounded(row)
        rows.sort(key=lambda r: (-r["gpuS"], str(r.get(group, ""))))
        if group == "none" and not rows:
            rows = [dict.fromkeys(METRICS, 0)]
        return rows
