"""GPU budgets on a real Redis, through the gateway app: an admin sets a user's budget; past a
hard one their submits are refused (429 `budget_exceeded`, naming the budget, what was used and
when it resets) and what was spent on an earlier day does not count; past a soft one they get a
lower fair share; users cannot set budgets. The spend is the ledger's (queues/ledger.py; the
charges of real attempts are tested on Ray in tests/ray/test_ledger.py)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from dash_ray.queues import Keys, connect
from dash_ray.queues.ledger import Charge, Ledger
from tests.redis.conftest import run_async
from tests.redis.test_gateway import auth


def _spend(redis_url: str, prefix: str, user: str, gpu_s: float, at: float | None = None, org: str | None = None) -> None:
    """Charge `user` one attempt of `gpu_s` GPU seconds (at time `at`; of a job their group `org`'s
    token made), as the dispatcher does."""

    async def go() -> None:
        r = connect(redis_url)
        try:
            await Ledger(r, Keys(prefix)).charge([Charge(user, "sleep", "", gpu_s / 0.2, 0.2, "done", org=org)], now=at)
        finally:
            await r.aclose()

    run_async(go())


def _org_of(redis_url: str, prefix: str, job_id: str) -> str | None:
    """The group a job carries (BullMQ's opts.org), as the consumer reads it."""
    import json

    async def go() -> str | None:
        r = connect(redis_url)
        try:
            raw = await r.hget(Keys(prefix).bull("sleep", job_id), "opts")
            return json.loads(raw).get("org")  # type: ignore[no-any-return]
        finally:
            await r.aclose()

    return run_async(go())  # type: ignore[no-any-return]


def test_a_hard_budget_refuses_until_it_resets_and_a_soft_one_lowers_the_share(make_client: Any, tokens: Any,
                                                                             redis_url: str, prefix: str) -> None:
    c = make_client()
    root, alice, bob = auth(tokens("root", admin=True)), auth(tokens("alice")), auth(tokens("bob"))
    r = c.put("/v1/budgets/alice", json={"gpuSecondsPerDay": 10}, headers=alice)
    assert r.status_code == 403, r.text
    # another user's usage, everyone's, or its CSV: an admin's only, and nothing of it shown
    for params in ({"userId": "alice"}, {"userId": "*"}, {"userId": "alice", "format": "csv"}):
        r = c.get("/v1/usage", params=params, headers=bob)
        assert r.status_code == 403 and "gpuS" not in r.text, (params, r.text)
    r = c.put("/v1/budgets/alice", json={"gpuSecondsPerDay": 10, "gpuSecondsPerMonth": 100}, headers=root)
    assert r.status_code == 200 and r.json()["gpuSecondsPerDay"]["limit"] == 10, r.text
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=alice).status_code == 201
    _spend(redis_url, prefix, "alice", 12.0)
    r = c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=alice)
    body = r.json()["error"]
    midnight = (datetime.now(timezone.utc) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert r.status_code == 429 and body["code"] == "budget_exceeded", r.text
    assert body["budget"] == "gpuSecondsPerDay" and body["limit"] == 10 and body["used"] == 12.0
    assert body["resetsAt"] == midnight.timestamp() and "resets at" in body["message"]
    assert abs(int(r.headers["retry-after"]) - (midnight.timestamp() - time.time())) <= 5
    # the same for a flow and a retry; the user sees it in their usage
    assert c.post("/v1/flows", json={"queue": "sleep", "payload": {"durationS": 0.1}}, headers=alice).status_code == 429
    r = c.post("/v1/schedules", json={"name": "more", "queue": "sleep", "every": 60, "payload": {"durationS": 0.1}},
               headers=alice)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    usage = c.get("/v1/usage", headers=alice).json()
    assert usage["budget"]["hard"] and usage["budget"]["gpuSecondsPerDay"]["used"] == 12.0
    assert usage["budget"]["gpuSecondsPerMonth"] == {"used": 12.0, "limit": 100.0, "resetsAt": usage["budget"][
        "gpuSecondsPerMonth"]["resetsAt"]}
    assert usage["gpu"]["total"]["gpuS"] == 12.0
    # what was spent on an earlier day does not count today: the day's budget has reset
    c.put("/v1/budgets/bob", json={"gpuSecondsPerDay": 10}, headers=root)
    _spend(redis_url, prefix, "bob", 50.0, at=time.time() - 86400)
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=bob).status_code == 201
    # an admin lifts alice's: she submits again
    assert c.delete("/v1/budgets/alice", headers=root).status_code == 200
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=alice).status_code == 201
    listed = c.get("/v1/budgets", headers=root).json()
    assert set(listed["users"]) == {"bob"} and c.get("/v1/budgets", headers=bob).status_code == 403
    assert [e["action"] for e in c.get("/v1/audit", headers=root).json()["entries"]] == ["budget.set"] * 3
    # an admin submitting for a user is held to that user's budget, and audited
    r = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "userId": "bob", "jobId": "for-bob"}, headers=root)
    assert r.status_code == 201, r.text
    [entry] = c.get("/v1/audit", params={"action": "submit"}, headers=root).json()["entries"]
    assert (entry["target"], entry["owner"], entry["who"]) == ("for-bob", "bob", "root")


