"""The webhook sender of a gateway replica: takes due deliveries from the outbox
(`queues/outbox.py`), signs them (`services/webhooks.py`) and POSTs them to the job's URL.

- The destination is checked at every send, like an image fetch: resolved once, refused inside
  the network unless DASH_WEBHOOK_ALLOWED_NETWORKS covers it, and connected to that address
  (a name re-pointed inside the network after the submit is no way in). No redirects.
- One send has DASH_WEBHOOK_DEADLINE_S in all (name lookup, connect, request, the answer's
  headers), whatever the pace of each read (DASH_WEBHOOK_TIMEOUT_S): a receiver that drips its
  answer is cut then, and the delivery retried. Its lease outlasts that, so no other sender
  claims it while it is sent; a claim whose lease ran out anyway settles nothing (fenced).
- At most DASH_WEBHOOK_PER_DESTINATION sends per replica go to one host:port (and to one
  address: a /64 for IPv6), so a slow receiver holds a few senders, not all: a delivery to a
  destination at its limit is given back, unsent and its try not counted, for a moment.
- 2xx: delivered. 410 Gone: the receiver wants no more; dropped. Anything else (an error, a
  timeout, another status): tried again after DASH_WEBHOOK_RETRY_S, doubling (with jitter) up to
  DASH_WEBHOOK_RETRY_MAX_S, at most DASH_WEBHOOK_MAX_ATTEMPTS times, then dropped into the dead
  list (`GET /v1/webhooks/dead`, admins).
- Artifact links in the body are signed, like the REST answers, so the receiver can fetch them.
- With tracing on (dash_ray/tracing.py), each try is a `webhook <event>` span (CLIENT) in its
  job's trace, found by the job's carrier in BullMQ's `opts.tm` (one Redis read a try, with
  tracing on only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from dash_ray import __version__, tracing
from dash_ray.config import Settings
from dash_ray.gateway.auth import UrlSigner
from dash_ray.gateway.metrics import ReplicaMetrics
from dash_ray.loops import Backoff, supervised
from dash_ray.queues import Delivery, Keys, WebhookOutbox, is_transient
from dash_ray.services.netguard import PrivateAddress, pinned_url_async
from dash_ray.services.webhooks import signature_headers, user_secret

__all__ = ["WebhookSender", "webhook_master"]

log = logging.getLogger("dash_ray.webhooks")
_POLL_S = 0.25
_LEASE_MARGIN_S = 10.0  # a send ends at its deadline; its lease lasts this much longer (to settle it)
_BUSY_S = 1.0  # a delivery to a destination at its limit is due again after this (x 1 to 2)


class _Busy(Exception):
    """The delivery's destination has DASH_WEBHOOK_PER_DESTINATION sends in flight already."""


class _Sent(NamedTuple):
    """How one try went: `delivered` (answered 2xx), else whether to give up now (`final`) and
    why; the HTTP status when an answer came."""

    delivered: bool
    final: bool = False
    why: str = ""
    status: int | None = None


class _Slots:
    """Sends in flight per destination (on one event loop), at most `limit` to each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One of `key`'s slots for the block, else _Busy."""
        if self.held.get(key, 0) >= self.limit:
            raise _Busy(key)
        self.held[key] = self.held.get(key, 0) + 1
        try:
            yield
        finally:
            self.held[key] -= 1
            if not self.held[key]:
                del self.held[key]


def _name_key(url: str) -> str:
    """The destination a URL names: `host:port` ('' for a URL the guard refuses anyway)."""
    try:
        parts = urlsplit(url)
        return f"name {(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return ""


def _address_key(pinned: str) -> str:
    """The destination a pinned URL connects to: `address:port`, an IPv6 address's /64. (One
    user's tarpits on many ports are bounded by the per-user share, not here: receivers of
    several users may share an address.)"""
    parts = urlsplit(pinned)
    host = (parts.hostname or "").split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"addr {host}:{parts.port}"
    net = ipaddress.ip_network(f"{addr}/64", strict=False) if addr.version == 6 else addr
    return f"addr {net}:{parts.port}"


