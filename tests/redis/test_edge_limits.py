"""Limits at the edge, tried the way a hostile client would, against a gateway served by uvicorn
on a real socket (so that what the server reads of a body can be seen): auth before the body,
bodies counted whatever their framing, WebSocket cursors, sockets and message rates bounded."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from dash_ray.config import load_settings
from dash_ray.testing import free_port
from tests.redis.conftest import SECRET

GEN = {"prompt": "a red fox"}


@pytest.fixture
def live(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: the gateway app under uvicorn on a free loopback port (as a replica serves it);
    returns its base URL."""
    from dash_ray.gateway import GatewayServices, create_app

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(redis: str | None = None, **overrides: Any) -> str:
        """`redis`: another Redis's URL than the session's; `overrides`: settings."""
        settings = load_settings(key_prefix=prefix, token_secret=SECRET, data_dir=tmp_path / "data", **overrides)
        app = create_app(GatewayServices.create(settings, redis or redis_url,
                                                queues=("generation", "training", "upscaling", "sleep")))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               ws="websockets-sansio", ws_max_size=settings.max_ws_frame_bytes))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def chunked_post(base: str, path: str, token: str | None, total: int, head: bytes = b"") -> tuple[int, int]:
    """POST `total` bytes chunked (starting with `head`), a 64 KiB chunk at a time, until the
    server answers; returns (status, bytes sent by then)."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
              "Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    if head:
        s.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
    sent = len(head)
    answer = b""
    try:
        while sent < total:
            readable, writable, _ = select.select([s], [s], [], 5)
            if readable:
                answer = s.recv(4096)
                break
            if not writable:
                break
            s.sendall(chunk)
            sent += 65536
        if not answer:
            s.settimeout(5)
            answer = s.recv(4096)
    except (BrokenPipeError, ConnectionResetError):
        answer = answer or s.recv(4096)
    finally:
        s.close()
    return int(answer.split(b" ", 2)[1]), sent


def token(user: str) -> str:
    from dash_ray.gateway import TokenAuth

    return TokenAuth(SECRET).mint(user)


def test_a_tokenless_chunked_body_is_refused_before_it_is_read(live: Any) -> None:
    base = live()
    status, sent = chunked_post(base, "/v1/jobs/generation", None, 100 * 1024 * 1024)
    assert status == 401 and sent < 2 * 1024 * 1024, sent
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(live: Any) -> None:
    base = live(max_body_bytes=1024 * 1024)
    status, sent = chunked_post(base, "/v1/jobs/generation", token("alice"), 100 * 1024 * 1024)
    assert status == 413 and sent < 3 * 1024 * 1024, sent
    r = httpx.post(f"{base}/v1/jobs/generation", json=GEN, headers={"Authorization": f"Bearer {token('alice')}"})
    assert r.status_code == 201, r.text  # and the server goes on serving


def recv(ws: Any) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=10))  # type: ignore[no-any-return]


def test_since_is_bounded_and_a_refused_subscribe_leaves_nothing(live: Any) -> None:
    base = live()
    h = {"Authorization": f"Bearer {token('alice')}"}
    job = httpx.post(f"{base}/v1/jobs/generation", json=GEN, headers=h).json()["id"]
    with ws_connect(base.replace("http", "ws") + "/ws", additional_headers=h) as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job], "since": {job: 2**64}}))
        err = recv(ws)
        assert err["type"] == "error" and err["code"] == "bad_request"
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job], "since": {job: 5}}))  # past its seq 1
        assert recv(ws)["code"] == "invalid_payload"
        assert recv(ws) == {"type": "subscribed", "jobIds": []}
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job]}))
        assert recv(ws)["status"] == "waiting"
        assert recv(ws) == {"type": "subscribed", "jobIds": [job]}
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_sockets_per_user_and_messages_per_socket_are_capped(live: Any) -> None:
    base = live(max_sockets_per_user=2, ws_messages_per_s=5)
    url = base.replace("http", "ws") + "/ws"
    h = {"Authorization": f"Bearer {token('mallory')}"}
    with ws_connect(url, additional_headers=h) as a, ws_connect(url, additional_headers=h):
        with ws_connect(url, additional_headers=h) as third:
            assert recv(third)["code"] == "too_many_sockets"
            with pytest.raises(ConnectionClosed):
                third.recv(timeout=5)
        for _ in range(30):
            a.send(json.dumps({"type": "ping"}))
        answers = [recv(a) for _ in range(30)]
        assert 8 <= sum(m["type"] == "pong" for m in answers) <= 14  # the burst (10), then 5/s
        assert any(m.get("code") == "rate_limited" for m in answers)
        time.sleep(0.5)
        a.send(json.dumps({"type": "ping"}))
        assert recv(a)["type"] == "pong"  # slowed down, it is served again
    with ws_connect(url, additional_headers=h) as again:  # the closed ones no longer count
        again.send(json.dumps({"type": "ping"}))
        assert recv(again)["type"] == "pong"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {token('bob')}"}) as other:
        other.send(json.dumps({"type": "ping"}))
        assert recv(other)["type"] == "pong"


def test_lookups_of_unknown_ids_use_up_the_subscription_budget(live: Any) -> None:
    base = live(ws_ids_per_s=1000)  # the id rate (tests/redis/test_tenancy.py) out of the way
    h = {"Authorization": f"Bearer {token('alice')}"}
    job = httpx.post(f"{base}/v1/jobs/generation", json=GEN, headers=h).json()["id"]
    with ws_connect(base.replace("http", "ws") + "/ws", additional_headers=h) as ws:
        for batch in range(5):
            ws.send(json.dumps({"type": "subscribe", "jobIds": [f"nope-{batch}-{i}" for i in range(200)]}))
            got = [recv(ws) for _ in range(201)]
            assert sum(m.get("code") == "not_found" for m in got) == 200
        ws.send(json.dumps({"type": "subscribe", "jobIds": [job]}))
        assert recv(ws)["code"] == "too_many"


def test_an_oversized_frame_is_refused_by_the_websocket_layer(live: Any) -> None:
    base = live()
    h = {"Authorization": f"Bearer {token('alice')}"}
    with ws_connect(base.replace("http", "ws") + "/ws", additional_headers=h) as ws:
        ws.send("x" * (200 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_the_client_resends_rate_limited_submits_when_asked(live: Callable[..., str]) -> None:
    """`retries=`: a rate-limited submit waits for Retry-After and goes again (the job id it
    carries makes that safe); without it, RateLimited says when to come back."""
    from dash_ray.client import Client, RateLimited
    from dash_ray.gateway import TokenAuth

    base = live(rate_submit="2/second")
    token = TokenAuth(SECRET).mint("patient")
    with Client(base, token) as eager:
        with pytest.raises(RateLimited) as info:
            for _ in range(6):
                eager.submit("sleep", {})
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 2
    time.sleep(1.1)
    with Client(base, token, retries=5) as patient:
        t0 = time.monotonic()
        handles = [patient.submit("sleep", {}) for _ in range(6)]
        took = time.monotonic() - t0
    assert len({h.id for h in handles}) == 6 and took >= 1.0  # it waited, and every submit made one job


def test_a_job_id_cannot_be_taken_over_by_another_user(live: Callable[..., str], redis_url: str, prefix: str) -> None:
    """bob reusing alice's job id: a 409 that says nothing of her job (not its queue, not its
    data), while it lives and after her records expired with BullMQ's job still there; once
    both are gone the id is free and bob gets his own job."""
    import redis as sync_redis

    from dash_ray.gateway import TokenAuth
    from dash_ray.queues import Keys

    base = live()
    auth = TokenAuth(SECRET)
    alice = {"Authorization": f"Bearer {auth.mint('alice')}"}
    bob = {"Authorization": f"Bearer {auth.mint('bob')}"}
    secret_prompt = "alice's secret prompt"
    r = httpx.post(f"{base}/v1/jobs/generation", json={"prompt": secret_prompt, "jobId": "shared-1"}, headers=alice)
    assert r.status_code == 201

    def bob_tries() -> httpx.Response:
        return httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "shared-1"}, headers=bob)

    for attempt in (bob_tries(), httpx.post(f"{base}/v1/jobs/generation",
                                             json={"prompt": secret_prompt, "jobId": "shared-1"}, headers=bob)):
        assert attempt.status_code == 409
        assert "generation" not in attempt.text and "secret" not in attempt.text and "alice" not in attempt.text
    assert httpx.get(f"{base}/v1/jobs/shared-1", headers=bob).status_code == 404
    # Her records expire (as their TTL would) while BullMQ's job is still kept: still nothing.
    keys = Keys(prefix)
    plain = sync_redis.Redis.from_url(redis_url)
    plain.delete(keys.job("shared-1"), keys.events("shared-1"))
    refused = httpx.post(f"{base}/v1/jobs/generation", json={"prompt": "bob's", "jobId": "shared-1"}, headers=bob)
    assert refused.status_code == 409 and "secret" not in refused.text and "generation" not in refused.text
    assert httpx.get(f"{base}/v1/jobs/shared-1", headers=bob).status_code == 404
    # BullMQ's job goes too: the id is free, and bob's job is his own.
    plain.delete(keys.bull("generation", "shared-1"))
    plain.lrem(keys.bull("generation", "wait"), 0, "shared-1")
    plain.zrem(keys.bull("generation", "prioritized"), "shared-1")
    plain.close()
    mine = httpx.post(f"{base}/v1/jobs/generation", json={"prompt": "bob's", "jobId": "shared-1"}, headers=bob)
    assert mine.status_code == 201 and mine.json()["userId"] == "bob" and "secret" not in mine.text
    assert httpx.get(f"{base}/v1/jobs/shared-1", headers=bob).json()["data"]["prompt"] == "bob's"
    assert httpx.get(f"{base}/healthz").status_code == 200


async def test_signed_artifact_links_work_without_a_token_for_one_path_until_they_expire(
        live: Callable[..., str], make_store: Any, make_consumer: Any, tmp_path: Path) -> None:
    from dash_ray.gateway import TokenAuth
    from dash_ray.gateway.auth import UrlSigner
    from dash_ray.services import ArtifactStore
    from tests.helpers import complete, take_one

    base = live()
    artifacts = ArtifactStore(load_settings(data_dir=tmp_path / "data").artifacts_location)
    artifacts.put("alice/art1/image-0.png", b"\x89PNG alice's image")
    artifacts.put("alice/art1/image-1.png", b"\x89PNG another image")
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "art1"})
    consumer = make_consumer("sleep", store)
    await complete(consumer, await take_one(consumer), {"images": ["/v1/artifacts/alice/art1/image-0.png"]})
    alice = {"Authorization": f"Bearer {TokenAuth(SECRET).mint('alice')}"}
    link = httpx.get(f"{base}/v1/jobs/art1", headers=alice).json()["result"]["images"][0]
    assert link.startswith("/v1/artifacts/alice/art1/image-0.png?exp=") and "&sig=" in link
    got = httpx.get(base + link)  # no token: the link is the credential
    assert got.status_code == 200 and got.content == b"\x89PNG alice's image"
    other_path = link.replace("image-0.png", "image-1.png")
    # A link that is not signed right is no credential: without a token, 401.
    assert httpx.get(base + other_path).status_code == 401  # signed for one path only
    assert httpx.get(base + link.replace("&sig=", "&sig=x")).status_code == 401
    later = link.split("?")[0] + f"?exp={int(time.time()) + 10**6}&" + link.split("&")[1]
    assert httpx.get(base + later).status_code == 401  # a longer life is a different signature
    expired = UrlSigner(SECRET, ttl_s=-5).sign("/v1/artifacts/alice/art1/image-0.png")
    assert httpx.get(base + expired).status_code == 401  # signed right, but past its time
    assert httpx.get(f"{base}/v1/artifacts/alice/art1/image-0.png").status_code == 401
    # the socket's events carry signed links too
    ticket = httpx.post(f"{base}/v1/ws-ticket", headers=alice).json()["ticket"]
    with ws_connect(f"ws://{base.removeprefix('http://')}/ws?ticket={ticket}") as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": ["art1"]}))
        first = json.loads(ws.recv(timeout=10))
    assert first["type"] == "job:completed" and "&sig=" in first["result"]["images"][0]
    assert httpx.get(base + first["result"]["images"][0]).status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_a_websocket_ticket_works_once_and_tokens_are_checked_for_audience_issuer_and_lifetime(
        live: Callable[..., str]) -> None:
    from dash_ray.gateway import TokenAuth

    base = live(token_audience="dash-api", token_issuer="accounts.example")
    ours = TokenAuth(SECRET, audience="dash-api", issuer="accounts.example")
    header = {"Authorization": f"Bearer {ours.mint('alice')}"}
    assert httpx.post(f"{base}/v1/ws-ticket").status_code == 401
    answer = httpx.post(f"{base}/v1/ws-ticket", headers=header).json()
    assert answer["expiresIn"] == 30
    ws_base = f"ws://{base.removeprefix('http://')}/ws"
    with ws_connect(f"{ws_base}?ticket={answer['ticket']}") as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"
    with ws_connect(f"{ws_base}?ticket={answer['ticket']}") as ws:  # used: refused
        assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    # tokens: another audience or issuer, none at all, or made to live too long
    for bad in (TokenAuth(SECRET).mint("alice"),
                TokenAuth(SECRET, audience="other", issuer="accounts.example").mint("alice"),
                TokenAuth(SECRET, audience="dash-api", issuer="elsewhere").mint("alice"),
                TokenAuth(SECRET, audience="dash-api", issuer="accounts.example",
                          max_lifetime_s=10**9).mint("alice", ttl_s=60 * 24 * 3600),
                TokenAuth(SECRET, audience="dash-api", issuer="accounts.example",
                          max_admin_lifetime_s=10**9).mint("root", admin=True, ttl_s=3 * 24 * 3600)):
        r = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, r.text
    assert httpx.get(f"{base}/v1/jobs", headers=header).status_code == 200
    admin = ours.mint("root", admin=True)  # admin tokens live 8 h unless asked otherwise
    assert httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    with pytest.raises(ValueError):
        ours.mint("root", admin=True, ttl_s=2 * 24 * 3600)
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_fair_limits_on_attempts_backoff_compute_priority_and_retries(live: Callable[..., str]) -> None:
    """Each limit answers with a clear 4xx naming the field and the variable; the server keeps serving."""
    from dash_ray.gateway import TokenAuth

    base = live(rate_submit="4/minute", max_waiting_per_user=50)
    auth = TokenAuth(SECRET)
    alice = {"Authorization": f"Bearer {auth.mint('alice')}"}

    def post(queue: str, body: dict[str, Any], headers: dict[str, str] = alice) -> httpx.Response:
        return httpx.post(f"{base}/v1/jobs/{queue}", json=body, headers=headers)

    too_many = post("generation", {**GEN, "options": {"attempts": 50}})
    assert too_many.status_code == 422 and "DASH_MAX_ATTEMPTS" in too_many.text
    eager = post("generation", {**GEN, "options": {"backoff": {"delayS": 0}}})
    assert eager.status_code == 422 and "DASH_MIN_BACKOFF_S" in eager.text
    huge = post("generation", {**GEN, "settings": {"steps": 150, "width": 2048, "height": 2048, "numImages": 8}})
    assert huge.status_code == 422 and "megapixel-steps" in huge.text
    png = "data:image/png;base64," + "A" * 16
    big_training = post("training", {"prompt": "sks", "imageUrls": [png] * 64,
                                     "settings": {"epochs": 1000, "resolution": 1024}})
    assert big_training.status_code == 422 and "megapixel-epochs" in big_training.text
    # priority 1 on training: one unfinished job per user; an admin is not limited
    small = {"prompt": "sks", "imageUrls": [png], "settings": {"epochs": 1, "resolution": 64},
             "options": {"priority": 1}}
    assert post("training", {**small, "loraId": "hi-1"}).status_code == 201
    second = post("training", {**small, "loraId": "hi-2"})
    assert second.status_code == 429 and "DASH_HIGH_PRIORITY_PER_USER" in second.text
    root = {"Authorization": f"Bearer {auth.mint('root', admin=True)}"}
    assert post("training", {**small, "loraId": "hi-3"}, root).status_code == 201
    # a retry counts against the submission rate: alice has used 3 of her 4 a minute (hi-1; hi-2,
    # refused by the store, which takes the priority-1 share atomically with the job; r-1)
    assert post("generation", {**GEN, "jobId": "r-1"}).status_code == 201
    assert httpx.delete(f"{base}/v1/jobs/r-1", headers=alice).status_code == 200
    answers = [httpx.post(f"{base}/v1/jobs/r-1/retry", headers=alice) for _ in range(3)]
    # (a job cancelled while waiting is gone from its queue: 409) each try counts, the second is over
    assert [a.status_code for a in answers] == [409, 429, 429]
    assert answers[2].headers.get("retry-after")
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_a_model_of_the_wrong_kind_is_a_422_and_metrics_can_want_a_token(live: Callable[..., str]) -> None:
    from dash_ray.gateway import TokenAuth

    base = live(metrics_token="metrics-token-0123456789")
    alice = {"Authorization": f"Bearer {TokenAuth(SECRET).mint('alice')}"}
    png = "data:image/png;base64," + "A" * 16
    up = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": png, "model": "tiny"}, headers=alice)
    assert up.status_code == 422 and "needs an upscaler model" in up.text
    gen = httpx.post(f"{base}/v1/jobs/generation", json={**GEN, "settings": {"model": "tiny-upscaler"}},
                     headers=alice)
    assert gen.status_code == 422 and "needs a text-to-image model" in gen.text
    assert httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": png, "model": "tiny-upscaler"},
                      headers=alice).status_code == 201
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers=alice).status_code == 401  # a user token is not it
    ok = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert ok.status_code == 200 and "dash_" in ok.text


def test_images_by_reference_uploads_owner_checked_inline_images_small_lists_without_data(
        live: Callable[..., str]) -> None:
    import base64

    from dash_ray.gateway import TokenAuth
    from tests.workers.conftest import giant_png, png_data_url

    base = live(upload_quota_bytes=1024, max_inline_image_bytes=2048)
    auth = TokenAuth(SECRET)
    alice = {"Authorization": f"Bearer {auth.mint('alice')}"}
    bob = {"Authorization": f"Bearer {auth.mint('bob')}"}
    png = base64.b64decode(png_data_url().split(",", 1)[1])
    assert httpx.post(f"{base}/v1/uploads", content=png).status_code == 401
    up = httpx.post(f"{base}/v1/uploads", content=png, headers={**alice, "Content-Type": "text/plain"})
    assert up.status_code == 201, up.text
    info = up.json()
    assert info["url"].startswith("upload://") and info["contentType"] == "image/png"
    assert (info["width"], info["height"], info["bytes"]) == (32, 24, len(png))
    mine = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": info["url"]}, headers=alice)
    assert mine.status_code == 201
    theirs = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": info["url"]}, headers=bob)
    assert theirs.status_code == 422 and "no such upload of yours" in theirs.text
    made_up = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": "upload://" + "0" * 32}, headers=alice)
    assert made_up.status_code == 422
    not_image = httpx.post(f"{base}/v1/uploads", content=b"#!/bin/sh\nrm -rf /\n" * 4, headers=alice)
    assert not_image.status_code == 422 and "not an image" in not_image.text
    bomb = httpx.post(f"{base}/v1/uploads", content=giant_png(), headers=alice)  # 100 MP in a tiny file
    assert bomb.status_code == 422 and "pixels" in bomb.text
    # the quota (1 KiB here): a few small uploads, then 413
    statuses = [httpx.post(f"{base}/v1/uploads", content=png, headers=alice).status_code for _ in range(40)]
    assert 201 in statuses and statuses[-1] == 413
    # inline images stay small; a huge inline image is cut off at the edge
    small = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": png_data_url()}, headers=alice)
    assert small.status_code == 201
    big_inline = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 4000).decode()
    refused = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": big_inline}, headers=alice)
    assert refused.status_code == 422 and "POST /v1/uploads" in refused.text
    huge = httpx.post(f"{base}/v1/jobs/upscaling", headers=alice,
                      json={"imageUrl": "data:image/png;base64," + "A" * (30 * 1024 * 1024)})
    assert huge.status_code == 413
    # list views leave the payload out unless asked
    listed = httpx.get(f"{base}/v1/jobs", headers=alice).json()["jobs"]
    assert listed and all("data" not in j for j in listed)
    full = httpx.get(f"{base}/v1/jobs", params={"include": "data"}, headers=alice).json()["jobs"]
    assert all("data" in j for j in full)
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_only_admins_list_every_users_jobs(live: Callable[..., str]) -> None:
    from dash_ray.gateway import TokenAuth

    base = live()
    auth = TokenAuth(SECRET)
    for user in ("ann", "ben"):
        r = httpx.post(f"{base}/v1/jobs/generation", json=GEN, headers={"Authorization": f"Bearer {auth.mint(user)}"})
        assert r.status_code == 201
    ann = {"Authorization": f"Bearer {auth.mint('ann')}"}
    assert httpx.get(f"{base}/v1/jobs", params={"userId": "*"}, headers=ann).status_code == 403
    root = {"Authorization": f"Bearer {auth.mint('root', admin=True)}"}
    users = [j["userId"] for j in httpx.get(f"{base}/v1/jobs", params={"userId": "*"}, headers=root).json()["jobs"]]
    assert users[:2] == ["ben", "ann"]


def test_a_chunked_upload_over_the_image_limit_is_cut_off_and_counts_nothing(live: Any, redis_url: str,
                                                                              prefix: str) -> None:
    """Uploads have a larger body limit than JSON (one image): past it, 413 while the body is
    still arriving, and nothing is stored or counted against the quota."""
    import redis as sync_redis

    from dash_ray.queues import Keys

    base = live(max_image_bytes=2 * 1024 * 1024)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 8  # looks like an image: read on, to the size limit
    status, sent = chunked_post(base, "/v1/uploads", token("alice"), 100 * 1024 * 1024, head=png)
    assert status == 413 and sent < 5 * 1024 * 1024, sent
    # not an image: refused at its first bytes, not read to the limit
    status, sent = chunked_post(base, "/v1/uploads", token("alice"), 100 * 1024 * 1024)
    assert status == 422 and sent < 1024 * 1024, sent
    plain = sync_redis.Redis.from_url(redis_url)
    assert plain.get(Keys(prefix).upload_bytes("alice")) is None
    plain.close()
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