def test_past_a_soft_budget_a_user_gets_a_quarter_of_the_share(make_client: Any, tokens: Any, redis_url: str,
                                                               prefix: str) -> None:
    c = make_client()
    root, carol, dave = auth(tokens("root", admin=True)), auth(tokens("carol")), auth(tokens("dave"))
    c.put("/v1/budgets/carol", json={"gpuSecondsPerDay": 1, "hard": False}, headers=root)
    _spend(redis_url, prefix, "carol", 2.0)
    made = {}
    for who, name in ((carol, "carol"), (dave, "dave")):
        for i in range(4):
            r = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": f"{name}-{i}"}, headers=who)
            assert r.status_code == 201, r.text
            made[f"{name}-{i}"] = r.json()["id"]
    place = {j: c.get(f"/v1/jobs/{j}", headers=root).json()["queuePosition"] for j in made}
    # weight 1/4: carol's second job comes after all four of dave's
    assert place["carol-0"] < place["dave-0"] < place["dave-3"] < place["carol-1"], place


def test_per_user_gpu_metrics_only_behind_the_option_and_the_metrics_token(make_client: Any, redis_url: str,
                                                                           prefix: str) -> None:
    """`dash_user_gpu_seconds_total` lists the DASH_METRICS_USERS users with the most GPU time per
    queue, and only where /metrics wants its token; off, no user id is on the page."""

    async def go() -> None:
        r = connect(redis_url)
        try:
            ledger = Ledger(r, Keys(prefix), per_user=True)
            await ledger.charge([Charge(u, "sleep", "", s, 0.5, "done") for u, s in
                                 (("alice", 10.0), ("bob", 4.0), ("carol", 1.0), ("alice", 2.0))])
            await ledger.charge([Charge("mallory", "sleep", "", 100.0, 0.5, "failed", lost=True)])  # not charged
        finally:
            await r.aclose()

    run_async(go())
    token = "m" * 32
    shown = make_client(metrics_token=token, metrics_users=2).get("/metrics", headers={"authorization": f"Bearer {token}"})
    lines = [x for x in shown.text.splitlines() if x.startswith("dash_user_gpu_seconds_total")]
    assert lines == ['dash_user_gpu_seconds_total{queue="sleep",user="alice"} 6',
                     'dash_user_gpu_seconds_total{queue="sleep",user="bob"} 2'], lines
    for settings in ({"metrics_users": 2}, {"metrics_token": token}):
        page = make_client(**settings).get("/metrics", headers={"authorization": f"Bearer {token}"}).text
        assert "dash_user_gpu_seconds_total" not in page and "alice" not in page