def webhook_master(settings: Settings) -> str:
    """The deployment's webhook secret: DASH_WEBHOOK_SECRET, else derived from the token secret."""
    if settings.webhook_secret:
        return settings.webhook_secret
    import hashlib
    import hmac

    return hmac.new(settings.secret().encode(), b"dash-ray webhooks", hashlib.sha256).hexdigest()


class WebhookSender:
    """Deliver the outbox's due webhooks, up to DASH_WEBHOOK_CONCURRENCY at a time."""

    def __init__(self, settings: Settings, redis: Any, keys: Keys, signer: UrlSigner,
                 metrics: ReplicaMetrics) -> None:
        """`redis`: a client of the sender's own (closed with it), used on the loop it runs on."""
        self.settings = settings
        # a failed delivery is tried again after webhook_retry_s, doubling, jittered +-20%
        self.retries = Backoff(settings.webhook_retry_s, settings.webhook_retry_max_s, jitter=(0.8, 1.2))
        self.redis = redis
        self.keys = keys
        self.outbox = WebhookOutbox(redis, keys)
        self.signer = signer
        self.metrics = metrics
        self.master = webhook_master(settings)
        self.lease_s = settings.webhook_deadline_s + _LEASE_MARGIN_S  # no send outlives its deadline
        self._slots = _Slots(settings.webhook_per_destination)
        self._owners = _Slots(max(1, settings.webhook_concurrency // 4))  # no user holds more than a quarter
        self._sending: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._closing = False

    def secret_for(self, user_id: str) -> str:
        """A user's signing secret."""
        return user_secret(self.master, user_id)

    def start(self) -> None:
        """Start sending (a task on the running loop)."""
        if self._task is None:
            self._http = httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False,
                                           headers={"user-agent": f"dash-ray-webhooks/{__version__}"})
            # Redis down or restarting: one warning, then quietly polled until it is back.
            self._task = asyncio.create_task(
                supervised("webhook sender", self._claim, stop=lambda: self._closing, transient=is_transient,
                           backoff=Backoff(first_s=_POLL_S, max_s=_POLL_S), logger=log),
                name="webhook-sender")

    async def close(self) -> None:
        """Stop: sends in flight are cancelled (their leases run out; another sender retries them)."""
        self._closing = True
        for task in [self._task, *self._sending]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._sending]:
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def _claim(self) -> float:
        """Start sending what is due, as many as there are free senders; the pause before the next
        claim (none when it took as many as it could: more may be due)."""
        free = self.settings.webhook_concurrency - len(self._sending)
        claimed = await self.outbox.claim(free, self.lease_s) if free > 0 else []
        for d in claimed:
            task = asyncio.create_task(self._send(d), name=f"webhook-{d.id}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return 0 if len(claimed) == free > 0 else _POLL_S

    async def _send(self, d: Delivery) -> None:
        try:
            url, owner = await self.outbox.destination(d.job_id)
            if not url or d.frame.of_another(owner):  # the record is gone, or its id changed hands since:
                await self.outbox.delivered(d)  # nothing to send, and never to the new owner's URL
                return
            began = time.time()
            try:
                sent = await self._post(d, url, owner)
            except _Busy:  # its receiver has its share of senders: back soon, this try not counted
                await self.outbox.release(d, _BUSY_S * random.uniform(1.0, 2.0))
                return
            except Exception as exc:  # a defect, not the receiver's: a try all the same, so it ends
                log.warning("webhook %s to %s failed: %r", d.message_id, url, exc, exc_info=True,
                            extra={"job_id": d.job_id})
                sent = _Sent(False, False, type(exc).__name__)
            if tracing.tracer() is not None:
                await self._trace(d, url, began, sent)
            if sent.delivered:
                self.metrics.webhooks["delivered"] = self.metrics.webhooks.get("delivered", 0) + 1
                await self.outbox.delivered(d)
                return
            if sent.final or d.attempt >= self.settings.webhook_max_attempts:
                log.warning("webhook %s to %s dropped after %d attempt(s): %s", d.message_id, url, d.attempt,
                            sent.why, extra={"job_id": d.job_id})
                self.metrics.webhooks["dropped"] = self.metrics.webhooks.get("dropped", 0) + 1
                await self.outbox.give_up(d, url, sent.why, final=sent.final)
                return
            self.metrics.webhooks["retried"] = self.metrics.webhooks.get("retried", 0) + 1
            await self.outbox.retry(d, self.retries.delay(d.attempt - 1))
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis went away mid-send: the lease runs out and it is sent again
            log.debug("webhook %s: could not settle", d.id, exc_info=True)

    async def _trace(self, d: Delivery, url: str, began: float, sent: _Sent) -> None:
        """A try's span, `webhook <event>` (CLIENT), in its job's trace: under the carrier the job
        carries. A job with none (submitted with tracing off, or its BullMQ job already removed)
        gets no span: a root of its own would be a trace of one span, tied to no job's. Never
        fails the delivery."""
        end = time.time()
        try:
            tm = await self._carrier(d)
            if not tm:
                return
            attributes = {"dash.job_id": d.job_id, "dash.attempt": d.attempt, "dash.delivered": sent.delivered,
                          "dash.webhook_id": d.message_id, "http.request.method": "POST",
                          "http.response.status_code": sent.status, "server.address": urlsplit(url).hostname,
                          "dash.error": None if sent.delivered else sent.why}
            tracing.record_span(f"webhook {d.frame.type or 'event'}", began, end, tm, attributes, kind="CLIENT",
                                error=None if sent.delivered else sent.why)
        except Exception:
            log.debug("webhook %s: span not recorded", d.id, exc_info=True)

    async def _carrier(self, d: Delivery) -> str | None:
        """The trace carrier of a delivery's job: `tm` in its BullMQ job's options (the queue
        from the event). One Redis read; tracing on only."""
        queue = d.frame.event().queue
        opts = await self.redis.hget(self.keys.bull(queue, d.job_id), "opts")
        tm = json.loads(opts).get("tm") if opts else None
        return tm if isinstance(tm, str) and len(tm) <= 1024 else None

    async def _post(self, d: Delivery, url: str, owner: str) -> _Sent:
        """How the try went; _Busy when the destination has its share of sends in flight. Never
        longer than DASH_WEBHOOK_DEADLINE_S."""
        deadline_s = self.settings.webhook_deadline_s
        try:
            return await asyncio.wait_for(self._post_once(d, url, owner, deadline_s), deadline_s)
        except asyncio.TimeoutError:
            return _Sent(False, False, f"no answer within {deadline_s:g}s (DASH_WEBHOOK_DEADLINE_S)")

    async def _post_once(self, d: Delivery, url: str, owner: str, deadline_s: float) -> _Sent:
        with contextlib.ExitStack() as slots:
            slots.enter_context(self._owners.hold(f"owner {owner}"))
            name = _name_key(url)
            if name:
                slots.enter_context(self._slots.hold(name))
            try:
                pinned, host_header, sni = await pinned_url_async(url, self.settings.webhook_allowed_networks,
                                                                  deadline_s)
            except PrivateAddress as exc:  # a name that does not resolve now may later: retried
                return _Sent(False, not exc.unresolved, f"{exc} (DASH_WEBHOOK_ALLOWED_NETWORKS)")
            slots.enter_context(self._slots.hold(_address_key(pinned)))
            body = self.signer.sign_json(d.body, owner)  # links to the owner's files only
            ts = int(time.time())
            headers = {"content-type": "application/json", "host": host_header,
                       **signature_headers(self.secret_for(owner), d.message_id, ts, body)}
            assert self._http is not None
            try:
                request = self._http.build_request("POST", pinned, content=body.encode(), headers=headers,
                                                   extensions={"sni_hostname": sni})
                r = await self._http.send(request, stream=True)
                await r.aclose()  # the answer's body is not read
            except httpx.HTTPError as exc:
                return _Sent(False, False, f"{type(exc).__name__}")
            except (httpx.InvalidURL, ValueError, UnicodeError) as exc:  # what httpx cannot send: it stays so
                return _Sent(False, True, f"cannot send to this URL ({type(exc).__name__})")
        if 200 <= r.status_code < 300:
            return _Sent(True, status=r.status_code)
        return _Sent(False, r.status_code == 410, f"HTTP {r.status_code}", r.status_code)
