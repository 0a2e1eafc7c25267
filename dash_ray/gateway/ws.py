"""The seed's WebSocket protocol: subscribe / unsubscribe / ping; job events pushed as they happen.

On subscribe the socket first gets each job's current state (or, with `since`, exactly the
events it missed), then live events; nothing is sent twice or out of order (events carry
an increasing `seq`, and live events that race the snapshot are held until it is sent).

`{type:'subscribe', scope:'mine'}` follows the caller's jobs without naming them: those
unfinished now (as a subscribe of their ids), then each new one from any client the moment it is
made (from its first event); admins may ask for `scope:'all'`, every user's new jobs. A job the
feed brought is let go once it ends (its final event is sent). Past MAX_SUBSCRIPTIONS, a new
job's first event is still sent, and the job not followed.

A waiting job's place in line changes without events of its own (the jobs ahead finish): every
DASH_WS_ETA_REFRESH_S the socket gets a `job:progress` of each waiting job it follows whose
`queuePosition` or `etaS` changed. Such a refresh has no `seq`: it is not in the job's log and
is never replayed (a client that counts seqs lets it through without counting it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from dash_ray.errors import (
    DashError,
    Forbidden,
    InvalidPayload,
    JobNotFound,
    Unauthorized,
    Unavailable,
)
from dash_ray.gateway.auth import Principal, bearer
from dash_ray.gateway.errors import ws_error
from dash_ray.gateway.services import GatewayServices
from dash_ray.loops import supervised
from dash_ray.models.events import (
    ErrorMessage,
    Frame,
    JobProgressEvent,
    PingMessage,
    PongMessage,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    parse_client_message,
)
from dash_ray.models.queues import validation_errors
from dash_ray.models.status import Status
from dash_ray.queues import event_from_state, is_transient
from dash_ray.queues.frames import FrameCursor

__all__ = ["serve_socket"]

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 1000  # subscriptions plus lookups of ids that were not found, per socket
MAX_BUFFERED = 20_000  # messages queued for one slow client before it is disconnected
MAX_BUFFERED_BYTES = 16 * 1024 * 1024  # ... or bytes (previews are images)
MAX_REFRESHED = 50  # waiting jobs whose place one socket gets refreshed, a round
MAX_OPEN_FOLLOWED = 200  # a `scope: mine` subscribe follows at most this many unfinished jobs
MAX_FEED_QUEUED = 1000  # new jobs announced to a socket and not followed yet; past it the socket is too slow
MAX_ENDED = 1000  # jobs the feed brought that ended, remembered per socket (not followed again)
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 1013
CLOSE_RESTART = 1012  # "service restart": reconnect and subscribe with `since`


@dataclass
class _Sub:
    channel: str
    cursor: FrameCursor  # the last seq sent; live frames held while the snapshot or a catch-up is read
    owner: str | None = None  # the job's owner: only links to their files are signed
    previews: bool = True  # false: `job:preview` frames are not sent (they still count in seq)
    waiting: bool = False  # its last event said `waiting`: its place is refreshed
    place: tuple[int | None, float | None] = (None, None)  # (queuePosition, etaS) last sent
    auto: bool = False  # followed for the socket's `scope` (not asked for by id): let go when it ends


class _Bucket:
    """Token bucket: `rate` a second (messages, or job ids), bursts of two seconds' worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = 2 * rate
        self.at = time.monotonic()
        self.refused = 0

    def take(self, n: int = 1) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        self.refused += 1
        return False