def test_a_groups_budget_is_shared_by_the_members_its_tokens_name(make_client: Any, tokens: Any, redis_url: str,
                                                                  prefix: str) -> None:
    """Two users whose tokens say `org: acme` share acme's budget: the jobs those tokens make
    carry the group, their GPU time together is held to it (each within their own), a member is
    refused once the group's is spent, naming the group, and someone outside it is not; a token
    cannot claim a malformed group; a job made with a token naming no group is its user's alone."""
    import jwt

    from tests.redis.conftest import SECRET

    c = make_client()
    root = auth(tokens("root", admin=True))
    alice, bob = (auth(tokens(u, org="acme")) for u in ("alice", "bob"))
    carol = auth(tokens("carol"))
    assert c.put("/v1/budgets/org:acme", json={"gpuSecondsPerDay": 10}, headers=alice).status_code == 403
    r = c.put("/v1/budgets/org:acme", json={"gpuSecondsPerDay": 10}, headers=root)
    assert r.status_code == 200 and r.json()["gpuSecondsPerDay"] == {"used": 0.0, "limit": 10.0,
                                                                      "resetsAt": r.json()["gpuSecondsPerDay"]["resetsAt"]}
    assert c.put("/v1/budgets/org:a b", json={"gpuSecondsPerDay": 10}, headers=root).status_code == 422
    for who in (alice, bob, carol):  # a job carries its token's group
        job = c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=who).json()["id"]
        assert _org_of(redis_url, prefix, job) == ("acme" if who != carol else None)
    _spend(redis_url, prefix, "alice", 6.0, org="acme")
    _spend(redis_url, prefix, "bob", 5.0, org="acme")
    _spend(redis_url, prefix, "carol", 50.0)  # not a member: not acme's
    for who in (alice, bob):
        r = c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=who)
        err = r.json()["error"]
        assert r.status_code == 429 and err["code"] == "budget_exceeded" and err["org"] == "acme", r.text
        assert err["used"] == 11.0 and err["limit"] == 10 and "acme" in err["message"]
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=carol).status_code == 201
    usage = c.get("/v1/usage", headers=alice).json()
    assert usage["org"] == "acme" and usage["orgBudget"]["gpuSecondsPerDay"]["used"] == 11.0
    assert usage["budget"] is None  # her own: none
    assert c.get("/v1/usage", headers=carol).json()["orgBudget"] is None
    listed = c.get("/v1/budgets", headers=root).json()
    assert listed["users"]["org:acme"]["gpuSecondsPerDay"] == 10 and "orgDefault" in listed
    forged = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60, "org": "a b"}, SECRET, algorithm="HS256")
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=auth(forged)).status_code == 401
    # a token of bob's naming no group: the jobs it makes are his alone (not acme's to pay)
    bob_alone = auth(tokens("bob"))
    job = c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=bob_alone).json()["id"]
    assert _org_of(redis_url, prefix, job) is None
    _spend(redis_url, prefix, "bob", 100.0)
    assert c.get("/v1/usage", headers=alice).json()["orgBudget"]["gpuSecondsPerDay"]["used"] == 11.0
    assert c.delete("/v1/budgets/org:acme", headers=root).status_code == 200
    assert c.post("/v1/jobs/sleep", json={"durationS": 0.1}, headers=alice).status_code == 201


def test_a_budget_that_sets_one_limit_keeps_the_defaults_of_the_others(make_client: Any, tokens: Any) -> None:
    """DASH_GPU_SECONDS_PER_DAY=100 for everyone; a share set for alice alone leaves her the
    default day (and a day set for bob leaves him the default share)."""
    c = make_client(gpu_seconds_per_day=100, gpu_share_per_user=2.0)
    root, alice, bob = auth(tokens("root", admin=True)), auth(tokens("alice")), auth(tokens("bob"))
    r = c.put("/v1/budgets/alice", json={"gpuShare": 0.5}, headers=root)
    assert r.status_code == 200, r.text
    assert r.json()["gpuSecondsPerDay"]["limit"] == 100 and r.json()["gpuShare"] == {"held": 0.0, "limit": 0.5}
    c.put("/v1/budgets/bob", json={"gpuSecondsPerDay": 10}, headers=root)
    for who, day, share in ((alice, 100, 0.5), (bob, 10, 2.0)):
        budget = c.get("/v1/usage", headers=who).json()["budget"]
        assert budget["gpuSecondsPerDay"]["limit"] == day and budget["gpuShare"]["limit"] == share, budget
