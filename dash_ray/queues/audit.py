"""AuditLog: a trail of what admins do, and of any action on another user's job. One capped Redis
stream (`Keys.audit`, at most `max_len` entries, the oldest dropped first); each entry says who
(and whether an admin), what, to which target (a job, queue, user, schedule), whose that target
is, when, from where (the caller's address) and any detail. Appended by the gateway's routes
(`gateway/deps.py`'s `Audit`) and by `dash-ray token` when it can reach Redis; read back newest
first for `GET /v1/audit` (admins)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from dash_ray.queues.keys import Keys

__all__ = ["ACTIONS", "AuditEntry", "AuditLog"]

# What is recorded (an action on one's own job is not: it is in the job's events).
ACTIONS = ("pause", "resume", "cancel", "retry", "move", "submit", "schedule.set", "schedule.remove", "token.issue",
           "budget.set", "webhook.replay")


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    id: str
    at: float
    who: str
    admin: bool
    action: str
    target: str
    owner: str | None
    ip: str | None
    detail: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "who": self.who, "admin": self.admin, "action": self.action,
                "target": self.target, "owner": self.owner, "ip": self.ip, "detail": self.detail}


class AuditLog:
    """Appends to and reads the audit stream."""

    def __init__(self, redis: Redis, keys: Keys, max_len: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.max_len = max_len

    async def record(self, who: str, action: str, target: str, *, admin: bool = False, owner: str | None = None,
                     ip: str | None = None, **detail: Any) -> str:
        """Append one action; returns its entry's id."""
        fields: dict[Any, Any] = {"at": f"{time.time():.3f}", "who": who, "admin": "1" if admin else "", "action": action,
                  "target": target, "owner": owner or "", "ip": ip or "",
                  "detail": json.dumps(detail, separators=(",", ":"), default=str)}
        return str(await self.redis.xadd(self.keys.audit, fields, maxlen=self.max_len, approximate=True))

    async def read(self, limit: int = 100, before: str | None = None, action: str | None = None,
                   who: str | None = None) -> tuple[list[AuditEntry], str | None]:
        """The newest entries (older than `before`, an entry id), optionally of one `action` or
        one actor (`who`); at most `limit`, reading at most 20 x `limit` entries. Returns them and
        the cursor of the next page (None: no more)."""
        out: list[AuditEntry] = []
        top = f"({before}" if before else "+"
        budget = 20 * limit
        while len(out) < limit and budget > 0:
            rows = await self.redis.xrevrange(self.keys.audit, max=top, min="-", count=min(budget, 500))
            if not rows:
                return out, None
            budget -= len(rows)
            for raw_id, raw in rows:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                top = f"({entry_id}"
                e = _entry(entry_id, raw)
                if (action and e.action != action) or (who and e.who != who):
                    continue
                out.append(e)
                if len(out) == limit:
                    break
        return out, (top[1:] if top != "+" else None)


def _entry(entry_id: str, raw: Any) -> AuditEntry:
    f = {str(k): str(v) for k, v in (raw or {}).items()}
    try:
        detail = json.loads(f.get("detail") or "{}")
    except ValueError:
        detail = {}
    return AuditEntry(id=entry_id, at=float(f.get("at") or 0), who=f.get("who", ""), admin=f.get("admin") == "1",
                      action=f.get("action", ""), target=f.get("target", ""), owner=f.get("owner") or None,
                      ip=f.get("ip") or None, detail=detail if isinstance(detail, dict) else {})
