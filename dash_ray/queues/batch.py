"""Batch: a non-transactional pipeline that runs Lua scripts without redis-py's extra round trip.

redis-py's pipeline sends `SCRIPT EXISTS` before every execute that contains a script; on
the hot paths (add, complete) that doubled the round trips. A Batch sends EVALSHA straight
away. Scripts a client has not used yet are loaded first (once per client), because a script
healed after a NOSCRIPT reply runs after the commands queued behind it, and some batches
depend on their order (BullMQ's add, then the job's record). After a Redis restart or flush,
NOSCRIPT replies are still healed, and callers whose order matters check their replies.
It also stands in as the `client` of a registered script: `await script(keys, args, client=batch)`.

Grouped: concurrent callers' commands on one connection of its own, sent in groups (group
commit), for the gateway's hottest call (a submit's CREATE).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Batch", "Grouped", "register"]

log = logging.getLogger(__name__)

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


class Grouped:
    """Commands of concurrent callers on one connection of its own, sent in groups: a command
    made while a group is on its way goes out with the next one, in one write, and its reply
    comes back with that group's. Each caller gets its own reply or error.

    BullMQ's producer puts its callers behind one connection, a round trip each, and a pool
    hands each caller a connection of its own at the price of a checkout and a return (a tenth
    of a REST submit's CPU in the gateway); here no caller waits for another's round trip
    beyond the one in flight, and under load a group costs one write and one read on both
    sides instead of one per command.

    The connection is made from the client's pool's settings (outside its count), closed and
    made again after an error, and closed by `aclose`. A group whose replies do not all come
    within `timeout_s` (a connection gone silent) counts as a dropped connection: what was not
    answered of it is sent again on a new one (up to `retries` times), as redis-py sends a
    pipeline again. So only for commands that may run twice: CREATE answers a resent copy of
    itself as it answered the first (create.lua). It stands in as the `client` of a registered
    script (`evalsha`, `script_load`)."""

    def __init__(self, redis: Redis, retries: int = 3, timeout_s: float = 10.0) -> None:
        self.redis = redis
        self.retries = retries
        self.timeout_s = timeout_s
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # groups written so far (each one write and one read of their replies)

    async def execute_command(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((args, future))
        sender = self._sender
        if sender is None or sender.done() or sender.get_loop() is not loop:  # (a loop closed under it)
            self._sender = loop.create_task(self._send())
        return await future

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> Any:
        return await self.execute_command("SCRIPT LOAD", script)

    async def aclose(self) -> None:
        """Close the connection (a later command makes a new one)."""
        await self._drop()

    async def _send(self) -> None:
        """Send what is queued, group after group, until nothing is (a task of its own: a
        caller that is cancelled leaves the others' commands going)."""
        while self._queued:
            group, self._queued = self._queued, []
            try:
                await self._send_group(group)
            except BaseException as exc:  # cancelled (the loop is closing), or a bug: nobody waits forever
                await self._drop()
                error = exc if isinstance(exc, Exception) else RedisConnectionError("the sender was cancelled")
                for _args, future in group + self._queued:
                    if not future.done():
                        future.set_exception(error)
                self._queued = []
                if not isinstance(exc, Exception):
                    raise
                log.exception("Grouped: a group could not be sent")

    async def _send_group(self, group: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        for attempt in range(self.retries + 1):
            group = [(args, future) for args, future in group if not future.done()]
            if not group:
                return
            try:
                conn = await self._connection()
                if sys.version_info >= (3, 11):  # a deadline on this task: no task of its own per group
                    async with asyncio.timeout(self.timeout_s):
                        await self._exchange(conn, group)
                else:
                    await asyncio.wait_for(self._exchange(conn, group), self.timeout_s)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError) as exc:
                await self._drop()
                if attempt == self.retries:
                    for _args, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    return
                await asyncio.sleep(min(0.5, 0.05 * 2 ** attempt))

    async def _exchange(self, conn: Any, group: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Write the group's commands at once, then read their replies in order. A command that
        cannot be packed fails alone (its caller's error), before anything is written."""
        packed: list[bytes] = []
        sent = []
        for args, future in group:
            try:
                packed += conn.pack_command(*args)
            except Exception as exc:
                future.set_exception(exc)
                continue
            sent.append(future)
        if not sent:
            return
        await conn.send_packed_command(packed)
        self.groups += 1
        for future in sent:
            try:
                reply = await conn.read_response()
            except ResponseError as exc:  # this command's error, not the connection's (those are ConnectionErrors)
                if isinstance(exc, RedisConnectionError):  # a reply that says the server cannot serve (LOADING)
                    raise
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():  # else its caller was cancelled
                future.set_result(reply)

    async def _connection(self) -> Any:
        """The connection, made (again) when there is none, it closed, or the loop changed."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is not None and self._loop is loop and conn.is_connected:
            return conn
        await self._drop()
        conn = self.redis.connection_pool.make_connection()
        await conn.connect()
        self._conn, self._loop = conn, loop
        return conn

    async def _drop(self) -> None:
        """Forget the connection, closed (its replies unread are not anyone's any more)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._loop is not asyncio.get_running_loop():  # another loop's: it cannot be closed from here
            return
        try:
            await conn.disconnect(nowait=True)
        except Exception:
            log.debug("Grouped: closing a dropped connection failed", exc_info=True)
