"""The routes' dependencies: the replica's services, the caller, owned jobs, signed answers.

Each dependency declares the errors it raises (`errors.raises`): every route that takes it
lists them in OpenAPI."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from pydantic_core import to_json

from dash_ray.errors import JobNotFound, Unauthorized, Unavailable
from dash_ray.gateway.auth import Principal, bearer
from dash_ray.gateway.errors import raises
from dash_ray.gateway.services import GatewayServices
from dash_ray.models import JobView

__all__ = ["Audit", "AuditTrail", "Caller", "QueryCaller", "Svc"]


def _services_of(request: Request) -> GatewayServices:
    return request.app.state.services


# The dependencies are coroutines: FastAPI runs a plain function dependency in its thread pool,
# a thread handoff per dependency per request.
@raises(Unavailable)  # the job store behind them may be down for a moment
async def _services(request: Request) -> GatewayServices:
    return _services_of(request)


def _bearer(request: Request, allow_query: bool = False) -> str | None:
    token = bearer(request.headers.get("authorization"))
    if token is not None:
        return token
    return request.query_params.get("token") if allow_query else None


@raises(Unauthorized)
async def _caller(request: Request) -> Principal:
    who = request.scope.get("state", {}).get("principal")  # checked at the edge, before the body
    return who if isinstance(who, Principal) else _services_of(request).auth.verify(_bearer(request))


def caller_or_query(request: Request) -> Principal:
    """Like _caller, but `?token=` works too (an <img src> cannot send headers)."""
    return _services_of(request).auth.verify(_bearer(request, allow_query=True))


@raises(Unauthorized)
async def _caller_or_query(request: Request) -> Principal:
    return caller_or_query(request)


def _signed(svc: GatewayServices, view: dict[str, Any], status: int = 200) -> Response:
    """A job view as JSON, the links to its owner's result files signed for a short time (usable
    without a token); nothing in the user's payload is ever signed."""
    return _json(svc.signer.sign_view(view), status)


def _signed_list(svc: GatewayServices, body: dict[str, Any]) -> Response:
    """A page of job views, each signed as `_signed` signs one."""
    return _json({**body, "jobs": [svc.signer.sign_view(j) for j in body["jobs"]]})


def _json(data: Any, status: int = 200) -> Response:
    """`data` as compact UTF-8 JSON (pydantic's encoder: a fifth of `json.dumps`'s time on a job view)."""
    return Response(to_json(data), status_code=status, media_type="application/json")


Svc = Annotated[GatewayServices, Depends(_services)]
Caller = Annotated[Principal, Depends(_caller)]


@dataclass(frozen=True)
class AuditTrail:
    """The audit trail as one request writes it: `await audit(action, target, owner=...)` records
    an admin's action, or any action on another user's (`owner`'s) job; one on the caller's own
    is not recorded (its job's events say it) unless it used an admin's power (`power=True`).
    A write that fails is logged, not raised: the action was done."""

    log: Any
    who: Principal
    ip: str | None

    async def __call__(self, action: str, target: str, *, owner: str | None = None, **detail: Any) -> None:
        if owner is not None and owner == self.who.user_id and not detail.get("power"):
            return
        try:
            await self.log.record(self.who.user_id, action, target, admin=self.who.admin, owner=owner, ip=self.ip,
                                  **detail)
        except Exception:
            _log.warning("could not record %s of %s in the audit trail", action, target, exc_info=True)


_log = logging.getLogger(__name__)


@raises(Unauthorized)
async def _audit_trail(request: Request, who: Caller, svc: Svc) -> AuditTrail:
    return AuditTrail(svc.audit, who, request.client.host if request.client else None)


Audit = Annotated[AuditTrail, Depends(_audit_trail)]

QueryCaller = Annotated[Principal, Depends(_caller_or_query)]


async def _owned(job_id: str, who: Principal, svc: GatewayServices) -> JobView:
    view = await svc.store.get(job_id)
    if not who.may_see(view.user_id):
        raise JobNotFound(job_id)  # other users' jobs look like jobs that do not exist
    return view
