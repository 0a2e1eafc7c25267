"""The OpenAPI document is the API's contract: Schemathesis against a gateway served by uvicorn
on 127.0.0.1 (a real Redis), every operation, with a user's token, with an admin's, and with none.
No answer is a server error, and every status, content type and body is one the document declares
(the error responses come from gateway/errors.py's table and each route's `@raises`).

Bounded and deterministic: a fixed number of derandomized examples per operation, token and
generation mode (valid and invalid requests), a few hundred requests in all. Nothing leaves
loopback: only loopback names (and Redis's host) resolve, and every address counts as inside the
network, so each generated webhook URL is refused at submit and no webhook is ever sent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dash_ray.config import load_settings
from dash_ray.services import netguard
from dash_ray.testing import free_port
from tests.redis.conftest import SECRET

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}  # per operation, token and mode
GEN = {"userId": "alice", "prompt": "a red fox"}


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """Names other than loopback's (and Redis's) do not resolve, and no address is one a webhook
    may go to: generated webhook URLs are refused without a lookup leaving this machine."""
    real = socket.getaddrinfo
    known = {"localhost", "127.0.0.1", "::1", urlsplit(redis_url).hostname or "127.0.0.1"}

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name.lower() in known:
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "only loopback resolves in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(netguard, "is_inside", lambda addr: True)


@pytest.fixture
def gateway(redis_url: str, prefix: str, tmp_path: Path, loopback_only: None) -> Iterator[str]:
    """A gateway on a free loopback port (its own thread and loop); yields its base URL."""
    import uvicorn

    from dash_ray.gateway import GatewayServices, create_app

    s = load_settings(key_prefix=prefix, token_secret=SECRET, data_dir=tmp_path / "data",
                      rate_submit="100000/minute", max_prefer_wait_s=1, metrics_token="m" * 32)  # /metrics: 401s
    services = GatewayServices.create(s, redis_url, queues=("training", "upscaling", "generation", "sleep"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, name="contract-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _run(schema: Any, base_url: str, headers: dict[str, str], failures: dict[str, str],
         pinned: Callable[[str], dict[str, str]] | None = None, examples: dict[GenerationMode, int] = EXAMPLES) -> int:
    """Every operation (with `pinned`: those it gives path parameters, with them), each generation
    mode: call and check; failures by kind (the first case of each). Returns the requests sent."""
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        params = pinned(operation.path) if pinned else None
        if pinned and not params:
            continue
        for mode, n in examples.items():
            if mode is GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.headers)
                                                        or len(operation.body)):
                continue  # nothing to get wrong but a path segment, which any string fills
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=params)

            @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case: Any) -> None:
                nonlocal sent
                sent += 1
                response = case.call(base_url=base_url, headers=headers, timeout=15)
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Failure, FailureGroup) as exc:  # a group per case; the first case of each kind
                    key = f"{case.method} {case.path} -> {response.status_code}"
                    failures.setdefault(key, f"{exc}\n  body: {response.text[:300]}")

            check()
    return sent


def test_every_operation_answers_what_the_document_declares(gateway: str) -> None:
    import httpx

    from dash_ray.gateway import TokenAuth

    auth = TokenAuth(SECRET)
    user, admin = auth.mint("alice"), auth.mint("root", admin=True)
    # A real job of the user's, so that the job routes also answer with a job, not only 404s.
    made = httpx.post(f"{gateway}/v1/jobs/generation", json=GEN, headers={"Authorization": f"Bearer {user}"})
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]

    def pinned(path: str) -> dict[str, str]:
        # not the event stream: it follows a job that does not end here until its request's timeout
        return {"job_id": job_id} if "{job_id}" in path and not path.endswith("/events") else {}

    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    failures: dict[str, str] = {}
    sent = 0
    for token in (user, admin):
        headers = {"Authorization": f"Bearer {token}"}
        sent += _run(schema, gateway, headers, failures)
        sent += _run(schema, gateway, headers, failures, pinned)
    sent += _run(schema, gateway, {}, failures, examples={GenerationMode.POSITIVE: 2})  # no token: 401s documented
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    assert sent >= 200, sent
