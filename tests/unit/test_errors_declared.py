"""Errors declared once (gateway/errors.py) and the one bearer parser and user-id rule, without
Redis: the OpenAPI document lists each route's error statuses with the error body, derived from
the table; what the handlers emit fits that body; the gateway's Redis records go through
`queues.accounts` (on a fake)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import dash_ray.errors as errs
from dash_ray.errors import DashError, InvalidPayload, JobNotFound, Unauthorized
from dash_ray.gateway import errors
from dash_ray.gateway.auth import TokenAuth, bearer
from dash_ray.gateway.deps import Caller
from dash_ray.models.base import is_user_id
from dash_ray.models.errors import ErrorBody
from dash_ray.queues.accounts import Accounts
from dash_ray.queues.adoption import _user_of
from dash_ray.queues.keys import Keys

SECRET = "unit-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The gateway's OpenAPI document (the app is built, never served: no Redis is reached)."""
    from dash_ray.config import load_settings
    from dash_ray.gateway import GatewayServices, create_app

    settings = load_settings(token_secret=SECRET, data_dir=Path(tmp_path_factory.mktemp("data")))
    services = GatewayServices.create(settings, "redis://127.0.0.1:1", queues=settings.queue_names)
    return create_app(services).openapi()


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": op for path, ops in document["paths"].items() for method, op in ops.items()}


def test_every_error_status_of_every_operation_has_the_error_body(document: dict[str, Any]) -> None:
    ops = _operations(document)
    assert len(ops) >= 15
    for name, op in ops.items():
        for status, response in op["responses"].items():
            if int(status) >= 400 and name != "GET /healthz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (name, status)
    assert "ErrorBody" in document["components"]["schemas"]  # the references above resolve
    assert "HTTPValidationError" not in document["components"]["schemas"]  # 422 is ours, not FastAPI's


def test_statuses_come_from_the_table_the_dependencies_and_the_edge(document: dict[str, Any]) -> None:
    ops = _operations(document)
    submit = ops["POST /v1/jobs/generation"]["responses"]
    assert set(submit) == {"200", "201", "400", "401", "403", "404", "409", "413", "422", "429", "503"}
    assert "`quota_exceeded`" in submit["413"]["description"] and "`too_large`" in submit["413"]["description"]
    get = ops["GET /v1/jobs/{job_id}"]["responses"]
    assert set(get) == {"200", "401", "404", "422", "503"}  # the caller (401), the store (503), its own 404
    assert set(ops["GET /v1/queues"]["responses"]) == {"200", "401", "503"}  # no parameter: no 422
    assert "401" in ops["GET /v1/artifacts/{path}"]["responses"]  # declared by the route (no Caller)
    assert set(ops["GET /metrics"]["responses"]) == {"200", "401", "503"}  # its errors are JSON, its page text
    assert set(ops["GET /healthz"]["responses"]) == {"200", "503"}
    assert ops["GET /healthz"]["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Health"}


def test_declared_errors_reads_the_route_its_dependencies_and_the_method() -> None:
    @errors.raises(JobNotFound)
    async def route(job_id: str, who: Caller) -> None: ...

    assert errors.declared_errors(route, ["GET"], "/v1/x/{job_id}") == {JobNotFound, Unauthorized, InvalidPayload}
    assert errors.BodyTooLarge in errors.declared_errors(route, ["POST"], "/v1/x/{job_id}")
    assert errors.declared_errors(route, ["POST"], "/other") == {JobNotFound, Unauthorized, InvalidPayload}
    assert errors.error_responses([JobNotFound, errs.UnknownQueue])[404]["description"] == \
        "`not_found`, `unknown_queue`"


@pytest.mark.parametrize("exc", [
    errs.InvalidPayload("bad", errors=[{"field": "prompt", "message": "required"}]),
    errs.UnknownQueue("nope"), errs.JobNotFound("j1"), errs.JobConflict("j1"),
    errs.InvalidJobState("j1", "active", "retry"), errs.Unauthorized("no"), errs.Forbidden("no", field="userId"),
    errs.RateLimited("slow down", retry_after_s=3), errs.Unavailable(), errs.QuotaExceeded("full"),
    errs.BodyTooLarge(), errs.BadRequest("There was an error parsing the body"),
])
def test_what_the_handlers_emit_fits_the_error_body(exc: DashError) -> None:
    body = errors.error_body(exc)
    parsed = ErrorBody.model_validate(body)
    assert parsed.error.code == exc.code
    assert json.loads(json.dumps(body)) == body
    assert errors.status_of(exc) == errors.status_of(type(exc)) >= 400


def test_one_bearer_parser() -> None:
    assert bearer("Bearer abc ") == "abc"
    assert bearer("bearer abc") == "abc"
    assert bearer(b"BEARER abc") == "abc"
    assert bearer("Bearer ") == ""
    assert bearer("Basic abc") is None
    assert bearer("") is None and bearer(None) is None


@pytest.mark.parametrize("user", ["alice", "a", "A.b-c_d@e.f", "x" * 128])
def test_a_user_id_is_one_rule_for_tokens_and_adopted_jobs(user: str) -> None:
    assert is_user_id(user)
    auth = TokenAuth(SECRET)
    assert auth.verify(auth.mint(user)).user_id == user
    assert _user_of(json.dumps({"userId": user})) == user


@pytest.mark.parametrize("user", ["", "-alice", ".a", "x" * 129, "a b", "al\x1fice", "alice\n", "ali/ce", 7, None])
def test_an_adopted_job_with_a_user_id_no_token_can_have_has_no_user(user: Any) -> None:
    assert not is_user_id(user)
    assert _user_of(json.dumps({"userId": user})) is None
    if isinstance(user, str):
        with pytest.raises(ValueError):
            TokenAuth(SECRET).mint(user)


class _FakeRedis:
    """What `Accounts` uses of a Redis client, in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def incrby(self, key: str, n: int) -> int:
        self.data[key] = int(self.data.get(key, 0)) + n
        return self.data[key]

    async def decrby(self, key: str, n: int) -> int:
        return await self.incrby(key, -n)

    async def set(self, key: str, value: str, ex: int, nx: bool) -> bool:
        assert ex > 0 and nx
        self.data.setdefault(key, value.encode())
        return True

    async def getdel(self, key: str) -> Any:
        return self.data.pop(key, None)


def test_accounts_keep_tickets_and_upload_bytes_under_the_store_keys() -> None:
    async def go() -> None:
        r, keys = _FakeRedis(), Keys("p")
        accounts = Accounts(r, keys)  # type: ignore[arg-type]
        ticket = await accounts.issue_ticket("alice", True, 30)
        assert keys.ticket(ticket) in r.data
        assert await accounts.redeem_ticket(ticket) == ("alice", True)
        assert await accounts.redeem_ticket(ticket) is None  # one use
        assert await accounts.take_upload("alice", 60, 100)
        assert not await accounts.take_upload("alice", 50, 100)  # over: nothing counted
        assert await accounts.upload_bytes("alice") == 60
        await accounts.give_upload("alice", 60)
        assert await accounts.upload_bytes("alice") == 0
        assert r.data == {keys.upload_bytes("alice"): 0}

    asyncio.run(go())