class _Session:
    def __init__(self, ws: WebSocket, who: Principal, svc: GatewayServices) -> None:
        self.ws = ws
        self.who = who
        self.svc = svc
        self._channel_prefix = len(svc.store.keys.channel(""))  # a channel is this prefix + the job id
        self.subs: dict[str, _Sub] = {}
        self.out: asyncio.Queue[str] = asyncio.Queue()
        self.closing = False
        self.close_code = CLOSE_TOO_SLOW
        self.not_found = 0  # lookups of ids that were not found: they use up the subscription budget
        self.bucket = _Bucket(svc.settings.ws_messages_per_s)
        self.ids = _Bucket(svc.settings.ws_ids_per_s)  # what a subscribe costs is its ids: counted too
        self.buffered = 0  # bytes queued for the client
        self.scope: str | None = None  # its feed of new jobs ("mine" / "all"), if any
        self.scope_previews = True
        self.feed_in: asyncio.Queue[Frame] = asyncio.Queue()  # new jobs announced, to follow
        self.feeder: asyncio.Task[None] | None = None
        self.ended: dict[str, None] = {}  # jobs the feed brought that ended and were let go (the latest MAX_ENDED)

    # --- outgoing ---
    def _enqueue(self, text: str, owner: str | None = None) -> None:
        """Queue a frame; links in it to `owner`'s files (the job's owner) are signed, usable
        without a token. A frame with no owner (errors, pongs) signs nothing."""
        if self.closing:
            return
        text = self.svc.signer.sign_json(text, owner)
        if self.out.qsize() >= MAX_BUFFERED or self.buffered + _size(text) > MAX_BUFFERED_BYTES:
            log.warning("socket of %s is not reading; closing it", self.who.user_id)
            self.close_later(CLOSE_TOO_SLOW)
            return
        self.buffered += _size(text)
        self.out.put_nowait(text)

    def close_later(self, code: int) -> None:
        """Close the socket with `code` once what is queued before is sent."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.out.put_nowait("")  # wakes the sender, which closes

    def send_model(self, model: Any, owner: str | None = None) -> None:
        self._enqueue(model.model_dump_json(by_alias=True, exclude_none=True), owner)

    async def sender(self) -> None:
        while True:
            text = await self.out.get()
            if self.closing and not text:
                with contextlib.suppress(Exception):
                    await self.ws.close(self.close_code)
                return
            self.buffered -= _size(text)
            await self.ws.send_text(text)
            self.svc.metrics.events_sent += 1

    def _frame(self, sub: _Sub, frame: Frame) -> None:
        """Send one of a job's event frames, unless the subscription opted out of previews, or
        the frame is of another user's job that now holds the id (never sent)."""
        if frame.of_another(sub.owner):
            return
        kind = frame.type
        if kind == "job:progress":
            sub.waiting = frame.has_status(Status.WAITING)
            sub.place = (None, None)
        elif kind != "job:preview" and kind != "job:log":
            sub.waiting = False
        if sub.previews or kind != "job:preview":
            self._enqueue(frame.text, sub.owner)
        if sub.auto and frame.is_final and not self.closing:  # a job the feed brought: followed to its end
            self._let_go(sub)

    def _let_go(self, sub: _Sub) -> None:
        """Stop following a job the feed brought, that ended (remembered: not followed again)."""
        job_id = sub.cursor.job_id
        if self.subs.get(job_id) is sub:
            del self.subs[job_id]
            task = asyncio.ensure_future(self.svc.hub.remove(sub.channel, self.on_event))
            task.add_done_callback(_done)
        self.ended[job_id] = None
        if len(self.ended) > MAX_ENDED:
            del self.ended[next(iter(self.ended))]

    def _frames(self, sub: _Sub, frames: list[Frame]) -> None:
        for frame in frames:
            self._frame(sub, frame)

    # --- a waiting job's place ---
    async def refresher(self) -> None:
        """Every DASH_WS_ETA_REFRESH_S, a seq-less `job:progress` for each followed waiting job
        whose place or start time changed (at most MAX_REFRESHED jobs a round)."""
        every = self.svc.settings.ws_eta_refresh_s
        if every <= 0:
            return

        async def step() -> float:
            await self._refresh()
            return every

        await supervised(f"place refresher of {self.who.user_id}'s socket", step, stop=lambda: self.closing,
                         logger=log)

    async def _refresh(self) -> None:
        for job_id in [j for j, sub in self.subs.items() if sub.waiting and sub.cursor.following][:MAX_REFRESHED]:
            try:
                view = await self.svc.store.get(job_id)
            except Exception:
                continue  # gone, or Redis away: the next round tries again
            sub = self.subs.get(job_id)
            if sub is None or not sub.waiting or view.status != Status.WAITING or view.queue_position is None:
                continue  # it moved on meanwhile: its own event says so
            if view.user_id != sub.owner:
                continue  # the id changed hands: another user's job now
            eta = view.eta_s
            was_pos, was_eta = sub.place
            if view.queue_position == was_pos and (eta is None or (was_eta is not None and abs(eta - was_eta) < 1)):
                continue
            sub.place = (view.queue_position, eta)
            self._enqueue(_place(view))

    # --- live events ---
    def on_event(self, channel: str, data: str) -> None:
        job_id = channel[self._channel_prefix:]
        sub = self.subs.get(job_id)
        if sub is None:
            return
        frame = sub.cursor.live(data)  # held while its snapshot or a catch-up is read
        if frame is not None:
            self._frame(sub, frame)

    # --- requests ---
    async def handle(self, raw: str | bytes) -> None:
        if not self.bucket.take():
            self.send_model(ErrorMessage(code="rate_limited", message="too many messages; slow down"))
            if self.bucket.refused > 10 * self.bucket.rate:
                self.close_later(CLOSE_POLICY)
            return
        try:
            msg = parse_client_message(raw)
        except ValidationError as exc:
            errs = validation_errors(exc)
            if any(e["message"].startswith("Invalid JSON") for e in errs):
                self.send_model(ErrorMessage(code="bad_json", message="frame is not valid JSON"))
            else:
                text = "; ".join(f"{e['field']}: {e['message']}" for e in errs)
                self.send_model(ErrorMessage(code="bad_request", message=f"invalid message: {text}"))
            return
        if isinstance(msg, PingMessage):
            self.send_model(PongMessage(ts=round(time.time(), 3), replica=self.svc.metrics.replica))
        elif isinstance(msg, SubscribeMessage):
            if not self.ids.take(len(msg.job_ids) or 1):
                self.send_model(ErrorMessage(code="rate_limited", message=(
                    f"too many job ids subscribed; at most {self.ids.rate:g} a second (DASH_WS_IDS_PER_S)")))
                return
            if msg.scope is not None:
                await self.follow(msg.scope, msg.previews)
            await self.subscribe(msg)
        elif isinstance(msg, UnsubscribeMessage):
            if msg.scope is not None and msg.scope == self.scope:
                await self.unfollow()
            for job_id in msg.job_ids:
                await self.drop(job_id)
            self._subscribed()

    async def _owner(self, job_id: str) -> tuple[str | None, dict[str, str]]:
        state = await self.svc.store.bus.state(job_id)
        if state.get("userId"):
            return state["userId"], state
        view = await self.svc.store.get(job_id)  # a job added by plain BullMQ has no state hash yet
        return view.user_id, state

    async def subscribe(self, msg: SubscribeMessage) -> None:
        since = msg.since or {}
        for job_id in dict.fromkeys(msg.job_ids):
            await self._subscribe(job_id, since.get(job_id), msg.previews)
        self._subscribed()

    def _subscribed(self) -> None:
        self.send_model(SubscribedMessage(job_ids=sorted(self.subs), scope=self.scope))

    async def _subscribe(self, job_id: str, since: int | None, previews: bool, *, auto: bool = False) -> None:
        """Follow one job: its start (`_snapshot`), then its live events; an error frame if it
        cannot be (not found, not the caller's, too many). `auto`: for the socket's scope."""
        sub = self.subs.get(job_id)
        if sub is not None:
            if not auto:
                sub.auto = False  # asked for by id: followed until unsubscribed, as any other
            return
        if len(self.subs) + self.not_found >= MAX_SUBSCRIPTIONS:
            self.send_model(ErrorMessage(code="too_many", message=f"at most {MAX_SUBSCRIPTIONS} subscriptions",
                                         job_id=job_id))
            return
        try:
            owner, state = await self._owner(job_id)
            if not self.who.may_see(owner):
                raise JobNotFound(job_id)  # the same answer as for a job that does not exist
            last = int(state.get("seq") or 0)
            if since is not None and since > last:
                raise InvalidPayload(f"since: {job_id} has no event after seq {last}",
                                     errors=[{"field": f"since.{job_id}", "message": f"past the last seq ({last})"}])
        except DashError as exc:
            if isinstance(exc, JobNotFound):
                self.not_found += 1
            self._enqueue_error(exc, job_id)
            return
        if job_id in self.subs:  # the feed followed it meanwhile
            return
        sub = _Sub(channel=self.svc.store.keys.channel(job_id), cursor=FrameCursor(job_id),
                   owner=owner, previews=previews, auto=auto)
        self.subs[job_id] = sub
        try:
            await self.svc.hub.add(sub.channel, self.on_event)
            final = await self._snapshot(job_id, sub, since)
        except BaseException:
            await self.drop(job_id)  # a subscribe fully succeeds or leaves nothing behind
            raise
        if final and auto:  # it ended meanwhile: its end was sent, nothing more will come
            self._let_go(sub)

    # --- the feed of new jobs (`scope`) ---
    async def follow(self, scope: str, previews: bool) -> None:
        """Follow the caller's jobs (`mine`; admins: `all`, every user's new ones): the feed of
        new jobs first, then (`mine`) those unfinished now, so that none falls between."""
        if scope == "all" and not self.who.admin:
            raise Forbidden("only an admin may follow every user's jobs (scope 'all')")
        self.scope_previews = previews
        if self.scope == scope:
            return  # followed already: nothing to list again
        if self.scope is not None:
            await self.unfollow()
        await self.svc.feed.join(None if scope == "all" else self.who.user_id, self.on_feed)
        self.scope = scope
        if self.feeder is None:
            self.feeder = asyncio.create_task(self._feed_loop())
        await self._sweep()

    async def _sweep(self) -> None:
        """Follow the caller's unfinished jobs not followed yet (`scope: mine`), each paid for
        from the socket's ids a second as a subscribe of its id would be."""
        if self.scope != "mine":
            return
        room = MAX_SUBSCRIPTIONS - len(self.subs) - self.not_found
        ids = [j for j in await self.svc.store.reader.open_jobs(self.who.user_id, MAX_OPEN_FOLLOWED)
               if j not in self.subs][:max(room, 0)]
        if ids and not self.ids.take(len(ids)):
            self.send_model(ErrorMessage(code="rate_limited", message=(
                f"too many job ids subscribed; at most {self.ids.rate:g} a second (DASH_WS_IDS_PER_S)")))
            return
        for job_id in ids:
            await self._subscribe(job_id, None, self.scope_previews, auto=True)

    async def unfollow(self) -> None:
        """Stop the feed of new jobs (the jobs it brought are followed to their end)."""
        scope, self.scope = self.scope, None
        if scope is not None:
            await self.svc.feed.leave(None if scope == "all" else self.who.user_id, self.on_feed)

    def on_feed(self, frame: Frame) -> None:
        """A new job of the scope's (its first frame): followed by `_feed_loop`, in order."""
        if self.closing or self.scope is None:
            return
        if self.feed_in.qsize() >= MAX_FEED_QUEUED:
            log.warning("socket of %s cannot keep up with its feed of new jobs; closing it", self.who.user_id)
            self.close_later(CLOSE_TOO_SLOW)
            return
        self.feed_in.put_nowait(frame)

    async def _feed_loop(self) -> None:
        while not self.closing:
            frame = await self.feed_in.get()
            try:
                await self._follow_new(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot follow a new job on a socket (%s): sent its first event only", exc)
                if frame.job_id not in self.subs:
                    self._enqueue(frame.text, frame.user_id)

    async def _follow_new(self, frame: Frame) -> None:
        """Follow a job the feed announced: its events from the announced one on (read back from its
        replay stream once its channel is listened to, so none falls between)."""
        job_id = frame.job_id
        if job_id is None or job_id in self.subs or job_id in self.ended or self.scope is None:
            return  # followed already (its own channel brings its events), or followed to its end
        owner = frame.user_id
        if not self.who.may_see(owner):
            return
        if len(self.subs) + self.not_found >= MAX_SUBSCRIPTIONS:
            self._enqueue(frame.text, owner)  # announced, not followed
            return
        sub = _Sub(channel=self.svc.store.keys.channel(job_id), cursor=FrameCursor(job_id), owner=owner,
                   previews=self.scope_previews, auto=True)
        self.subs[job_id] = sub
        try:
            await self.svc.hub.add(sub.channel, self.on_event)
            self._frames(sub, await sub.cursor.catch_up(self.svc.store.bus.replay, max(0, frame.seq - 1)))
        except BaseException:
            await self.drop(job_id)
            raise

    async def resync(self) -> None:
        """The hub's pub/sub connection came back: send every subscription the events it missed
        (from the job's replay stream, after its last seq), or, if that cannot be read, close
        with 1012 so that the client reconnects and subscribes with `since`."""
        for sub in list(self.subs.values()):
            if not sub.cursor.following or self.closing:  # its snapshot is on the way: it holds live events
                continue
            try:
                frames = await sub.cursor.catch_up(self.svc.store.bus.replay)
            except Exception as exc:
                log.warning("cannot catch a socket up after a pub/sub reconnect (%s); closing it 1012", exc)
                self.close_later(CLOSE_RESTART)
                return
            self._frames(sub, frames)
        if self.scope == "mine" and not self.closing:  # jobs made while pub/sub was down: not announced
            try:
                await self._sweep()
            except Exception as exc:
                log.warning("cannot list a socket's unfinished jobs after a pub/sub reconnect (%s)", exc)

    async def _snapshot(self, job_id: str, sub: _Sub, since: int | None) -> bool:
        """Send the subscription its start: with `since`, the events after it; else the job's
        current state as one event. Then the live events held meanwhile; from there it follows.
        Returns True when the state sent was the job's end."""
        bus = self.svc.store.bus
        if since is not None:
            self._frames(sub, await sub.cursor.catch_up(bus.replay, since))
            return False
        state = await bus.state(job_id)
        if not state:  # plain BullMQ job that no dash-ray consumer touched yet
            view = await self.svc.store.get(job_id)
            state = {"status": view.status, "queue": view.queue, "userId": view.user_id or "",
                     "progress": str(view.progress), "seq": "0"}
        event = event_from_state(job_id, state)
        if event is None:  # no state to send: the held events only
            self._frames(sub, await sub.cursor.catch_up(bus.replay, 0, replay=False))
            return False
        if isinstance(event, JobProgressEvent) and event.status == Status.WAITING:  # with its place in line
            sub.waiting = True
            with contextlib.suppress(Exception):
                view = await self.svc.store.get(job_id)
                event.queue_position, event.eta_s, event.finish_eta_s = (view.queue_position, view.eta_s,
                                                                          view.finish_eta_s)
                sub.place = (view.queue_position, view.eta_s)
        self.send_model(event, sub.owner)
        self._frames(sub, await sub.cursor.catch_up(bus.replay, event.seq, replay=False))
        return not isinstance(event, JobProgressEvent)

    async def drop(self, job_id: str) -> None:
        sub = self.subs.pop(job_id, None)
        if sub is not None:
            await self.svc.hub.remove(sub.channel, self.on_event)

    def _enqueue_error(self, exc: DashError, job_id: str | None = None) -> None:
        self._enqueue(json.dumps(ws_error(exc, job_id), separators=(",", ":")))

    async def close(self) -> None:
        if self.feeder is not None:
            self.feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.feeder
        with contextlib.suppress(Exception):
            await self.unfollow()
        for job_id in list(self.subs):
            await self.drop(job_id)


def _done(task: asyncio.Task[None]) -> None:
    """A background unsubscribe's end: its error (Redis away) is not the socket's."""
    if not task.cancelled():
        task.exception()


def _size(text: str) -> int:
    """A frame's size in bytes as sent (UTF-8); an ASCII one's is its length (checked in O(1))."""
    return len(text) if text.isascii() else len(text.encode())


def _place(view: Any) -> str:
    """A waiting job's place as a seq-less `job:progress` frame."""
    eta = f", starts in about {view.eta_s:.0f}s" if view.eta_s is not None else ""
    frame = {"type": "job:progress", "jobId": view.id, "queue": view.queue, "status": "waiting", "progress": 0,
             "message": f"waiting: #{view.queue_position} in line{eta}", "queuePosition": view.queue_position,
             "etaS": view.eta_s, "finishEtaS": view.finish_eta_s, "ts": round(time.time(), 3)}
    return json.dumps({k: v for k, v in frame.items() if v is not None}, separators=(",", ":"))


def _token(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if token:
        return token
    return bearer(ws.headers.get("authorization"))


async def serve_socket(ws: WebSocket, svc: GatewayServices) -> None:
    """Run one client socket until it goes away."""
    await ws.accept()
    try:
        ticket = ws.query_params.get("ticket")
        who = await svc.redeem_ticket(ticket) if ticket is not None else svc.auth.verify(_token(ws))
    except Unauthorized as exc:
        await ws.send_json(ws_error(exc))
        await ws.close(CLOSE_UNAUTHORIZED)
        return
    if not svc.sockets.take(who.user_id):
        await ws.send_json({"type": "error", "code": "too_many_sockets",
                            "message": f"at most {svc.sockets.limit} open sockets per user"})
        await ws.close(CLOSE_POLICY)
        return
    session = _Session(ws, who, svc)
    svc.hub.on_resync(session.resync)
    svc.metrics.open_sockets += 1
    sender = asyncio.create_task(session.sender())
    refresher = asyncio.create_task(session.refresher())
    limit = svc.settings.max_ws_frame_bytes
    try:
        while not session.closing:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes")
            if raw is None:
                continue
            size = len(raw) if isinstance(raw, bytes) or len(raw) * 4 <= limit else len(raw.encode())
            if size > limit:
                await ws.close(CLOSE_TOO_BIG, reason=f"frame over {limit} bytes")
                break
            try:
                await session.handle(raw)
            except DashError as exc:
                session._enqueue_error(exc)
            except Exception as exc:
                if is_transient(exc):
                    session._enqueue_error(Unavailable())
                else:
                    log.exception("socket request failed")
                    session._enqueue_error(InvalidPayload("could not handle the message"))
            if sender.done():
                break
    except WebSocketDisconnect:
        pass
    finally:
        session.closing = True
        svc.hub.off_resync(session.resync)
        svc.metrics.open_sockets -= 1
        svc.sockets.give(who.user_id)
        await session.close()
        for task in (sender, refresher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()
