"""The audit trail on a real Redis, through the gateway app: every admin action and every action on
another user's job or schedule appears once in `GET /v1/audit`, with who, what, whose and
where from; a user's actions on their own jobs do not; a user gets 403 there; `dash-ray token`
records the tokens it issues when it can reach Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.redis.conftest import SECRET
from tests.redis.test_flows import _take
from tests.redis.test_gateway import auth


def _trail(c: Any, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = c.get("/v1/audit", params=params, headers=admin)
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


def test_admin_and_cross_user_actions_are_audited_once(make_client: Any, tokens: Any, redis_url: str,
                                                       prefix: str) -> None:
    c = make_client()
    root, alice = auth(tokens("root", admin=True)), auth(tokens("alice"))
    failed = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "a-failed"}, headers=alice).json()["id"]
    assert [j for j, _ in _take(redis_url, prefix, "sleep", 5, fail="out of memory")] == [failed]
    mine = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "own"}, headers=alice).json()["id"]
    assert c.post(f"/v1/jobs/{mine}/move", json={"to": "front"}, headers=alice).status_code == 200
    assert c.delete(f"/v1/jobs/{mine}", headers=alice).status_code == 200  # her own: not audited
    theirs = c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "a-job"}, headers=alice).json()["id"]
    c.post("/v1/jobs/sleep", json={"durationS": 0.1, "jobId": "a-job-2"}, headers=alice)
    assert c.post("/v1/queues/sleep/pause", headers=root).status_code == 200
    assert c.post("/v1/queues/sleep/resume", headers=root).status_code == 200
    assert c.post(f"/v1/jobs/{theirs}/move", json={"to": "front"}, headers=root).status_code == 200
    assert c.delete(f"/v1/jobs/{theirs}", headers=root).status_code == 200
    assert c.post(f"/v1/jobs/{failed}/retry", headers=root).status_code == 200
    r = c.post("/v1/schedules", json={"name": "nightly", "queue": "sleep", "every": 3600,
                                      "payload": {"durationS": 0.1}}, headers=alice)
    assert r.status_code == 201, r.text
    assert c.delete("/v1/schedules/nightly", params={"userId": "alice"}, headers=root).status_code == 200

    entries = _trail(c, root)
    seen = [(e["action"], e["target"], e["owner"]) for e in reversed(entries)]
    assert seen == [("pause", "sleep", None), ("resume", "sleep", None), ("move", theirs, "alice"),
                    ("cancel", theirs, "alice"), ("retry", failed, "alice"),
                    ("schedule.remove", "nightly", "alice")], seen
    assert all(e["who"] == "root" and e["admin"] and e["ip"] and e["at"] > 0 for e in entries)
    assert entries[3]["detail"]["how"] == "front"
    # filtered, and paged
    assert [e["action"] for e in _trail(c, root, action="cancel")] == ["cancel"]
    first = c.get("/v1/audit", params={"limit": 4}, headers=root).json()
    rest = _trail(c, root, cursor=first["nextCursor"])
    assert [e["id"] for e in first["entries"] + rest] == [e["id"] for e in entries]
    # a user may not read it, nor guess at it
    for params in ({}, {"by": "root"}, {"cursor": "0-0"}):
        r = c.get("/v1/audit", params=params, headers=alice)
        assert r.status_code == 403 and "sleep" not in r.text, r.text


def test_tokens_issued_by_the_cli_are_audited(make_client: Any, tokens: Any, redis_url: str, prefix: str) -> None:
    c = make_client()
    env = {**os.environ, "REDIS_URL": redis_url, "DASH_KEY_PREFIX": prefix, "DASH_TOKEN_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "dash_ray.cli", "token", "--user", "carol", "--ttl-h", "2"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().count(".") == 2 and "not recorded" not in out.stderr
    [entry] = _trail(c, auth(tokens("root", admin=True)), action="token.issue")
    assert entry["target"] == "carol" and entry["who"].startswith("cli:") and entry["detail"]["ttl_s"] == 7200
    # a Redis it cannot reach: the token is still printed, the missing record said
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    out = subprocess.run([sys.executable, "-m", "dash_ray.cli", "token", "--user", "dave"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().count(".") == 2 and "not recorded" in out.stderr
