"""The one place where errors become HTTP statuses and WebSocket error messages."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dash_ray.errors import (
    ConfigError,
    DashError,
    Forbidden,
    InvalidJobState,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnknownQueue,
    WorkerError,
)
from dash_ray.queues import MAYBE_TRANSIENT, is_transient

__all__ = ["STATUS", "error_body", "install", "status_of", "ws_error"]

log = logging.getLogger(__name__)

STATUS: dict[type[DashError], int] = {
    InvalidPayload: 422,
    WorkerError: 422,
    UnknownQueue: 404,
    JobNotFound: 404,
    JobConflict: 409,
    InvalidJobState: 409,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    Unavailable: 503,
    QuotaExceeded: 413,
    ConfigError: 500,
}


def status_of(exc: DashError) -> int:
    """The HTTP status of an error."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(exc: DashError) -> dict[str, object]:
    """`{"error": {"code", "message", ...}}`."""
    return {"error": exc.to_dict()}


def ws_error(exc: DashError, job_id: str | None = None) -> dict[str, object]:
    """The WebSocket `error` message of an error."""
    msg: dict[str, object] = {"type": "error", "code": exc.code, "message": exc.message}
    if job_id:
        msg["jobId"] = job_id
    return msg


def install(app: FastAPI) -> None:
    """Register handlers: DashError by class, validation errors as 422, others as 500."""

    @app.exception_handler(DashError)
    async def _dash(_req: Request, exc: DashError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(error_body(exc), status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
            errors.append({"field": ".".join(loc) or "(body)", "message": e.get("msg", "invalid")})
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        body = InvalidPayload(f"invalid request: {text}", errors=errors)
        return JSONResponse(error_body(body), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def _transient(req: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):  # Redis is down, restarting or full: the client may retry
            log.warning("%s %s: Redis unavailable (%s)", req.method, req.url.path, type(exc).__name__)
            return await _dash(req, Unavailable())
        return await _crash(req, exc)

    for cls in MAYBE_TRANSIENT:
        app.add_exception_handler(cls, _transient)

    @app.exception_handler(Exception)
    async def _crash(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)
