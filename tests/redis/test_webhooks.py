"""Webhooks from the outside: a real receiver on 127.0.0.1, the gateway's sender, jobs finished
the way the scheduler finishes them. Signed (Standard Webhooks), retried until answered 2xx,
sent once more per event at most after that; refused inside the network unless allowed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dash_ray.client import verify_webhook
from tests.helpers import WebhookReceiver
from tests.redis.test_gateway import auth, run_one

LOOPBACK = {"webhook_allowed_networks": "127.0.0.0/8", "webhook_retry_s": 0.2}


def submit(client: Any, token: str, hook: dict[str, Any], **body: Any) -> Any:
    return client.post("/v1/jobs/sleep", json={"durationS": 0.1, **body, "options": {"webhook": hook}},
                       headers=auth(token))


def test_completed_is_signed_and_retried_until_the_receiver_answers_200(make_client: Any, tokens: Any,
                                                                        redis_url: str, prefix: str) -> None:
    answers = iter([500, 503])
    client = make_client(**LOOPBACK)
    token = tokens("alice")
    with WebhookReceiver(lambda: next(answers, 200)) as rx:
        r = submit(client, token, {"url": rx.url})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        run_one(redis_url, prefix, "sleep", result={"ok": 1})
        got = rx.wait(lambda g: any(s == 200 for _, _, s in g))
        time.sleep(1.0)  # nothing more comes once it is delivered
        got = rx.received()
    assert [s for _, _, s in got] == [500, 503, 200]
    secret = client.get("/v1/webhooks/secret", headers=auth(token)).json()["secret"]
    assert secret.startswith("whsec_")
    ids = set()
    for headers, body, _ in got:
        event = verify_webhook(secret, headers, body)
        assert event["type"] == "job:completed" and event["jobId"] == job_id and event["result"] == {"ok": 1}
        ids.add(headers["webhook-id"])
    assert ids == {f"{job_id}:{event['seq']}"}  # one delivery, retried: receivers de-duplicate by it
    # another user's secret does not verify it, nor does a changed body
    other = client.get("/v1/webhooks/secret", headers=auth(tokens("bob"))).json()["secret"]
    headers, body, _ = got[-1]
    for bad_secret, bad_body in ((other, body), (secret, body.replace("job:completed", "job:failed"))):
        with pytest.raises(ValueError, match="signature"):
            verify_webhook(bad_secret, headers, bad_body)
    text = client.get("/metrics").text
    assert 'outcome="retried"} 2' in text and 'outcome="delivered"} 1' in text
    admin = client.get("/v1/webhooks/dead", headers=auth(tokens("root", admin=True))).json()
    assert admin["pending"] == 0 and admin["dead"] == []
    assert client.get("/v1/webhooks/dead", headers=auth(token)).status_code == 403


def test_progress_and_failed_are_sent_when_asked_and_progress_is_the_latest(make_client: Any, tokens: Any,
                                                                            redis_url: str, prefix: str) -> None:
    client = make_client(**LOOPBACK)
    token = tokens("alice")
    with WebhookReceiver() as rx:
        r = submit(client, token, {"url": rx.url, "events": ["progress", "failed"]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        run_one(redis_url, prefix, "sleep", steps=20, fail="out of memory")
        # each delivery goes on its own: the failure may arrive before the latest progress
        got = rx.wait(lambda g: {json.loads(b)["type"] for _, b, _ in g} >= {"job:progress", "job:failed"})
    events = [json.loads(b) for _, b, _ in got]
    assert {e["type"] for e in events} == {"job:progress", "job:failed"}
    assert all(e["jobId"] == job_id for e in events)
    assert 1 <= sum(e["type"] == "job:progress" for e in events) < 20  # the latest, not every step
    assert next(e for e in events if e["type"] == "job:failed")["error"] == "out of memory"


def test_a_webhook_inside_the_network_is_refused_unless_allowed(make_client: Any, tokens: Any) -> None:
    token = tokens("alice")
    closed = make_client()
    for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://[::1]:80/x", "http://localhost/x",
                "http://169.254.169.254/latest/meta-data"):
        r = submit(closed, token, {"url": url})
        assert r.status_code == 422, (url, r.text)
        [err] = r.json()["error"]["errors"]
        assert err["field"] == "options.webhook.url" and "DASH_WEBHOOK_ALLOWED_NETWORKS" in err["message"]
    for bad in ({"url": "ftp://example.com/x"}, {"url": "http://user:pw@example.com/x"},
                {"url": "http://example.com/a b"}, {"url": "http://example.com/", "events": ["everything"]},
                {"url": "http://example.com/", "events": []}):
        assert submit(closed, token, bad).status_code == 422, bad
    opened = make_client(webhook_allowed_networks="127.0.0.0/8")
    assert submit(opened, token, {"url": "http://127.0.0.1:9/hook"}).status_code == 201
    assert submit(opened, token, {"url": "http://10.1.2.3/hook"}).status_code == 422


def test_a_destination_checked_again_at_send_time_and_a_receiver_gone_for_good(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """A job whose webhook was allowed when submitted but no longer is (the operator closed the
    network, or the name now points inside) is dropped at send time, not sent; a receiver that
    answers 410 Gone gets no retries. Both land in the dead list."""
    token = tokens("alice")
    with WebhookReceiver(lambda: 410) as rx:
        opened = make_client(**LOOPBACK)
        r = submit(opened, token, {"url": rx.url})
        assert r.status_code == 201
        gone_id = r.json()["id"]
        run_one(redis_url, prefix, "sleep")
        rx.wait(lambda g: len(g) >= 1)
        opened.__exit__(None, None, None)  # that replica stops; one that does not allow loopback sends
        closed = make_client(webhook_retry_s=0.2)
        r = closed.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=auth(token))  # the next job taken
        assert r.status_code == 201
        run_one(redis_url, prefix, "sleep")
        admin = auth(tokens("root", admin=True))
        reopened = make_client(**LOOPBACK)  # allowed at submit, then that replica goes
        r = submit(reopened, token, {"url": rx.url})
        assert r.status_code == 201
        refused_id = r.json()["id"]
        reopened.__exit__(None, None, None)
        run_one(redis_url, prefix, "sleep")
        deadline = time.monotonic() + 20
        while True:
            dead = {d["id"].split(":")[0]: d for d in closed.get("/v1/webhooks/dead", headers=admin).json()["dead"]}
            if refused_id in dead or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(rx.received()) == 1  # the 410, once; nothing sent for the refused one
    assert dead[gone_id]["why"] == "HTTP 410" and dead[gone_id]["tries"] == 1
    assert "private address" in dead[refused_id]["why"]
    # refused for good: a replay of the newest leaves them; named, one is sent again
    assert closed.post("/v1/webhooks/dead/replay", headers=admin).json()["replayed"] == []
    gone = dead[gone_id]["id"]
    r = closed.post("/v1/webhooks/dead/replay", json={"ids": [gone]}, headers=admin)
    assert [d["id"] for d in r.json()["replayed"]] == [gone], r.text


def test_a_receiver_that_hangs_is_cut_off_and_tried_again(make_client: Any, tokens: Any, redis_url: str,
                                                          prefix: str) -> None:
    """A receiver that never answers in time holds no sender: the send is cut at
    DASH_WEBHOOK_TIMEOUT_S and retried, until it answers."""
    calls = []

    def answer() -> int:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(2.0)  # past the timeout
        return 200

    client = make_client(**LOOPBACK, webhook_timeout_s=0.5)
    with WebhookReceiver(answer) as rx:
        assert submit(client, tokens("alice"), {"url": rx.url}).status_code == 201
        run_one(redis_url, prefix, "sleep")
        rx.wait(lambda g: len(g) >= 2)
    assert len(calls) >= 2 and calls[1] - calls[0] < 5  # the second came without waiting out the first


def test_shared_site_local_6to4_and_nat64_addresses_are_refused_and_no_address_is_named(
        make_client: Any, tokens: Any) -> None:
    token = tokens("alice")
    closed = make_client()
    for url in ("http://100.64.0.1/hook", "http://100.127.255.254/hook", "http://[fec0::1]/hook",
                "http://[2002:7f00:1::1]/hook", "http://[2002:808:808::1]/hook", "http://[64:ff9b::7f00:1]/hook",
                "http://[64:ff9b::a00:1]/hook", "http://[::ffff:100.64.0.1]/hook"):
        r = submit(closed, token, {"url": url})
        assert r.status_code == 422, (url, r.text)
        [err] = r.json()["error"]["errors"]
        assert err["field"] == "options.webhook.url" and "DASH_WEBHOOK_ALLOWED_NETWORKS" in err["message"]
    r = submit(closed, token, {"url": "http://localhost/hook"})
    assert r.status_code == 422
    assert not any(a in r.text for a in ("127.0.0.1", "::1")), r.text  # what a name resolves to stays inside


def test_a_webhook_port_out_of_range_is_a_422_at_submit(make_client: Any, tokens: Any) -> None:
    client = make_client()
    for url in ("http://example.com:99999/hook", "https://example.com:0/hook", "http://example.com:-1/hook",
                "http://example.com:http/hook"):
        r = client.post("/v1/jobs/generation", json={"prompt": "a red fox", "options": {"webhook": {"url": url}}},
                        headers=auth(tokens("alice")))
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["errors"][0]["field"] == "options.webhook.url", r.text


def test_given_up_deliveries_are_replayed_once_by_an_admin(make_client: Any, tokens: Any, redis_url: str,
                                                           prefix: str) -> None:
    """A receiver down for longer than the retries lands its delivery in the dead list; back up,
    an admin replays it: sent again (the same event, the same webhook-id), gone from the list,
    recorded in the audit trail. Two admins replaying at once replay it once; a user gets 403."""
    from concurrent.futures import ThreadPoolExecutor

    up = {"ok": False}
    client = make_client(**LOOPBACK, webhook_max_attempts=2)
    token, admin = tokens("alice"), auth(tokens("root", admin=True))
    with WebhookReceiver(lambda: 200 if up["ok"] else 503) as rx:
        job_id = submit(client, token, {"url": rx.url}).json()["id"]
        run_one(redis_url, prefix, "sleep", result={"ok": 1})
        deadline = time.monotonic() + 20
        while not (dead := client.get("/v1/webhooks/dead", headers=admin).json()["dead"]):
            assert time.monotonic() < deadline, "the delivery was never given up"
            time.sleep(0.05)
        [record] = dead
        assert record["id"].startswith(f"{job_id}:") and record["tries"] == 2 and "body" not in record
        assert client.post("/v1/webhooks/dead/replay", headers=auth(token)).status_code == 403
        up["ok"] = True
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/webhooks/dead/replay", json={"ids": [record["id"]]},
                                                          headers=admin), range(2)))
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert sorted(len(r.json()["replayed"]) for r in answers) == [0, 1]
        got = rx.wait(lambda g: any(s == 200 for _, _, s in g))
        assert [s for _, _, s in got] == [503, 503, 200]
        headers, body, _ = got[-1]
        assert headers["webhook-id"] == record["id"] and json.loads(body)["type"] == "job:completed"
        assert client.get("/v1/webhooks/dead", headers=admin).json()["dead"] == []
        assert client.post("/v1/webhooks/dead/replay", headers=admin).json()["replayed"] == []
    trail = client.get("/v1/audit", headers=admin).json()["entries"]
    replays = [e for e in trail if e["action"] == "webhook.replay"]
    assert len(replays) == 1 and replays[0]["target"] == record["id"], replays
