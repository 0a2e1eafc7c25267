"""A job's status has one owner (models/status.py): the derivation from BullMQ's state and our
hash, the guess used for lists, `is_final`, and their users (the store's view, the events, the
hash fields the lifecycle writes); and the ETA rules of queues/eta.py. No Redis, no Ray."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from dash_ray.models import JobCompletedEvent, JobFailedEvent, JobProgressEvent
from dash_ray.models.status import (
    FAILURES,
    FINAL,
    JobStatus,
    Status,
    derive,
    guess_bull_state,
    is_failure,
    is_final,
)
from dash_ray.models.views import JobView
from dash_ray.queues.eta import MIN_PROGRESS, estimate, jobs_ahead, left_from_progress
from dash_ray.queues.events import event_from_state
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import state_fields
from dash_ray.queues.reader import view_of
from dash_ray.queues.store import JobStore

# What BullMQ's getState answers ("waiting" for the wait and paused lists, "unknown": no such job)
BULL_STATES = ("completed", "failed", "delayed", "active", "waiting", "prioritized", "waiting-children", "unknown", None)
OURS = (None, *Status)


def _expected(bull: str | None, ours: str | None, attempts_made: int) -> str:
    """The table the store has always shown, written out case by case."""
    if bull in (None, "unknown"):
        return ours or "waiting"
    if bull == "completed":
        return "completed"
    if bull == "failed":
        return ours if ours in ("cancelled", "expired") else "failed"
    if bull == "active":
        return "active"
    if bull == "delayed":
        return "retrying" if attempts_made else "delayed"
    return "retrying" if attempts_made and ours == "retrying" else "waiting"


@pytest.mark.parametrize("bull", BULL_STATES)
def test_derive_covers_every_bullmq_state(bull: str | None) -> None:
    for ours in OURS:
        mine = None if ours is None else ours.value
        for attempts_made in (0, 1, 3):
            got = derive(bull, mine, attempts_made)
            assert got == _expected(bull, mine, attempts_made), (bull, mine, attempts_made)
            assert got in {s.value for s in Status} and type(got) is str  # a plain string on the wire


def test_bullmq_decides_whether_a_job_is_over_and_our_hash_only_refines() -> None:
    for ours in OURS:
        mine = None if ours is None else ours.value
        assert is_final(derive("completed", mine, 0)) and is_final(derive("failed", mine, 2))
        for bull in ("active", "delayed", "waiting", "prioritized", "waiting-children"):
            assert not is_final(derive(bull, mine, 1)), (bull, mine)  # a stale final hash does not end it
    assert derive("failed", "cancelled", 0) == "cancelled" and derive("failed", "active", 0) == "failed"
    # an attempt being ended as cancelled (BullMQ has moved it, our final event not written yet)
    assert derive("failed", "active", 1, cancelling=True) == "cancelled"
    assert derive("failed", "failed", 1, cancelling=True) == "failed"  # our final event wins
    assert derive("active", "active", 1, cancelling=True) == "active"
    # ... or as expired (not started by its deadline: taken late, moved to failed unrun)
    assert derive("failed", "waiting", 0, cancelling="expired") == "expired"
    assert derive("failed", "expired", 0) == "expired" and derive(None, "expired", 0) == "expired"


def test_final_and_failures() -> None:
    assert {"completed", "failed", "cancelled", "expired"} == FINAL and {"failed", "cancelled", "expired"} == FAILURES
    for s in Status:
        assert is_final(s) == is_final(s.value) == (s.value in FINAL)
        assert is_failure(s.value) == (is_final(s.value) and s is not Status.COMPLETED)
    assert not is_final(None) and not is_final("unknown") and not is_failure(None)
    view = JobView(id="j", queue="sleep", status="cancelled")
    assert view.done and not JobView(id="j", queue="sleep", status="retrying").done
    assert JobStatus.__args__ == tuple(s.value for s in Status)  # type: ignore[attr-defined]


@pytest.mark.parametrize("ours", OURS)
def test_the_guess_from_the_hashes_agrees_with_bullmq_for_records_we_wrote(ours: Status | None) -> None:
    """A list guesses BullMQ's state from the hashes; for a job in the state our record says
    (attempts made where it is retrying), the guess derives the same status as the truth."""
    mine = None if ours is None else ours.value
    truth = {None: "waiting", "waiting": "waiting", "delayed": "delayed", "active": "active", "retrying": "delayed",
             "completed": "completed", "failed": "failed", "cancelled": "failed", "expired": "failed"}[mine]
    finished = {"finishedOn": "1700000000000"}
    bull = {"completed": {**finished, "returnvalue": "{}"}, "failed": {**finished, "failedReason": "boom"}}.get(
        truth, {"timestamp": "1700000000000"})
    atm = 1 if mine == "retrying" else 0
    guess = guess_bull_state(bull, mine)
    assert guess == truth
    assert derive(guess, mine, atm) == derive(truth, mine, atm) == (mine or "waiting")


def test_the_guess_reads_bullmqs_finish_fields_first() -> None:
    done = {"finishedOn": "1", "returnvalue": "null"}
    assert guess_bull_state(done, "active") == "completed"
    assert guess_bull_state({"finishedOn": "1", "failedReason": "x"}, "active") == "failed"
    assert guess_bull_state({"finishedOn": "1", "failedReason": "x", "returnvalue": "1"}, None) == "completed"
    assert guess_bull_state({}, "retrying") == "delayed" and guess_bull_state({}, "completed") == "waiting"


def _fields(arg: str) -> dict[str, str]:
    parts = arg.split("\x1f")
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_what_the_lifecycle_writes_is_what_the_events_read_back() -> None:
    common: dict[str, Any] = {"job_id": "j1", "queue": "sleep", "user_id": "alice", "ts": 5.0}
    written: list[JobProgressEvent | JobCompletedEvent | JobFailedEvent] = [
        JobProgressEvent(status="waiting", message="waiting", **common),
        JobProgressEvent(status="active", progress=40, message="step", attempt=1, attempts=3, **common),
        JobProgressEvent(status="retrying", message="again", **common),
        JobCompletedEvent(result={"ok": 1}, **common),
        JobFailedEvent(error="boom", **common),
        JobFailedEvent(error="cancelled", status="cancelled", **common),
    ]
    for event in written:
        state = {**_fields(state_fields(event)), "seq": "7"}
        assert state["status"] == event.status
        back = event_from_state("j1", state)
        assert isinstance(back, JobProgressEvent | JobCompletedEvent | JobFailedEvent) and type(back) is type(event)
        assert back.status == event.status
        assert back.seq == 7 and back.user_id == "alice"
        if isinstance(back, JobCompletedEvent):
            assert back.result == {"ok": 1} and state["progress"] == "100"
        if isinstance(back, JobFailedEvent):
            assert isinstance(event, JobFailedEvent) and back.error == event.error and is_failure(back.status)
    assert event_from_state("j1", {}) is None


@pytest.fixture
def store() -> JobStore:
    return JobStore(Redis(), prefix="t", queues=("sleep",))  # never connects: a running job's ETA reads no Redis


def test_the_stores_view_derives_the_status_and_shows_errors_of_failures_and_retries() -> None:
    data = json.dumps({"userId": "alice", "durationS": 1})
    opts = json.dumps({"attempts": 3})
    cases = [  # (BullMQ state, our status, attempts made, what is shown)
        ("completed", "active", 1, "completed"),
        ("failed", "cancelled", 1, "cancelled"),
        ("failed", "active", 3, "failed"),
        ("delayed", "retrying", 1, "retrying"),
        ("active", "active", 0, "active"),
        ("prioritized", "waiting", 0, "waiting"),
    ]
    for bull_state, mine, atm, shown in cases:
        ours = {"status": mine, "userId": "alice", "progress": "30", "error": "boom", "seq": "4"}
        bull = {"data": data, "opts": opts, "atm": str(atm), "timestamp": "1000", "returnvalue": "1"}
        view = view_of("j", "sleep", ours, bull, bull_state, 2)
        assert view.status == shown, (bull_state, mine)
        assert view.error == ("boom" if shown in ("failed", "cancelled", "retrying") else None)
        assert view.progress == (100.0 if shown == "completed" else 30.0)
        assert view.queue_position == (2 if shown == "waiting" else None)
        assert view.done == is_final(shown) and view.seq == 4 and view.attempts == 3
    # a list (no state asked): the guess from the hashes
    finished = {"data": data, "finishedOn": "2000", "failedReason": "boom", "atm": "3"}
    assert view_of("j", "sleep", {"status": "cancelled"}, finished, None, None).status == "cancelled"
    assert view_of("j", "sleep", {"status": "retrying"}, {"data": data, "atm": "1"}, None, None).status == "retrying"


# ------------------------------------------------------------------ ETAs
def test_a_running_jobs_time_left_comes_from_its_pace_from_min_progress_on() -> None:
    assert MIN_PROGRESS == 5.0
    assert left_from_progress(10.0, 50.0) == pytest.approx(10.0)
    assert left_from_progress(4.0, 20.0) == pytest.approx(16.0)
    assert left_from_progress(3.0, MIN_PROGRESS) == pytest.approx(57.0)
    for progress in (0.0, 1.0, 4.99, 100.0, 120.0):
        assert left_from_progress(30.0, progress) is None, progress
    assert left_from_progress(-2.0, 50.0) == 0.0  # a clock that went back: nothing left rather than negative


def test_the_views_eta_of_a_running_job_uses_the_same_rule(store: JobStore) -> None:
    import time

    async def eta(progress: float) -> float | None:
        view = JobView(id="j", queue="sleep", status="active", progress=progress, started_at=time.time() - 10)
        return (await store.reader.etas.with_eta(view)).eta_s

    assert asyncio.run(eta(50)) == pytest.approx(10.0, abs=0.1)
    assert asyncio.run(eta(2)) is None and asyncio.run(eta(100)) is None


def _lrange(items: list[str], start: int, stop: int) -> list[str]:
    n = len(items)
    start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
    return items[max(start, 0):stop + 1]


def _handout(wait: list[str], prioritized: list[str]) -> list[str]:
    """BullMQ's order: the tail of `wait` first, then `prioritized` by rank."""
    return [*reversed(wait), *prioritized]


