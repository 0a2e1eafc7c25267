"""Two users, one of them hostile, against a gateway served by uvicorn on a real Redis: signed
links only to the owner's files, lists that show only the caller's jobs, limits that concurrent
requests cannot race past, a byte budget per user, and capped event streams. The server keeps
serving after each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from dash_ray.config import load_settings
from tests.redis.conftest import SECRET
from tests.redis.test_edge_limits import live  # noqa: F401  (the fixture)

PNG = "data:image/png;base64," + "A" * 16


def bearer(user: str, admin: bool = False) -> dict[str, str]:
    from dash_ray.gateway import TokenAuth

    return {"Authorization": f"Bearer {TokenAuth(SECRET).mint(user, admin=admin)}"}


def at_once(n: int, fn: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`n` calls of `fn` released together from `n` threads."""
    gate = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        gate.wait(10)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


async def test_links_are_signed_only_for_the_owners_files_never_in_what_a_user_wrote(
        live: Callable[..., str], make_store: Any, make_consumer: Any, tmp_path: Path) -> None:  # noqa: F811
    from dash_ray.services import ArtifactStore
    from tests.helpers import complete, take_one

    base = live()
    artifacts = ArtifactStore(load_settings(data_dir=tmp_path / "data").artifacts_location)
    artifacts.put("alice/a1/image-0.png", b"\x89PNG alice's image")
    store = make_store()
    await store.add("sleep", {"userId": "alice", "jobId": "a1"})
    consumer = make_consumer("sleep", store)
    await complete(consumer, await take_one(consumer), {"images": ["/v1/artifacts/alice/a1/image-0.png"]})
    alice, bob = bearer("alice"), bearer("bob")
    theirs = "/v1/artifacts/alice/a1/image-0.png"
    # bob writes alice's file into his prompt: his answers carry it as he wrote it, unsigned
    r = httpx.post(f"{base}/v1/jobs/generation", json={"prompt": theirs, "jobId": "b1"}, headers=bob)
    assert r.status_code == 201 and r.json()["data"]["prompt"] == theirs, r.text
    assert httpx.get(f"{base}/v1/jobs/b1", headers=bob).json()["data"]["prompt"] == theirs
    listed = httpx.get(f"{base}/v1/jobs?include=data", headers=bob).json()["jobs"]
    assert [j["data"]["prompt"] for j in listed] == [theirs]
    # a result of bob's that names alice's file (a runner echoing input) is not signed either
    await store.add("sleep", {"userId": "bob", "jobId": "b2"})
    await complete(consumer, await take_one(consumer), {"images": [theirs, "/v1/artifacts/bob/b2/x.png"]})
    images = httpx.get(f"{base}/v1/jobs/b2", headers=bob).json()["result"]["images"]
    assert images[0] == theirs and images[1].startswith("/v1/artifacts/bob/b2/x.png?exp=")
    # no way in: no token is 401, bob's token is 404 whether the file exists or not
    assert httpx.get(base + theirs).status_code == 401
    assert httpx.get(base + theirs, headers=bob).status_code == 404
    assert httpx.get(f"{base}/v1/artifacts/alice/a1/nothing.png", headers=bob).status_code == 404
    # alice's own view still carries a link that works without a token
    link = httpx.get(f"{base}/v1/jobs/a1", headers=alice).json()["result"]["images"][0]
    assert "&sig=" in link and httpx.get(base + link).content == b"\x89PNG alice's image"
    assert httpx.get(f"{base}/healthz").status_code == 200


