"""The client's exceptions: one per kind of answer, each carrying the server's status, code and message."""

from __future__ import annotations

from typing import Any

from dash_ray.errors import DashError

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "InvalidPayload",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "error_from",
]


class ApiError(DashError):
    """The server answered with an error: `status` (HTTP, 0 for a WebSocket error), `code`
    (stable, machine-readable) and the server's `message`; `body` is its whole error object."""

    code = "api_error"

    def __init__(self, message: str, *, status: int = 0, code: str | None = None,
                 body: dict[str, Any] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.status = status
        if code:
            self.code = code
        self.body = body or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.status} " if self.status else ""
        return f"{where}{self.code}: {self.message}"


class InvalidPayload(ApiError):
    """400/422: the payload or an option is invalid; `errors` names each field and why."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Each bad field and why, as the server listed them."""
        return list(self.body.get("errors") or [])


class Unauthorized(ApiError):
    """401: no token, or a token that is invalid or expired."""


class Forbidden(ApiError):
    """403: the token may not do this (admin only, another user's id)."""


class NotFound(ApiError):
    """404: no such job (or not yours), queue or artifact."""


class Conflict(ApiError):
    """409: the job id is taken by another payload, or the job is in the wrong state."""


class RateLimited(ApiError):
    """429: too many requests or open jobs; `retry_after` says when to try again (seconds)."""


class Unavailable(ApiError):
    """503: the server cannot reach Redis right now; `retry_after` says when to try again."""


class ServerError(ApiError):
    """5xx other than 503."""


class JobFailed(ApiError):
    """A job ended `failed` or `cancelled`; `job` is its final view and `message` its error."""

    def __init__(self, job: Any) -> None:
        super().__init__(job.error or job.status, code=job.status, body={"jobId": job.id})
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidPayload, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: InvalidPayload,
    422: InvalidPayload, 429: RateLimited, 503: Unavailable,
}
_BY_CODE: dict[str, type[ApiError]] = {
    "invalid_payload": InvalidPayload, "bad_request": InvalidPayload, "unauthorized": Unauthorized,
    "forbidden": Forbidden, "not_found": NotFound, "unknown_queue": NotFound, "conflict": Conflict,
    "invalid_state": Conflict, "rate_limited": RateLimited, "unavailable": Unavailable,
}


def error_from(status: int, body: Any, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer: by HTTP status, or (WebSocket, status 0) by code."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        err = {}
    code = str(err.get("code") or "")
    message = str(err.get("message") or body or f"HTTP {status}")
    cls = _BY_STATUS.get(status) or _BY_CODE.get(code) or (ServerError if status >= 500 else ApiError)
    try:
        after = float(retry_after) if retry_after is not None else None
    except ValueError:
        after = None
    return cls(message, status=status, code=code or None, body=err, retry_after=after)
