"""Schedules: recurring jobs (`POST/GET/DELETE /v1/schedules`), each a BullMQ job scheduler whose
jobs dash-ray runs (queues/schedules.py)."""

from __future__ import annotations

import time
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from dash_ray.errors import Forbidden, InvalidPayload, RateLimited, ScheduleNotFound, UnknownQueue
from dash_ray.gateway.deps import Audit, Caller, Svc
from dash_ray.gateway.errors import DocumentedRoute, raises
from dash_ray.models.options import JobOptions, ScheduleRequest
from dash_ray.models.queues import bad_field, parse_payload
from dash_ray.models.views import ScheduleView

__all__ = ["router"]

router = APIRouter(route_class=DocumentedRoute)

UNSCHEDULABLE = frozenset({"training"})  # a training job's id is its LoRA's: one id, one LoRA


def _owner(who: Caller, user_id: str | None) -> str:
    if user_id and user_id != who.user_id:
        if not who.admin:
            raise Forbidden("only an admin may act on another user's schedules")
        return user_id
    return who.user_id


@router.post("/v1/schedules", status_code=201, response_model=ScheduleView, tags=["schedules"],
             responses={200: {"model": ScheduleView, "description": "A schedule of this name was replaced"}})
@raises(InvalidPayload, UnknownQueue, RateLimited, Forbidden)
async def post_schedule(body: ScheduleRequest, who: Caller, svc: Svc, audit: Audit) -> JSONResponse:
    """Make one of your schedules (201), or replace the one of this name (200): a job of
    `payload` on `queue` every `every` seconds, or on a `cron` pattern (5 or 6 fields, in `tz`),
    until `endAt` (Unix seconds or ISO 8601; a number is seconds from now) or `limit` runs.
    Each run is a job of yours (`repeat:{user}.{name}:{ms}`) with its own events, in your
    history; the next is made as it starts, so one waits at a time. Your schedules together may
    run at most as often as your submission rate allows (`DASH_RATE_SUBMIT`), at most
    `DASH_MAX_SCHEDULES_PER_USER` of them."""
    s = svc.settings
    if body.queue not in svc.queues:
        raise UnknownQueue(body.queue)
    if body.queue in UNSCHEDULABLE:
        raise bad_field("queue", f"{body.queue} jobs cannot be scheduled (a training job's id is its LoRA's)")
    if body.every is not None and body.every < s.schedule_min_every_s:
        raise bad_field("every", f"at least {s.schedule_min_every_s:g} s (DASH_SCHEDULE_MIN_EVERY_S)")
    if body.tz is not None:
        try:
            ZoneInfo(body.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise bad_field("tz", "not a time zone (an IANA name, e.g. Europe/Paris)") from None
    if body.cron is not None and not croniter.is_valid(body.cron, second_at_beginning=True):
        raise bad_field("cron", "not a cron pattern (5 fields, or 6 with seconds first)")
    payload = parse_payload(body.queue, body.payload, allow_test_only=True)
    if payload.user_id and payload.user_id != who.user_id and not who.admin:
        raise Forbidden("userId in the payload does not match the token", field="payload.userId")
    if payload.get_id():
        raise bad_field(f"payload.{payload.model_fields[payload.id_field].alias}", "each run gets its own id")
    owner = payload.user_id if (who.admin and payload.user_id) else who.user_id
    await svc.policy.budget_weight(owner, None, who)  # past a hard GPU budget: no new schedule either
    payload = payload.model_copy(update={"user_id": owner})
    o = body.options
    await svc.policy.check(body.queue, payload, JobOptions(priority=o.priority, attempts=o.attempts, backoff=o.backoff,
                                                           timeout_s=o.timeout_s), who, owner)
    validate = svc.store.producer.options.validate
    if validate:
        validate(payload)
    view, new = await svc.schedules.upsert(
        owner, body.name, body.queue, payload, o, every_ms=int(body.every * 1000) if body.every else None,
        cron=body.cron, tz=body.tz, end_ms=body.end_ms(int(time.time() * 1000)), limit=body.limit,
        most=s.max_schedules_per_user, budget_per_min=svc.limiter.rate.limit * 60_000 / svc.limiter.rate.window_ms)
    await audit("schedule.set", body.name, owner=owner, queue=body.queue)  # (another user's: audited)
    return JSONResponse(view.wire(), status_code=201 if new else 200)


@router.get("/v1/schedules", response_model=list[ScheduleView], tags=["schedules"])
@raises(Forbidden)
async def list_schedules(who: Caller, svc: Svc,
                         user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None) -> JSONResponse:
    """Your schedules, soonest next run first. Admins: another user's (`userId`), or every
    schedule there is (`userId=*`, a Node producer's job schedulers too)."""
    if user_id == "*" and not who.admin:
        raise Forbidden("only an admin may list every user's schedules")
    owner = None if user_id == "*" else _owner(who, user_id)
    return JSONResponse([v.wire() for v in await svc.schedules.list(owner)])


@router.delete("/v1/schedules/{name}", response_model=ScheduleView, tags=["schedules"])
@raises(ScheduleNotFound, Forbidden)
async def delete_schedule(name: str, who: Caller, svc: Svc, audit: Audit,
                          user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None) -> JSONResponse:
    """Stop one of your schedules: no more runs (its next one goes if it is not due yet: it ends
    `cancelled`; one due or running ends as it would). Admins: another user's (`userId`)."""
    owner = _owner(who, user_id)
    removed = await svc.schedules.remove(owner, name)
    await audit("schedule.remove", name, owner=owner)
    return JSONResponse(removed.wire())
