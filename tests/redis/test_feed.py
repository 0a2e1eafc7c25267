"""A socket's feed of the caller's jobs (`scope: mine` / `all`) and the history search, on a
real Redis through the gateway app (TestClient); the jobs run as the scheduler runs them."""

from __future__ import annotations

from typing import Any

from tests.redis.test_gateway import GEN, auth, recv_until, run_one


def _job_events(msgs: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m.get("jobId") == job_id]


def test_a_users_feed_brings_each_new_job_from_any_client_and_never_anothers(
        make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    gateway, other_replica = make_client(), make_client()  # the job is made on another replica
    alice, bob = auth(tokens("alice")), auth(tokens("bob"))
    before = gateway.post("/v1/jobs/generation", json=GEN, headers=alice).json()["id"]
    with gateway.websocket_connect(f"/ws?token={tokens('alice')}") as ws:
        ws.send_json({"type": "subscribe", "scope": "mine"})
        start = recv_until(ws, lambda m: m["type"] == "subscribed")
        # the job unfinished when the feed began: its current state first
        assert [m["status"] for m in _job_events(start, before)] == ["waiting"]
        assert start[-1] == {"type": "subscribed", "jobIds": [before], "scope": "mine"}

        theirs = other_replica.post("/v1/jobs/generation", json={"prompt": "bob's"}, headers=bob).json()["id"]
        new = other_replica.post("/v1/jobs/generation", json={**GEN, "prompt": "a new one"}, headers=alice).json()["id"]
        first = recv_until(ws, lambda m: m.get("jobId") == new)
        assert first[-1]["type"] == "job:progress" and first[-1]["status"] == "waiting" and first[-1]["seq"] == 1
        # Both of alice's run (in order of submission); her socket follows each to its end.
        run_one(redis_url, prefix, "generation", steps=2)
        run_one(redis_url, prefix, "generation", steps=2, fail="boom")  # bob's
        run_one(redis_url, prefix, "generation", steps=2)
        got = first + recv_until(ws, lambda m: m["type"] == "job:completed" and m["jobId"] == new)
        assert not _job_events(got, theirs), "another user's job reached the feed"
        seqs = [m["seq"] for m in _job_events(got, new)]
        assert seqs == list(range(1, len(seqs) + 1))  # every event of the new job, once, in order
        # A job the feed brought is let go once it ended: the socket follows nothing now.
        ws.send_json({"type": "subscribe", "scope": "mine"})
        assert recv_until(ws, lambda m: m["type"] == "subscribed")[-1]["jobIds"] == []
        # After the feed stops, a new job is not sent.
        ws.send_json({"type": "unsubscribe", "scope": "mine"})
        assert ws.receive_json() == {"type": "subscribed", "jobIds": []}
        gateway.post("/v1/jobs/generation", json=GEN, headers=alice)
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"


def test_only_an_admin_follows_every_users_jobs(make_client: Any, tokens: Any) -> None:
    c = make_client()
    with c.websocket_connect(f"/ws?token={tokens('mallory')}") as ws:
        ws.send_json({"type": "subscribe", "scope": "all"})
        err = ws.receive_json()
        assert err["type"] == "error" and err["code"] == "forbidden"
        ws.send_json({"type": "subscribe"})  # neither ids nor a scope
        assert ws.receive_json()["code"] == "bad_request"
        ws.send_json({"type": "subscribe", "scope": "everything"})
        assert ws.receive_json()["code"] == "bad_request"
        # her own feed does not show the others' jobs
        ws.send_json({"type": "subscribe", "scope": "mine"})
        assert ws.receive_json() == {"type": "subscribed", "jobIds": [], "scope": "mine"}
        c.post("/v1/jobs/generation", json=GEN, headers=auth(tokens("alice")))
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
    with c.websocket_connect(f"/ws?token={tokens('root', admin=True)}") as ws:
        ws.send_json({"type": "subscribe", "scope": "all"})
        assert ws.receive_json() == {"type": "subscribed", "jobIds": [], "scope": "all"}
        ids = {c.post("/v1/jobs/generation", json={"prompt": "p"}, headers=auth(tokens(u))).json()["id"]
               for u in ("alice", "bob")}
        seen: set[str] = set()
        while seen != ids:
            m = ws.receive_json()
            assert m["type"] == "job:progress" and m["jobId"] in ids
            seen.add(m["jobId"])


def test_the_history_search_by_prompt_id_and_time(make_client: Any, tokens: Any, redis: Any) -> None:
    c = make_client(rate_submit="1000/minute")
    alice, bob = auth(tokens("alice")), auth(tokens("bob"))
    made = {}
    for prompt in ["A red Fox in snow", "a blue whale", "fox cubs at dawn", "a city at night"]:
        made[prompt] = c.post("/v1/jobs/generation", json={**GEN, "prompt": prompt}, headers=alice).json()
        assert made[prompt]["id"], made[prompt]
    c.post("/v1/jobs/generation", json={"prompt": "bob's fox"}, headers=bob)

    def ids(**params: Any) -> list[str]:
        r = c.get("/v1/jobs", params=params, headers=alice)
        assert r.status_code == 200, r.text
        assert "data" not in r.json()["jobs"][0] if r.json()["jobs"] else True  # searched, not returned
        return [j["id"] for j in r.json()["jobs"]]

    foxes = [made["fox cubs at dawn"]["id"], made["A red Fox in snow"]["id"]]
    assert ids(q="FOX") == foxes  # any case, newest first, only the caller's
    assert ids(q="fox", limit=1) == foxes[:1]
    prefix = made["a blue whale"]["id"][:12]
    assert ids(idPrefix=prefix) == [made["a blue whale"]["id"]]
    created = sorted(j["createdAt"] for j in made.values())
    assert ids(**{"from": created[2]}) == [made["a city at night"]["id"], made["fox cubs at dawn"]["id"]]
    assert set(ids(to=created[1])) == {made["A red Fox in snow"]["id"]}
    assert ids(**{"from": "2000-01-01T00:00:00Z"}, q="whale") == [made["a blue whale"]["id"]]
    assert ids(q="nothing like it") == []
    for bad in ({"from": "yesterday"}, {"to": "-5"}, {"q": ""}, {"q": "x" * 201}):
        r = c.get("/v1/jobs", params=bad, headers=alice)
        assert r.status_code == 422, (bad, r.text)
    # another user finds nothing of alice's
    r = c.get("/v1/jobs", params={"q": "red fox"}, headers=bob)
    assert [j["data"] if "data" in j else j["id"] for j in r.json()["jobs"]] == []


def test_a_search_that_finds_little_pages_on_through_the_history(make_client: Any, tokens: Any) -> None:
    c = make_client(rate_submit="1000/minute", max_waiting_per_user=1000)
    alice = auth(tokens("alice"))
    rare = c.post("/v1/jobs/generation", json={**GEN, "prompt": "the rare one"}, headers=alice).json()["id"]
    for _ in range(60):
        assert c.post("/v1/jobs/generation", json=GEN, headers=alice).status_code == 201
    # limit 1 reads at most 50 entries a call: the rare job is past them
    found, cursor, calls = [], None, 0
    while calls < 5:
        calls += 1
        page = c.get("/v1/jobs", params={"q": "rare", "limit": 1, **({"cursor": cursor} if cursor else {})},
                     headers=alice).json()
        found += [j["id"] for j in page["jobs"]]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert found == [rare] and calls == 2