async def test_a_list_shows_only_the_callers_jobs_even_where_an_id_changed_hands(
        live: Callable[..., str], make_store: Any, redis_url: str) -> None:  # noqa: F811
    base = live()
    alice, bob = bearer("alice"), bearer("bob")
    assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "portrait-1"}, headers=bob).status_code == 201
    assert httpx.delete(f"{base}/v1/jobs/portrait-1", headers=bob).status_code == 200
    store = make_store()
    # bob's records expire (as they do after DASH_FINISHED_TTL_S); his history keeps the id
    await store.redis.delete(store.keys.job("portrait-1"), store.keys.events("portrait-1"))
    assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "portrait-1", "durationS": 0.1, "failMessage": "alice's"},
                      headers=alice).status_code == 201
    assert httpx.get(f"{base}/v1/jobs/portrait-1", headers=bob).status_code == 404
    for query in ("", "?include=data", "?include=data&status=waiting", "?queue=sleep"):
        page = httpx.get(f"{base}/v1/jobs{query}", headers=bob)
        assert page.status_code == 200 and page.json()["jobs"] == [], (query, page.text)
    mine = httpx.get(f"{base}/v1/jobs?include=data", headers=alice).json()["jobs"]
    assert [j["id"] for j in mine] == ["portrait-1"] and mine[0]["data"]["failMessage"] == "alice's"
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_concurrent_submits_cannot_race_past_a_limit(live: Callable[..., str]) -> None:  # noqa: F811
    base = live(max_waiting_per_user=3, rate_submit="1000/minute")
    mallory = bearer("mallory")
    training = {"prompt": "sks", "imageUrls": [PNG], "settings": {"epochs": 1, "resolution": 64},
                "options": {"priority": 1}}
    answers = at_once(30, lambda i: httpx.post(f"{base}/v1/jobs/training", json={**training, "loraId": f"hi-{i}"},
                                               headers=mallory, timeout=30))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [429] * 29, codes
    assert all("DASH_HIGH_PRIORITY_PER_USER" in a.text for a in answers if a.status_code == 429)
    # the unfinished-jobs cap: mallory has 1, so 2 more fit, whoever asks at the same time
    answers = at_once(30, lambda i: httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": f"s-{i}"},
                                               headers=mallory, timeout=30))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 2 + [429] * 28, codes
    usage = httpx.get(f"{base}/v1/usage", headers=mallory).json()
    assert usage["jobsUnfinished"] == {"used": 3, "limit": 3}
    # another user is not held back by mallory
    assert httpx.post(f"{base}/v1/jobs/sleep", json={}, headers=bearer("alice")).status_code == 201
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_the_submission_rate_holds_under_a_race_across_replicas(live: Callable[..., str]) -> None:  # noqa: F811
    """A plain submit's rate is counted by the script that makes its job; a submit with a webhook
    is counted before the webhook's lookup (as a retry is). Raced on two replicas, with replays of
    known ids among them: one window per user, exactly its limit let through."""
    bases = [live(rate_submit="10/minute", webhook_allowed_networks="127.0.0.0/8") for _ in range(2)]
    mallory = bearer("mallory")

    def submit(i: int) -> httpx.Response:
        n = i % 25  # ids 0-14 are sent twice: a replay counts as a submission too
        body: dict[str, Any] = {"jobId": f"rate-{n}"}
        if n % 3 == 0:
            body["options"] = {"webhook": {"url": "http://127.0.0.1:9/hook"}}
        return httpx.post(f"{bases[i % 2]}/v1/jobs/sleep", json=body, headers=mallory, timeout=30)

    answers = at_once(40, submit)
    codes = [a.status_code for a in answers]
    assert codes.count(429) == 30 and all(c in (200, 201, 429) for c in codes), codes  # 200: a replay let through
    refused = [a for a in answers if a.status_code == 429]
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in refused)
    assert all("rate limit 10 per 1 minute" in a.json()["error"]["message"] for a in refused)
    usage = httpx.get(f"{bases[0]}/v1/usage", headers=mallory).json()
    assert usage["jobsUnfinished"]["used"] == sum(1 for c in codes if c == 201)  # a refused submit made no job
    # another user has their own window
    assert httpx.post(f"{bases[1]}/v1/jobs/sleep", json={}, headers=bearer("alice")).status_code == 201


