"""Webhooks against hostile receivers and racing senders: a tarpit that drips its answer is cut
at DASH_WEBHOOK_DEADLINE_S and holds at most DASH_WEBHOOK_PER_DESTINATION senders, so other
receivers' deliveries go on; a claimed delivery is claimed by no other sender, and a sender whose
lease ran out settles nothing (its claim is fenced by a token)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from dash_ray.queues import WebhookOutbox
from tests.helpers import WebhookReceiver
from tests.redis.test_gateway import auth, run_one
from tests.tarpit import Tarpit

HOOK_URL = "http://example.com/hook"
HOOK: dict[str, Any] = {"url": HOOK_URL, "events": ["progress"]}


def submit(client: Any, token: str, url: str) -> str:
    r = client.post("/v1/jobs/sleep", json={"durationS": 0.1, "options": {"webhook": {"url": url}}},
                    headers=auth(token))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_tarpit_receiver_is_cut_at_the_deadline_and_stalls_no_other_receiver(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """Two senders in all, one per destination: three deliveries to a tarpit (whose drip beats
    the per-read timeout) hold one sender, each send cut at the deadline and retried; another
    user's receiver gets its delivery meanwhile, before the tarpit's first send is even cut."""
    deadline_s = 2.0
    client = make_client(webhook_allowed_networks="127.0.0.0/8", webhook_retry_s=0.2, webhook_timeout_s=5,
                         webhook_deadline_s=deadline_s, webhook_concurrency=2, webhook_per_destination=1)
    with Tarpit(drip_s=0.2) as pit, WebhookReceiver() as rx:
        for _ in range(3):
            submit(client, tokens("mallory"), pit.url)
            run_one(redis_url, prefix, "sleep")
        pit.wait(lambda p: len(p.opened) >= 1, timeout_s=5)
        healthy_id = submit(client, tokens("alice"), rx.url)
        run_one(redis_url, prefix, "sleep")
        t0 = time.monotonic()
        rx.wait(lambda g: len(g) >= 1, timeout_s=5)
        healthy_s = time.monotonic() - t0
        arrived = time.monotonic()
        pit.wait(lambda p: len(p.closed) >= 2, timeout_s=4 * deadline_s + 5)
        metrics = client.get("/metrics").text
        admin = client.get("/v1/webhooks/dead", headers=auth(tokens("root", admin=True))).json()
    [(headers, _, status)] = rx.received()
    assert status == 200 and headers["webhook-id"].startswith(f"{healthy_id}:")
    assert healthy_s < 0.75 * deadline_s, healthy_s  # it did not wait for a tarpit send to be cut
    assert arrived < pit.closed[0]  # ... indeed, the first one was still held then
    assert pit.max_live == 1  # DASH_WEBHOOK_PER_DESTINATION
    for held in pit.durations[:2]:  # cut at the deadline, though a byte came every 0.2 s
        assert deadline_s - 0.3 < held < deadline_s + 1.5, pit.durations
    retried = re.search(r'outcome="retried"} (\d+)', metrics)
    assert retried and int(retried.group(1)) >= 2, metrics  # retried later, not dropped
    assert admin["dead"] == []


async def test_racing_claims_take_disjoint_deliveries(make_store: Any, redis: Any) -> None:
    store = make_store()
    for _ in range(30):
        await store.add("sleep", {"userId": "alice", "durationS": 0.1}, {"webhook": HOOK})
    outboxes = [WebhookOutbox(redis, store.keys) for _ in range(4)]
    claims = await asyncio.gather(*(o.claim(10, 30) for o in outboxes for _ in range(3)))
    ids = [d.id for batch in claims for d in batch]
    assert len(ids) == 30 and len(set(ids)) == 30  # each delivery once, to one claimer
    assert await outboxes[0].claim(10, 30) == []  # all leased
    tokens = {d.token for batch in claims for d in batch}
    assert len(tokens) == sum(1 for batch in claims if batch)  # a token per claim


async def test_a_stale_claim_settles_nothing(make_store: Any, redis: Any) -> None:
    """A sender whose lease ran out (while it still sent) cannot delete, reschedule or drop the
    delivery another sender claimed since; the newer claim settles it as usual."""
    store = make_store()
    await store.add("sleep", {"userId": "alice", "durationS": 0.1}, {"webhook": HOOK})
    slow, fast = WebhookOutbox(redis, store.keys), WebhookOutbox(redis, store.keys)
    [old] = await slow.claim(5, 0.05)
    assert await fast.claim(5, 30) == []  # leased: not claimed twice
    await asyncio.sleep(0.1)  # the lease runs out
    [new] = await fast.claim(5, 30)
    assert new.id == old.id and new.attempt == old.attempt + 1 and new.token != old.token
    due = await redis.zscore(store.keys.hooks, new.id)
    assert not await slow.delivered(old)
    assert not await slow.retry(old, 0.0)
    assert not await slow.give_up(old, HOOK_URL, "late")
    assert not await slow.release(old, 0.0)
    assert await redis.zscore(store.keys.hooks, new.id) == due  # still the newer claim's lease
    assert await redis.hexists(store.keys.hook_bodies, new.id)
    assert await slow.dead() == [] and await slow.claim(5, 30) == []
    assert await fast.retry(new, 0.0)  # the holder settles it
    assert not await fast.delivered(new)  # ... once: that ended its claim
    [again] = await slow.claim(5, 30)
    assert again.attempt == new.attempt + 1
    assert await slow.release(again, 0.0)  # given back unsent: the attempt is not counted
    [last] = await fast.claim(5, 30)
    assert last.attempt == again.attempt
    assert await fast.delivered(last)
    assert await fast.pending() == 0 and not await redis.hexists(store.keys.hook_bodies, last.id)


def test_a_stored_webhook_url_that_cannot_be_sent_to_ends_in_the_dead_list(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """A job recorded before its URL was checked as it is now (port 99999) costs the sender no
    crash and no endless retries: it is dropped, with why."""
    from dash_ray.queues import Keys, connect_sync

    client = make_client(webhook_allowed_networks="127.0.0.0/8", webhook_retry_s=0.2)
    job_id = submit(client, tokens("alice"), "http://127.0.0.1:9/hook")
    sync = connect_sync(redis_url)
    sync.hset(Keys(prefix).job(job_id), "hookUrl", "http://127.0.0.1:99999/hook")
    sync.close()
    run_one(redis_url, prefix, "sleep")
    admin = auth(tokens("root", admin=True))
    deadline = time.monotonic() + 10
    while not (dead := client.get("/v1/webhooks/dead", headers=admin).json()["dead"]):
        assert time.monotonic() < deadline, "not dropped"
        time.sleep(0.05)
    [entry] = dead
    assert entry["tries"] == 1 and "port" in entry["why"], entry


def test_one_user_with_tarpits_on_many_ports_holds_no_more_than_a_quarter_of_the_senders(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    """Four senders, two per destination: mallory's three tarpits (three ports, three
    destinations) hold one sender between them (a user's share: a quarter of
    DASH_WEBHOOK_CONCURRENCY), so alice's receiver is served at once."""
    deadline_s = 2.0
    client = make_client(webhook_allowed_networks="127.0.0.0/8", webhook_retry_s=0.2, webhook_timeout_s=5,
                         webhook_deadline_s=deadline_s, webhook_concurrency=4, webhook_per_destination=2)
    with Tarpit(drip_s=0.2) as a, Tarpit(drip_s=0.2) as b, Tarpit(drip_s=0.2) as c, WebhookReceiver() as rx:
        pits = (a, b, c)
        for pit in pits:
            submit(client, tokens("mallory"), pit.url)
            run_one(redis_url, prefix, "sleep")
        end = time.monotonic() + 5
        while not any(p.opened for p in pits) and time.monotonic() < end:
            time.sleep(0.02)
        assert any(p.opened for p in pits)
        submit(client, tokens("alice"), rx.url)
        run_one(redis_url, prefix, "sleep")
        t0 = time.monotonic()
        rx.wait(lambda g: len(g) >= 1, timeout_s=5)
        healthy_s = time.monotonic() - t0
        live_then = sum(p.live for p in pits)
    assert healthy_s < 0.75 * deadline_s, healthy_s
    assert live_then <= 1 and max(p.max_live for p in pits) <= 1, [p.max_live for p in pits]
