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

from dash_ray.errors import Forbidden, InvalidPayload, JobNotFound, RateLimited
from dash_ray.gateway.deps import Audit, Caller, QueryCaller, Svc, _owned
from dash_ray.gateway.errors import DocumentedRoute, raises
from dash_ray.gateway.services import GatewayServices
from dash_ray.models.events import Frame
from dash_ray.models.options import ReplayRequest
from dash_ray.models.status import is_final
from dash_ray.queues.frames import catch_up

__all__ = ["prefer_wait_s", "router", "wait_final"]

router = APIRouter(route_class=DocumentedRoute)  # error responses from `@raises` (gateway/errors.py)

KEEPALIVE_S = 15.0


@router.get("/v1/jobs/{job_id}/logs", tags=["jobs"])
@raises(JobNotFound)
async def job_logs(job_id: str, who: QueryCaller, svc: Svc,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> Response:
    """The job's log lines, oldest first (the newest `limit`; 1000 are kept per job)."""
    view = await _owned(job_id, who, svc)
    lines = await svc.store.reader.logs(job_id, view.queue, limit)
    return Response(json.dumps({"jobId": job_id, "logs": lines}), media_type="application/json")


@router.get("/v1/webhooks/secret", tags=["webhooks"])
async def webhook_secret(who: Caller, svc: Svc) -> Response:
    """The caller's webhook signing secret (`whsec_...`): their jobs' webhooks are signed with
    it, Standard Webhooks style (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""
    assert svc.webhooks is not None
    return Response(json.dumps({"secret": svc.webhooks.secret_for(who.user_id)}), media_type="application/json")


@router.get("/v1/webhooks/dead", tags=["webhooks"])
@raises(Forbidden)
async def webhook_dead(who: Caller, svc: Svc, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """Admins: the newest deliveries given up (id, url, tries, why), and how many are pending."""
    if not who.admin:
        raise Forbidden("admins only")
    assert svc.webhooks is not None
    out = {"pending": await svc.webhooks.outbox.pending(), "dead": await svc.webhooks.outbox.dead(limit)}
    return Response(json.dumps(out), media_type="application/json")


@router.post("/v1/webhooks/dead/replay", tags=["webhooks"])
@raises(Forbidden)
async def webhook_replay(who: Caller, svc: Svc, audit: Audit, body: ReplayRequest | None = None) -> Response:
    """Admins: send given-up deliveries again (a receiver that was down is back): those named by
    `ids`, or the newest `limit` (100) its receiver did not refuse for good (410, a URL that cannot
    be sent to); at most `limit` either way. Each is taken out of the dead list and put back in the
    outbox, due now with fresh tries, to its job's webhook URL as it is now (checked again, as
    every send is, and sent only while the job's owner is the same). Answers the deliveries
    replayed; a delivery is replayed once, however many admins ask at once. Recorded in the
    audit trail (the count, and the first 20 ids)."""
    if not who.admin:
        raise Forbidden("admins only")
    assert svc.webhooks is not None
    req = body or ReplayRequest()
    done = await svc.webhooks.outbox.replay(req.ids, req.limit)
    if done:
        await audit("webhook.replay", ",".join(d["id"] for d in done[:20]) + (" ..." if len(done) > 20 else ""),
                    power=True, deliveries=len(done))
    return Response(json.dumps({"replayed": done}), media_type="application/json")


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse)
@raises(JobNotFound, InvalidPayload, RateLimited)
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
    yield b"retry: 2000\n\n"
    async with contextlib.aclosing(catch_up(svc.hub, svc.store.bus, job_id, after, idle_s=KEEPALIVE_S)) as frames:
        async for frame in frames:
            if frame is None:  # KEEPALIVE_S without an event
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"
                continue
            if frame.of_another(owner):
                return  # the id changed hands: this job's stream is over
            if previews or not frame.is_preview:
                yield _sse(frame, svc.signer.sign_json(frame.text, owner))
            if frame.is_final:
                return


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)


def prefer_wait_s(prefer: str | None) -> float:
    """Seconds a `Prefer: wait=N` header asks to wait (RFC 7240), 0 without one."""
    m = _PREFER_WAIT.search(prefer or "")
    return float(m.group(1)) if m else 0.0


async def wait_final(svc: GatewayServices, job_id: str, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the job's final event; True if it ended."""
    done = asyncio.Event()

    def on_event(_channel: str, data: str) -> None:
        if Frame(data).is_final:
            done.set()

    channel = svc.store.keys.channel(job_id)
    await svc.hub.add(channel, on_event)
    try:
        if is_final((await svc.store.get(job_id)).status):  # ended before we listened
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        return done.is_set()
    finally:
        with contextlib.suppress(Exception):
            await svc.hub.remove(channel, on_event)


def _sse(frame: Frame, data: str) -> bytes:
    """A frame as an SSE event; `data` is its text as sent (links signed)."""
    return f"id: {frame.seq}\nevent: {frame.type or 'message'}\ndata: {data}\n\n".encode()