def test_what_one_user_keeps_in_redis_is_budgeted_and_shown(live: Callable[..., str]) -> None:  # noqa: F811
    base = live(max_bytes_per_user=64 * 1024, job_overhead_bytes=1024, max_inline_image_bytes=32 * 1024,
                rate_submit="1000/minute")
    admin_base = live(metrics_token="m" * 20)  # a second replica, whose /metrics wants a token
    mallory = bearer("mallory")
    big = "data:image/png;base64," + "A" * 40_000  # ~30 KB decoded, ~40 KB kept
    first = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": big, "scale": 2}, headers=mallory)
    assert first.status_code == 201, first.text
    answers = at_once(6, lambda i: httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": big, "scale": 2},
                                              headers=mallory, timeout=30))
    assert sorted(a.status_code for a in answers) == [413] * 6, [a.text for a in answers]
    refused = answers[0].json()["error"]
    assert refused["code"] == "quota_exceeded" and "DASH_MAX_BYTES_PER_USER" in refused["message"]
    usage = httpx.get(f"{base}/v1/usage", headers=mallory).json()
    assert 40_000 < usage["bytesKept"]["used"] <= 64 * 1024 and usage["bytesKept"]["limit"] == 64 * 1024
    import dash_ray

    with dash_ray.Client(base, mallory["Authorization"][7:]) as client:  # the same from Python
        seen = client.usage()
    assert seen.bytes_kept.used == usage["bytesKept"]["used"] and seen.jobs_unfinished.limit == 200
    # small jobs still fit under the budget; another user is untouched
    assert httpx.post(f"{base}/v1/jobs/sleep", json={}, headers=mallory).status_code == 201
    assert httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": big, "scale": 2},
                      headers=bearer("alice")).status_code == 201
    # cancelled, the job's bytes stay until its records expire: still refused
    assert httpx.delete(f"{base}/v1/jobs/{first.json()['id']}", headers=mallory).status_code == 200
    assert httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": big, "scale": 2},
                      headers=mallory).status_code == 413
    assert 'dash_user_bytes_kept{' not in httpx.get(f"{base}/metrics").text  # user ids: only behind a token
    assert httpx.get(f"{base}/metrics").status_code == 200
    metrics = httpx.get(f"{admin_base}/metrics", headers={"Authorization": "Bearer " + "m" * 20}).text
    assert 'dash_user_bytes_kept{user="mallory"}' in metrics and "dash_sse_open_streams" in metrics
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_event_streams_are_capped_per_user(live: Callable[..., str]) -> None:  # noqa: F811
    base = live(max_streams_per_user=3)
    mallory = bearer("mallory")
    job = httpx.post(f"{base}/v1/jobs/sleep", json={"durationS": 60}, headers=mallory).json()["id"]
    with httpx.Client(timeout=10) as http:
        opened = []
        for _ in range(3):
            cm = http.stream("GET", f"{base}/v1/jobs/{job}/events", headers=mallory)
            r = cm.__enter__()
            assert r.status_code == 200
            opened.append(cm)
        fourth = http.get(f"{base}/v1/jobs/{job}/events", headers=mallory)
        assert fourth.status_code == 429 and "DASH_MAX_STREAMS_PER_USER" in fourth.text
        assert httpx.get(f"{base}/v1/usage", headers=mallory).json()["streams"] == {"used": 3, "limit": 3}
        alice = bearer("alice")
        other = httpx.post(f"{base}/v1/jobs/sleep", json={"durationS": 60}, headers=alice).json()["id"]
        with http.stream("GET", f"{base}/v1/jobs/{other}/events", headers=alice) as r:
            assert r.status_code == 200  # mallory's streams hold nobody else back
        for cm in opened:
            cm.__exit__(None, None, None)
    # the slots come back once the streams are closed (the server notices the disconnect)
    deadline_s = 30.0
    import time

    end = time.monotonic() + deadline_s
    while httpx.get(f"{base}/v1/usage", headers=mallory).json()["streams"]["used"] and time.monotonic() < end:
        time.sleep(0.1)
    assert httpx.get(f"{base}/v1/usage", headers=mallory).json()["streams"]["used"] == 0
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_a_socket_pays_for_each_job_id_it_subscribes_not_for_each_message(live: Callable[..., str]) -> None:  # noqa: F811
    import json

    from websockets.sync.client import connect as ws_connect

    base = live(ws_ids_per_s=100)  # bursts of 200 ids
    with ws_connect(base.replace("http", "ws") + "/ws", additional_headers=bearer("mallory")) as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": [f"nope-{i}" for i in range(200)]}))
        got = [json.loads(ws.recv(timeout=10)) for _ in range(201)]
        assert sum(m.get("code") == "not_found" for m in got) == 200
        ws.send(json.dumps({"type": "subscribe", "jobIds": [f"again-{i}" for i in range(200)]}))
        refused = json.loads(ws.recv(timeout=10))
        assert refused["code"] == "rate_limited" and "DASH_WS_IDS_PER_S" in refused["message"]
        ws.send(json.dumps({"type": "ping"}))  # one message, no ids: still served
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_one_user_cannot_fill_redis_for_everyone(live: Callable[..., str], tmp_path: Path) -> None:  # noqa: F811
    """A bounded run of the flood: a Redis of 24 MB (noeviction: full means every write fails),
    a budget of 4 MiB a user. Mallory's inline images stop at 413 long before Redis is full;
    alice's submits go on."""
    from dash_ray.queues import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "small-redis", maxmemory="24mb")
    url = server.start()
    try:
        base = live(redis=url, max_bytes_per_user=4 * 1024 * 1024, rate_submit="10000/minute")
        mallory = bearer("mallory")
        image = "data:image/png;base64," + "A" * 340_000  # ~255 KB decoded, ~340 KB kept
        codes = []
        for _ in range(150):  # at 340 KB a job, Redis would be full by about the 70th
            r = httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": image, "scale": 2}, headers=mallory,
                           timeout=30)
            codes.append(r.status_code)
            if r.status_code != 201:
                break
        assert codes[-1] == 413 and 5 <= len(codes) <= 14, codes
        assert httpx.post(f"{base}/v1/jobs/upscaling", json={"imageUrl": image, "scale": 2},
                          headers=bearer("alice"), timeout=30).status_code == 201
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        server.stop()


