"""The one place where errors become HTTP statuses and WebSocket error messages, and where the
OpenAPI document learns them.

`STATUS` maps each error to its status. A route declares the errors it raises itself (`@raises`);
those of its dependencies (the caller's token, the job store) and of the edge (a body's size, the
token checked before the body) are added for it, and `DocumentedRoute` lists each resulting
status with the error body (`ErrorBody`) as the operation's responses: no status is written by
hand per route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Body, Depends
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response

from dash_ray.errors import (
    BadRequest,
    BodyTooLarge,
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
from dash_ray.models.errors import ErrorBody
from dash_ray.queues import MAYBE_TRANSIENT, is_transient

__all__ = [
    "EDGE_AUTH_METHODS",
    "STATUS",
    "DocumentedRoute",
    "dash_response",
    "declared_errors",
    "error_body",
    "error_responses",
    "install",
    "invalid_response",
    "raises",
    "status_of",
    "unexpected_response",
    "ws_error",
]

log = logging.getLogger(__name__)

STATUS: dict[type[DashError], int] = {
    BadRequest: 400,
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
    BodyTooLarge: 413,
    ConfigError: 500,
}

# Requests the edge (app._Edge) authenticates before their body is read: those with a body, to the API.
EDGE_AUTH_METHODS = frozenset({"POST", "PUT", "PATCH"})

F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: DashError | type[DashError]) -> int:
    """The HTTP status of an error (or of an error class)."""
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def raises(*errors: type[DashError]) -> Callable[[F], F]:
    """Declare the errors an endpoint, or a dependency of endpoints, may raise: the route's error
    responses in OpenAPI (see `DocumentedRoute`)."""

    def declare(fn: F) -> F:
        fn.__dash_raises__ = (*getattr(fn, "__dash_raises__", ()), *errors)  # type: ignore[attr-defined]
        return fn

    return declare


def _validated(hint: Any) -> bool:
    """True if FastAPI validates a parameter of this type (not a request, socket or response)."""
    base = get_args(hint)[0] if get_origin(hint) is Annotated else hint
    return not (isinstance(base, type) and issubclass(base, HTTPConnection | Response))


def _body(hint: Any) -> bool:
    """True for a parameter FastAPI reads from a JSON body (a model, or `Body()`)."""
    if get_origin(hint) is Annotated:
        base, *meta = get_args(hint)
        return any(isinstance(m, Body) for m in meta) or _body(base)
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def declared_errors(endpoint: Callable[..., Any], methods: Iterable[str], path: str) -> set[type[DashError]]:
    """What a route can answer besides success: the errors it declares, those its dependencies
    declare (`Depends` in its parameters' annotations), InvalidPayload (422) when it takes
    parameters FastAPI validates (and BadRequest (400) when one is a JSON body), and the edge's (a
    token and the body's size) for a request with a body to the API."""
    found: set[type[DashError]] = set(getattr(endpoint, "__dash_raises__", ()))
    for name, hint in get_type_hints(endpoint, include_extras=True).items():
        if name == "return":
            continue
        deps = [m.dependency for m in get_args(hint)[1:] if isinstance(m, Depends)] \
            if get_origin(hint) is Annotated else []
        for dep in deps:
            found.update(getattr(dep, "__dash_raises__", ()))
        if not deps and _validated(hint):
            found.add(InvalidPayload)
        if _body(hint):
            found.add(BadRequest)  # a body that is not text is refused before it is validated
    if EDGE_AUTH_METHODS & {m.upper() for m in methods} and path.startswith("/v1/"):
        found.update((Unauthorized, BodyTooLarge))
    return found


_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def error_responses(errors: Iterable[type[DashError]], by_ref: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these errors: each status once, with the error body's model and
    the codes it may carry. `by_ref`: the body as a JSON reference to the model, for a route
    whose own answers are not JSON (FastAPI would file the model under their media type)."""
    codes: dict[int, set[str]] = {}
    for cls in errors:
        codes.setdefault(status_of(cls), set()).add(cls.code)
    body: dict[str, Any] = {"content": _ERROR_JSON} if by_ref else {"model": ErrorBody}
    return {status: {**body, "description": ", ".join(f"`{c}`" for c in sorted(codes[status]))}
            for status in sorted(codes)}


class DocumentedRoute(APIRoute):
    """An API route whose OpenAPI operation lists the error responses of `declared_errors` (a
    response the route declares itself for a status wins)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        errors = declared_errors(endpoint, kwargs.get("methods") or ["GET"], path)
        media = getattr(kwargs.get("response_class"), "media_type", None)  # None: JSON's (FastAPI's default)
        by_ref = media not in (None, "application/json")
        kwargs["responses"] = {**error_responses(errors, by_ref), **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)


def error_body(exc: DashError) -> dict[str, object]:
    """`{"error": {"code", "message", ...}}`."""
    return {"error": exc.to_dict()}


def ws_error(exc: DashError, job_id: str | None = None) -> dict[str, object]:
    """The WebSocket `error` message of an error."""
    msg: dict[str, object] = {"type": "error", "code": exc.code, "message": exc.message}
    if job_id:
        msg["jobId"] = job_id
    return msg


def dash_response(exc: DashError) -> JSONResponse:
    """The answer to a DashError: its status, body and headers (Retry-After, WWW-Authenticate)."""
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(exc), status_code=status_of(exc), headers=headers)


def invalid_response(found: Iterable[Any]) -> JSONResponse:
    """422 for pydantic's errors of a request (FastAPI's, whose locations start with `body`, or a
    model's own)."""
    errors = []
    for e in found:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        errors.append({"field": ".".join(loc) or "(body)", "message": e.get("msg", "invalid")})
    text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    body = InvalidPayload(f"invalid request: {text}", errors=errors)
    return JSONResponse(error_body(body), status_code=422)


def unexpected_response(method: str, path: str, exc: Exception) -> JSONResponse:
    """503 for Redis away for a moment (the client may retry), else 500 (logged)."""
    if is_transient(exc):  # Redis is down, restarting or full
        log.warning("%s %s: Redis unavailable (%s)", method, path, type(exc).__name__)
        return dash_response(Unavailable())
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)


def install(app: FastAPI) -> None:
    """Register handlers: DashError by class, validation errors as 422, others as 500."""

    @app.exception_handler(DashError)
    async def _dash(_req: Request, exc: DashError) -> JSONResponse:
        return dash_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(req.method, req.url.path, exc)

    for cls in MAYBE_TRANSIENT:
        app.add_exception_handler(cls, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
