"""A job's log; its events as Server-Sent Events (the same log of events as the WebSocket,
resumable with `Last-Event-ID`, the last `seq` seen); the webhook secrets and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from dash_ray.errors import Forbidden, InvalidPayload, RateLimited
from dash_ray.gateway.deps import Caller, QueryCaller, Svc, _owned
from dash_ray.gateway.services import GatewayServices
from dash_ray.queues import frame_seq, is_preview, of_another

__all__ = ["prefer_wait_s", "router", "wait_final"]

router = APIRouter()

KEEPALIVE_S = 15.0
_FINAL = ('{"type":"job:completed"', '{"type":"job:failed"')


@router.get("/v1/jobs/{job_id}/logs", tags=["jobs"])
async def job_logs(job_id: str, who: QueryCaller, svc: Svc,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> Response:
    """The job's log lines, oldest first (the newest `limit`; 1000 are kept per job)."""
    view = await _owned(job_id, who, svc)
    lines = await svc.store.logs(job_id, view.queue, limit)
    return Response(json.dumps({"jobId": job_id, "logs": lines}), media_type="application/json")


@router.get("/v1/webhooks/secret", tags=["webhooks"])
async def webhook_secret(who: Caller, svc: Svc) -> Response:
    """The caller's webhook signing secret (`whsec_...`): their jobs' webhooks are signed with
    it, Standard Webhooks style (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""
    assert svc.webhooks is not None
    return Response(json.dumps({"secret": svc.webhooks.secret_for(who.user_id)}), media_type="application/json")


@router.get("/v1/webhooks/dead", tags=["webhooks"])
async def webhook_dead(who: Caller, svc: Svc, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """Admins: the newest deliveries given up (id, url, tries, why), and how many are pending."""
    if not who.admin:
        raise Forbidden("admins only")
    assert svc.webhooks is not None
    out = {"pending": await svc.webhooks.outbox.pending(), "dead": await svc.webhooks.outbox.dead(limit)}
    return Response(json.dumps(out), media_type="application/json")


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, who: QueryCaller, svc: Svc,
                     last_event_id: Annotated[str | None, Header()] = None,
                     since: Annotated[int | None, Query(ge=0, le=2**53)] = None,
                     previews: bool = True) -> StreamingResponse:
    """The job's events as `text/event-stream` (`id:` = seq, `event:` = type, `data:` = the
    event's JSON, the WebSocket's frames), from the start or after `Last-Event-ID` / `since`,
    until the job ends. `?token=` works too (an EventSource cannot send headers)."""
    view = await _owned(job_id, who, svc)
    after = since or 0
    if last_event_id is not None:
        try:
            after = int(last_event_id)
        except ValueError:
            raise InvalidPayload("Last-Event-ID must be the seq of an event",
                                 errors=[{"field": "Last-Event-ID", "message": "not an integer"}]) from None
    if not svc.streams.take(who.user_id):
        raise RateLimited(f"at most {svc.streams.limit} open event streams per user (DASH_MAX_STREAMS_PER_USER)",
                          retry_after_s=5)
    return _SlotStream(lambda: svc.streams.give(who.user_id), _events(svc, job_id, view.user_id, after, previews, request),
                       media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


class _SlotStream(StreamingResponse):
    """An event stream that gives its caller's stream slot back when it is over, however it
    ends (even if the client was gone before its first byte)."""

    def __init__(self, release: Callable[[], None], content: AsyncGenerator[bytes, None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release
        self._content = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            with contextlib.suppress(Exception):
                await self._content.aclose()  # its hub subscription goes too


async def _events(svc: GatewayServices, job_id: str, owner: str | None, after: int, previews: bool,
                  request: Request) -> AsyncGenerator[bytes, None]:
    live: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
    overflow = False

    def on_event(_channel: str, data: str) -> None:
        nonlocal overflow
        try:
            live.put_nowait(data)
        except asyncio.QueueFull:
            overflow = True  # caught up from the replay stream below

    channel = svc.store.keys.channel(job_id)
    await svc.hub.add(channel, on_event)  # before the replay: nothing falls between the two
    last = after
    try:
        yield b"retry: 2000\n\n"
        while True:
            frames = await svc.store.bus.replay(job_id, last)
            for data in frames:
                seq = frame_seq(data)
                if seq > last:
                    last = seq
                    if of_another(data, owner):
                        return  # the id changed hands: this job's stream is over
                    if previews or not is_preview(data):
                        yield _sse(seq, svc.signer.sign_json(data, owner))
                    if data.startswith(_FINAL):
                        return
            overflow = False
            while not overflow:
                try:
                    data = await asyncio.wait_for(live.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                seq = frame_seq(data)
                if seq <= last:
                    continue
                if seq > last + 1 and seq - last < 1000:  # a gap (an event not yet here): read the stream
                    break
                last = seq
                if of_another(data, owner):
                    return
                if previews or not is_preview(data):
                    yield _sse(seq, svc.signer.sign_json(data, owner))
                if data.startswith(_FINAL):
                    return
    finally:
        with contextlib.suppress(Exception):
            await svc.hub.remove(channel, on_event)


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)


def prefer_wait_s(prefer: str | None) -> float:
    """Seconds a `Prefer: wait=N` header asks to wait (RFC 7240), 0 without one."""
    m = _PREFER_WAIT.search(prefer or "")
    return float(m.group(1)) if m else 0.0


async def wait_final(svc: GatewayServices, job_id: str, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the job's final event; True if it ended."""
    done = asyncio.Event()

    def on_event(_channel: str, data: str) -> None:
        if data.startswith(_FINAL):
            done.set()

    channel = svc.store.keys.channel(job_id)
    await svc.hub.add(channel, on_event)
    try:
        if (await svc.store.get(job_id)).status in ("completed", "failed", "cancelled"):  # ended before we listened
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        return done.is_set()
    finally:
        with contextlib.suppress(Exception):
            await svc.hub.remove(channel, on_event)


def _sse(seq: int, data: str) -> bytes:
    kind = data[9:data.find('"', 9)] if data.startswith('{"type":"') else "message"
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()