def test_a_signature_whose_expiry_is_not_plain_digits_is_refused_not_an_error(live: Callable[..., str]) -> None:  # noqa: F811
    base = live()
    for exp in ("%C2%B2", "%D9%A3", "1" * 40, "-1", "1e9"):
        r = httpx.get(f"{base}/v1/artifacts/alice/a1/image-0.png?exp={exp}&sig=x")
        assert r.status_code == 401, (exp, r.status_code, r.text)
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_training_samples_count_against_the_compute_ceiling(live: Callable[..., str]) -> None:  # noqa: F811
    base = live(max_generation_mpx_steps=10)
    body = {"loraId": "s1", "prompt": "sks", "imageUrls": [PNG],
            "settings": {"epochs": 10, "resolution": 512, "sampleEvery": 1, "sampleSteps": 50}}
    r = httpx.post(f"{base}/v1/jobs/training", json=body, headers=bearer("mallory"))
    assert r.status_code == 422 and "settings.sampleEvery" in r.text and "DASH_MAX_GENERATION_MPX_STEPS" in r.text
    body["settings"] = {**body["settings"], "sampleEvery": 0}
    assert httpx.post(f"{base}/v1/jobs/training", json=body, headers=bearer("mallory")).status_code == 201


async def test_retries_take_the_owners_limits_atomically_too(
        live: Callable[..., str], make_store: Any, make_consumer: Any) -> None:  # noqa: F811
    """Five failed priority-1 training jobs retried at once: one runs again, four are refused
    (the share is one); the unfinished-jobs cap holds for retries the same way."""
    from tests.helpers import take_one

    base = live(rate_submit="1000/minute", max_waiting_per_user=2)
    mallory = bearer("mallory")
    consumer = make_consumer("training", make_store())
    body = {"prompt": "sks", "imageUrls": [PNG], "settings": {"epochs": 1, "resolution": 64},
            "options": {"priority": 1}}
    for i in range(5):  # one at a time, each failed before the next: every submit fits
        assert httpx.post(f"{base}/v1/jobs/training", json={**body, "loraId": f"r-{i}"},
                          headers=mallory).status_code == 201
        await consumer.fail(await take_one(consumer, block_s=5), "boom", retry=False)
    answers = at_once(5, lambda i: httpx.post(f"{base}/v1/jobs/r-{i}/retry", headers=mallory, timeout=30))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [429] * 4, [a.text for a in answers]
    assert httpx.get(f"{base}/v1/usage", headers=mallory).json()["jobsUnfinished"]["used"] == 1
    # plain jobs: one more place among the unfinished, raced by three retries and a submit
    sleeper = make_consumer("sleep", make_store())
    for i in range(3):
        assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": f"p-{i}"}, headers=mallory).status_code == 201
        await sleeper.fail(await take_one(sleeper, block_s=5), "boom", retry=False)
    answers = at_once(4, lambda i: httpx.post(f"{base}/v1/jobs/p-{i}/retry", headers=mallory, timeout=30)
                      if i < 3 else httpx.post(f"{base}/v1/jobs/sleep", json={}, headers=mallory, timeout=30))
    assert sorted(a.status_code for a in answers if a.status_code != 429) in ([200], [201]), [a.text for a in answers]
    assert httpx.get(f"{base}/v1/usage", headers=mallory).json()["jobsUnfinished"] == {"used": 2, "limit": 2}
    assert httpx.get(f"{base}/healthz").status_code == 200


