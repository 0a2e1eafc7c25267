"""Batch: a non-transactional pipeline that runs Lua scripts without redis-py's extra round trip.

redis-py's pipeline sends `SCRIPT EXISTS` before every execute that contains a script; on
the hot paths (add, complete) that doubled the round trips. A Batch sends EVALSHA straight
away. Scripts a client has not used yet are loaded first (once per client), because a script
healed after a NOSCRIPT reply runs after the commands queued behind it, and some batches
depend on their order (BullMQ's add, then the job's record). After a Redis restart or flush,
NOSCRIPT replies are still healed, and callers whose order matters check their replies.
It also stands in as the `client` of a registered script: `await script(keys, args, client=batch)`.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = ["Batch", "register"]

_SCRIPTS: dict[str, Any] = {}
_LOADED: set[tuple[int, str]] = set()  # (client's connection pool, script SHA) known to be loaded


def register(*scripts: Any) -> None:
    """Make scripts known by SHA, so a Batch can reload them after NOSCRIPT."""
    for s in scripts:
        _SCRIPTS[s.sha] = s


class Batch:
    """Queue commands and script calls; `execute()` sends them in one round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pipe = redis.pipeline(transaction=False)
        self._evals: dict[int, tuple[str, int, tuple[Any, ...]]] = {}
        self._unloaded: set[str] = set()
        self._n = 0

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Batch:
        """Queue an EVALSHA (what a registered script calls on its client)."""
        self._pipe.evalsha(sha, numkeys, *keys_and_args)
        self._evals[self._n] = (sha, numkeys, keys_and_args)
        if (id(self.redis.connection_pool), sha) not in _LOADED:
            self._unloaded.add(sha)
        self._n += 1
        return self

    def add(self, command: str, *args: Any, **kwargs: Any) -> Batch:
        """Queue a plain command, e.g. `batch.add("delete", key)`."""
        getattr(self._pipe, command)(*args, **kwargs)
        self._n += 1
        return self

    async def execute(self) -> list[Any]:
        """Send everything; returns the replies in order (errors raised, NOSCRIPT healed)."""
        pool = id(self.redis.connection_pool)
        for sha in self._unloaded:
            script = _SCRIPTS.get(sha)
            if script is not None:
                await self.redis.script_load(script.script)
                _LOADED.add((pool, sha))
        replies = list(await self._pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError) and i in self._evals:
                sha, numkeys, keys_and_args = self._evals[i]
                script = _SCRIPTS.get(sha)
                if script is None:
                    raise reply
                await self.redis.script_load(script.script)
                replies[i] = await self.redis.evalsha(sha, numkeys, *keys_and_args)
            elif isinstance(reply, Exception):
                raise reply
        return replies
