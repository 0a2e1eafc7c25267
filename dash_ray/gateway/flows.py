"""Flows: `POST /v1/flows`, a job and the jobs it waits for, made in one step
(queues/flows.py), each checked as a submit is."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dash_ray.errors import (
    Forbidden,
    InvalidPayload,
    JobConflict,
    QuotaExceeded,
    RateLimited,
    UnknownQueue,
)
from dash_ray.gateway.deps import Caller, Svc
from dash_ray.gateway.errors import DocumentedRoute, raises
from dash_ray.models.options import FlowRequest
from dash_ray.models.views import FlowView
from dash_ray.queues.flows import descendants, flatten, make_flow

__all__ = ["router"]

router = APIRouter(route_class=DocumentedRoute)


@router.post("/v1/flows", status_code=201, response_model=FlowView, tags=["jobs"])
@raises(InvalidPayload, UnknownQueue, Forbidden, RateLimited, QuotaExceeded, JobConflict)
async def post_flow(body: FlowRequest, who: Caller, svc: Svc) -> JSONResponse:
    """Make a job and the jobs it waits for (`children`, each a flow of its own, at most 4
    levels and 20 jobs), in one step: all are made, or none. The children run first; a job runs
    when the jobs it waits for are done. A job's payload may take the image of one of those as
    `job://<id>/images/<n>` (give the child a `jobId`), read when it starts. A child's
    `onFailure`: `fail` (default) fails the job waiting for it, `ignore` lets it run without.
    Each job counts against your limits as a submit does. Cancelling a job cancels those it
    waits for. The same flow sent again (same ids and payloads) answers 200 with what it made."""
    svc.limiter.refused_lately(who.user_id)  # over their rate a moment ago: 429 at once, nothing checked
    weight = await svc.policy.budget_weight(who.user_id, who.weight, who)  # past a hard GPU budget: refused
    nodes = flatten(body, who.user_id)
    for i, node in enumerate(nodes):
        if node.request.queue not in svc.queues:
            raise UnknownQueue(node.request.queue)
        given = node.request.payload.get("userId")
        if given is not None and given != who.user_id:
            raise Forbidden("userId in a payload does not match the token", field="payload.userId")
        await svc.policy.check(node.request.queue, node.payload, node.options, who, who.user_id,
                               flow=descendants(nodes, i))
        if node.options.webhook is not None:  # as a submit's: counted, then its destination checked
            await svc.limiter.check(who.user_id)
            await svc.policy.check_webhook(node.options, who.user_id)
    # each job's limits, taken as it is made (the rate counts each), as a submit's are
    quotas = [replace(svc.policy.quota(n.request.queue, n.options, who), rate=svc.limiter.rate) for n in nodes]
    try:
        flow = await make_flow(svc.store.producer, nodes, who.user_id, weight=weight, quotas=quotas, org=who.org)
    except RateLimited as exc:
        if hasattr(exc, "wait_ms"):  # the create script's refusal of the rate: remembered, as a submit's
            raise svc.limiter.refused(who.user_id, exc.wait_ms) from None
        raise
    return JSONResponse(flow.wire(), status_code=201 if flow.created else 200)