async def test_a_socket_never_gets_the_events_of_another_users_job_that_took_the_id(
        live: Callable[..., str], make_store: Any) -> None:  # noqa: F811
    """Eve follows her job `dog`; it ends and its records expire; bob's new job `dog` reports
    progress on the same channel. Eve's socket, still subscribed, gets none of it (her own job
    `cat`'s event, published after bob's, shows that they went by: one pub/sub, in order)."""
    import json

    from websockets.sync.client import connect as ws_connect

    from dash_ray.models import JobProgressEvent

    base = live()
    eve = bearer("eve")
    assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "dog"}, headers=eve).status_code == 201
    assert httpx.delete(f"{base}/v1/jobs/dog", headers=eve).status_code == 200  # seq 2: cancelled
    assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "cat"}, headers=eve).status_code == 201
    store = make_store()
    with ws_connect(base.replace("http", "ws") + "/ws", additional_headers=eve) as ws:
        ws.send(json.dumps({"type": "subscribe", "jobIds": ["dog", "cat"]}))
        seen = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        assert [m["type"] for m in seen] == ["job:failed", "job:progress", "subscribed"], seen
        await store.redis.delete(store.keys.job("dog"), store.keys.events("dog"))  # expired
        assert httpx.post(f"{base}/v1/jobs/sleep", json={"jobId": "dog", "failMessage": "bob's secret"},
                          headers=bearer("bob")).status_code == 201
        for i in range(1, 6):  # bob's seqs 2..6 pass eve's last (2)
            await store.lifecycle.report(JobProgressEvent(job_id="dog", queue="sleep", user_id="bob", status="active",
                                                          progress=10 * i, message=f"bob's step {i}"))
        await store.lifecycle.report(JobProgressEvent(job_id="cat", queue="sleep", user_id="eve", status="active",
                                                      progress=50, message="eve's own"))
        got = []
        while True:
            msg = json.loads(ws.recv(timeout=10))
            if msg.get("message") == "eve's own":
                break
            got.append(msg)
    assert got == [], got
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_refused_submits_count_against_the_rate_and_zero_refuses_all(live: Callable[..., str]) -> None:  # noqa: F811
    """A submit refused for its payload after the gateway's own checks (an unknown model) still
    counts against the rate, as every submission did; `0/minute` lets nothing through."""
    base = live(rate_submit="2/minute")
    mallory = bearer("mallory")
    bad = {"prompt": "x", "settings": {"model": "no-such-model"}}
    assert [httpx.post(f"{base}/v1/jobs/generation", json=bad, headers=mallory).status_code
            for _ in range(2)] == [422, 422]
    refused = httpx.post(f"{base}/v1/jobs/generation", json={"prompt": "x"}, headers=mallory)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    again = httpx.post(f"{base}/v1/jobs/generation", json=bad, headers=mallory)  # remembered: no checks
    assert again.status_code == 429 and int(again.headers["Retry-After"]) <= int(refused.headers["Retry-After"])
    closed = live(rate_submit="0/minute")
    r = httpx.post(f"{closed}/v1/jobs/generation", json={"prompt": "x"}, headers=bearer("alice"))
    assert r.status_code == 429, r.text
