"""Fuzzing: schemathesis against the OpenAPI spec, hypothesis on socket frames. Never a 5xx; others unharmed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.redis.test_gateway import GEN, auth


@pytest.fixture
def api(make_client: Any, tokens: Any) -> Any:
    client = make_client(ws_messages_per_s=100_000)  # the fuzzer sends as fast as it can (limits: test_edge_limits)
    client.token = tokens("fuzzer")  # type: ignore[attr-defined]
    return client


def test_rest_never_answers_5xx(api: Any) -> None:
    """Every operation of the OpenAPI spec, fed schemathesis' generated (and mutated) requests."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(f"{operation.method.upper()} {operation.path}")

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers=auth(api.token))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        check()
    assert len(tried) >= 10, tried


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "x"])},
                          optional={"jobIds": json_values, "since": json_values}).map(json.dumps),
)


def test_fuzzed_socket_frames_never_break_the_socket_or_others(api: Any) -> None:
    job_id = api.post("/v1/jobs/generation", json=GEN | {"userId": "fuzzer"}, headers=auth(api.token)).json()["id"]
    with api.websocket_connect(f"/ws?token={api.token}") as bystander:
        bystander.send_json({"type": "subscribe", "jobIds": [job_id]})
        assert bystander.receive_json()["jobId"] == job_id
        bystander.receive_json()  # subscribed

        with api.websocket_connect(f"/ws?token={api.token}") as ws:

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(frame=frames)
            def one(frame: str | bytes) -> None:
                if isinstance(frame, bytes):
                    ws.send_bytes(frame)
                else:
                    ws.send_text(frame)
                ws.send_json({"type": "ping"})
                for _ in range(400):  # whatever the frame caused, then our pong
                    msg = ws.receive_json()
                    assert msg["type"] in ("error", "pong", "subscribed", "job:progress", "job:completed", "job:failed")
                    if msg["type"] == "pong":
                        return
                raise AssertionError("no pong")

            one()
        bystander.send_json({"type": "ping"})
        assert bystander.receive_json()["type"] == "pong"
    assert api.get("/healthz").status_code == 200