def _position(wait: list[str], prioritized: list[str], job: str) -> int:
    """What `queue_position` (queues/lua/includes/queue_position.lua) answers."""
    if job in prioritized:
        return len(wait) + prioritized.index(job) + 1
    return len(wait) - wait.index(job)


@pytest.mark.parametrize("most", [2, 500])
def test_jobs_ahead_are_the_ones_bullmq_hands_out_first(most: int) -> None:
    wait = [f"w{i}" for i in range(5)]  # LPUSHed: w4 is the newest, w0 goes first
    prioritized = [f"p{i}" for i in range(4)]
    for job in (*wait, *prioritized):
        position = _position(wait, prioritized, job)
        order = _handout(wait, prioritized)
        assert order.index(job) + 1 == position
        in_wait, in_prio = jobs_ahead(len(wait), prioritized.index(job) if job in prioritized else None, position, most)
        ahead = (_lrange(wait, *in_wait) if in_wait else []) + prioritized[:in_prio]
        expect = order[:position - 1]
        assert set(ahead) <= set(expect) and len(set(ahead)) == len(ahead), (job, ahead, expect)
        if job in prioritized:  # `wait` (its newest `most`) and the first ranks, at most `most` each
            assert ahead == wait[-most:] + prioritized[:min(prioritized.index(job), most)]
        else:  # the `most` after it in `wait` (the rest are counted, not read)
            assert len(ahead) == min(position - 1, most), (job, ahead)
    assert jobs_ahead(0, None, 1) == (None, 0) and jobs_ahead(0, 0, 1) == (None, 0)


