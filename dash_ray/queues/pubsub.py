"""A lean Redis pub/sub reader: one socket, hiredis parsing, many messages per read.

redis-py's PubSub handles one message per call through retry, timeout and health-check
wrappers; at thousands of events a second that was ~45% of a gateway replica's CPU.
This reader feeds whole socket reads to hiredis and dispatches every complete message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis

from dash_ray.loops import Backoff, supervised
from dash_ray.queues.connection import SentinelUrl, sentinel_url

__all__ = ["Endpoint", "RawPubSub"]

log = logging.getLogger(__name__)


def _pack(command: tuple[str, ...]) -> bytes:
    """One Redis command in RESP (hiredis's stub types its argument as a 1-tuple)."""
    return hiredis.pack_command(cast(Any, command))


@dataclass(frozen=True)
class Endpoint:
    """Where the reader connects, from a `redis://` / `rediss://` URL (or a `redis+sentinel://`
    one: the primary the sentinels name as it connects), and the connection's opening: the
    socket, AUTH (if the URL has a password) and SUBSCRIBE of the channels held."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = field(default=None, repr=False)
    sentinel: SentinelUrl | None = None

    @classmethod
    def of(cls, url: str) -> Endpoint:
        """The endpoint a URL names; ValueError for a scheme other than redis / rediss / redis+sentinel."""
        found = sentinel_url(url)
        if found is not None:
            return cls("", 0, found.username, found.password, sentinel=found)
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} for pub/sub")
        return cls(u.hostname or "127.0.0.1", u.port or 6379, unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None,
                   ssl.create_default_context() if u.scheme == "rediss" else None)

    async def _address(self) -> tuple[str, int]:
        """The primary's address: the URL's, or the first sentinel's that answers (ConnectionError: none)."""
        if self.sentinel is None:
            return self.host, self.port
        for host, port in self.sentinel.sentinels:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
            except (OSError, asyncio.TimeoutError):
                continue
            try:
                parser = hiredis.Reader(encoding="utf-8", errors="replace")
                spw = self.sentinel.sentinel_password
                if spw:
                    writer.write(_pack(("AUTH", spw)))
                writer.write(_pack(("SENTINEL", "get-master-addr-by-name", self.sentinel.primary)))
                await writer.drain()
                replies: list[Any] = []
                while len(replies) < (2 if spw else 1):
                    while (reply := parser.gets()) is False:
                        data = await asyncio.wait_for(reader.read(4096), 2.0)
                        if not data:
                            raise ConnectionError("the sentinel closed the connection")
                        parser.feed(data)
                    replies.append(reply)
                addr = replies[-1]
                if isinstance(addr, list) and len(addr) == 2:
                    return str(addr[0]), int(addr[1])
            except (OSError, asyncio.TimeoutError, ValueError):
                continue
            finally:
                writer.close()
        raise ConnectionError(f"no sentinel named a primary {self.sentinel.primary!r}")

    async def open(self, channels: Iterable[str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, hiredis.Reader]:
        """Connect, authenticate (ConnectionError if refused) and subscribe to `channels` (if any)."""
        host, port = await self._address()
        reader, writer = await asyncio.open_connection(host, port, ssl=self.ssl)
        parser = hiredis.Reader(encoding="utf-8", errors="replace")
        if self.password:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            writer.write(_pack(auth))
            while (reply := parser.gets()) is False:
                parser.feed(await reader.read(4096))
            if isinstance(reply, hiredis.ReplyError):
                writer.close()
                raise ConnectionError(f"Redis AUTH failed: {reply}")
        names = sorted(channels)
        if names:
            writer.write(_pack(("SUBSCRIBE", *names)))
        await writer.drain()
        return reader, writer, parser


class RawPubSub:
    """Subscribes to channels and calls `on_message(channel, data)` for each message; reconnects.

    Messages published while the connection was down are lost to pub/sub: after a reconnect,
    once Redis has confirmed every channel again, `on_resubscribed()` is called so that the
    owner can catch up from durable state.
    """

    def __init__(self, url: str, on_message: Callable[[str, str], None],
                 on_resubscribed: Callable[[], None] | None = None) -> None:
        self.endpoint = Endpoint.of(url)
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.channels: set[str] = set()
        self._unconfirmed: set[str] | None = None  # channels re-subscribed after a reconnect
        self.reconnects = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._connected_before = False
        self._backoff = Backoff(first_s=0.1, max_s=5.0)  # reconnects: 0.1 s doubling to 5 s (reset once up)

    async def start(self) -> None:
        """Connect and start reading (in a background task)."""
        if self._task is None:
            self._task = asyncio.create_task(
                supervised("pub/sub", self._session, backoff=self._backoff, transient=_unreachable, logger=log),
                name="dash-pubsub")

    async def close(self) -> None:
        """Stop reading and close the socket."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer:
            self._writer.close()
            self._writer = None

    def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe (sent now if connected, else on connect)."""
        new = [c for c in channels if c not in self.channels]
        self.channels.update(new)
        if new and self._writer is not None:
            self._writer.write(_pack(("SUBSCRIBE", *new)))

    async def subscribe_confirmed(self, channels: Iterable[str], timeout_s: float = 10.0) -> None:
        """Subscribe and wait until Redis confirms (so no later publish is missed)."""
        loop = asyncio.get_running_loop()
        futures = []
        for c in channels:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(c, []).append(fut)
            futures.append(fut)
        self.subscribe(channels)
        await asyncio.wait_for(asyncio.gather(*futures), timeout_s)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Unsubscribe."""
        gone = [c for c in channels if c in self.channels]
        self.channels.difference_update(gone)
        if self._unconfirmed is not None:
            self._unconfirmed.difference_update(gone)
            if not self._unconfirmed:
                self._unconfirmed = None
                self._resubscribed()
        if gone and self._writer is not None:
            self._writer.write(_pack(("UNSUBSCRIBE", *gone)))

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until the socket is up and subscribed."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    def _confirmed(self, channel: str) -> None:
        for fut in self._waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(None)
        if self._unconfirmed is not None:
            self._unconfirmed.discard(channel)
            if not self._unconfirmed:
                self._unconfirmed = None
                self._resubscribed()

    def _resubscribed(self) -> None:
        if self.on_resubscribed is not None:
            try:
                self.on_resubscribed()
            except Exception:
                log.exception("pub/sub resubscribe listener failed")

    async def _session(self) -> float:
        """One connection's life: connect (a failure here is retried with backoff), subscribe, then
        read until it drops; returns the pause before the next connect."""
        reader, writer, parser = await self.endpoint.open(self.channels)
        self._writer = writer
        self._connected.set()
        if self._connected_before:
            self.reconnects += 1
            log.info("pub/sub reconnected (%d channels)", len(self.channels))
            self._unconfirmed = set(self.channels)
            if not self._unconfirmed:
                self._unconfirmed = None
                self._resubscribed()
        self._connected_before = True
        try:
            await self._read(reader, parser)
        except Exception as exc:  # (a cancel leaves the socket to close())
            self._connected.clear()
            self._writer = None
            self._unconfirmed = None
            log.warning("pub/sub connection lost (%s); reconnecting", exc)
        return self._backoff.delay(0)  # soon, as after the first failure to connect

    async def _read(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the pub/sub connection")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if not isinstance(reply, list) or len(reply) != 3:
                    continue
                if reply[0] == "message":
                    try:
                        self.on_message(reply[1], reply[2])
                    except Exception:
                        log.exception("pub/sub listener failed on %s", reply[1])
                elif reply[0] == "subscribe":
                    self._confirmed(reply[1])


def _unreachable(exc: BaseException) -> bool:
    """A failure to reach Redis (refused, reset, timed out, TLS): one warning per outage."""
    return isinstance(exc, OSError)