class _FakeRedis:
    """Just enough of redis.asyncio for `estimate` (through a Batch): hashes, lists, zsets."""

    def __init__(self) -> None:
        self.connection_pool = object()
        self.hashes: dict[str, dict[str, str]] = {}
        self.lists: dict[str, list[str]] = {}
        self.zsets: dict[str, list[str]] = {}

    def pipeline(self, transaction: bool = True) -> _FakePipe:
        return _FakePipe(self)

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    def hmget(self, key: str, *fields: str) -> list[str | None]:
        return [self.hget(key, f) for f in fields]

    def llen(self, key: str) -> int:
        return len(self.lists.get(key, []))

    def lrange(self, key: str, start: int, stop: int) -> list[str]:
        return _lrange(self.lists.get(key, []), start, stop)

    def zrank(self, key: str, member: str) -> int | None:
        z = self.zsets.get(key, [])
        return z.index(member) if member in z else None

    def zrange(self, key: str, start: int, stop: int) -> list[str]:
        return _lrange(self.zsets.get(key, []), start, stop)


class _FakePipe:
    def __init__(self, redis: _FakeRedis) -> None:
        self.redis = redis
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [getattr(self.redis, name)(*args) for name, args in self.calls]


def test_estimate_plays_the_jobs_ahead_onto_the_workers_with_running_jobs_left_by_progress() -> None:
    import time

    keys = Keys("t")
    r = _FakeRedis()
    r.hashes[keys.costs("sleep")] = {"-": "1.0", "*": "1.0"}  # one second per second asked
    r.hashes[keys.capacity("sleep")] = {"slots": "2"}
    r.lists[keys.bull("sleep", "wait")] = ["me", "a", "b"]  # a and b go first (the tail)
    r.lists[keys.bull("sleep", "active")] = ["run1", "run2"]
    now = time.time()
    for jid, secs in (("me", 4), ("a", 2), ("b", 3), ("run1", 100), ("run2", 8)):
        r.hashes[keys.bull("sleep", jid)] = {"data": json.dumps({"durationS": secs})}
    r.hashes[keys.job("run1")] = {"started": str(now - 10), "progress": "50"}  # its pace: 10 s left
    r.hashes[keys.job("run2")] = {"started": str(now - 3), "progress": "2"}  # too early: 8 - 3 = 5 s left

    got = asyncio.run(estimate(r, keys, "sleep", "me", {"durationS": 4}, 3))
    assert got is not None
    start, finish = got
    # two slots, free at 5 (run2) and 10 (run1): a takes the first (then free at 7), b that one
    # again (free at 10): the next slot is free at 10
    assert start == pytest.approx(10.0, abs=0.1) and finish == pytest.approx(14.0, abs=0.1)
    r.hashes[keys.job("run2")]["progress"] = str(MIN_PROGRESS)  # now its pace counts: 3 s for 5% -> 57 s left
    start, _ = asyncio.run(estimate(r, keys, "sleep", "me", {"durationS": 4}, 3)) or (0, 0)
    assert start == pytest.approx(15.0, abs=0.1)  # slots free at 10 and 57: a until 12, b until 15
