"""The dispatcher's collaborators, each on fakes (no Ray, no Redis): the timetable, the watchdog,
the arbiter, the measurement book, the demand report, the handoff, the outcome writer; then the
whole loop on a fake consumer and fake workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from dash_ray.queues import ActiveJob, CostBook, LockLost
from dash_ray.scheduler.arbiter import Arbiter
from dash_ray.scheduler.contract import BatchReply, Outcome
from dash_ray.scheduler.demand import DemandReport
from dash_ray.scheduler.dispatcher import Dispatcher
from dash_ray.scheduler.handoff import Handoff
from dash_ray.scheduler.measure import Measurements
from dash_ray.scheduler.outcomes import OutcomeWriter
from dash_ray.scheduler.pool import Slot, WorkerPool
from dash_ray.scheduler.preempt import Arbitration
from dash_ray.scheduler.timetable import Timetable
from dash_ray.scheduler.watchdog import Watchdog

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- fakes
def job(job_id: str, *, priority: int = 0, data: dict[str, Any] | None = None, timeout_s: float | None = None,
        deferred: str | None = None) -> ActiveJob:
    return ActiveJob(id=job_id, queue="sleep", data=data or {"userId": "u"}, token=f"t-{job_id}", attempts_made=0,
                     attempts=3, priority=priority, created_at=0.0, bull=None, timeout_s=timeout_s,
                     deferred_failure=deferred)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Remote:
    """A Ray method: `remote(*args)` records the call and returns what `answer` makes of it."""

    def __init__(self, answer: Callable[..., Any] = lambda *a, **k: None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answer = answer

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        return self.answer(*args, **kwargs)


class Worker:
    """A worker actor's handle: runs every job to `done` (or what `outcome` says) at once."""

    def __init__(self, n: int = 0, outcome: Callable[[Any], Outcome] | None = None) -> None:
        self.n = n
        self.outcome = outcome or (lambda ctx: Outcome("done", result={"ok": ctx.id}, run_s=0.001))
        self.run = Remote(self._run)
        self.cancel = Remote()
        self.info = Remote(self._info)
        self.ready = Remote(self._ready)
        self.silent = False

    async def _run(self, ctxs: list[Any], budget_s: float, together: bool = False) -> BatchReply:
        await asyncio.sleep(0)
        return BatchReply([self.outcome(c) for c in ctxs], models=("m",))

    async def _info(self) -> dict[str, Any]:
        if self.silent:
            await asyncio.Event().wait()
        return {}

    async def _ready(self, preload: list[str] | None = None) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"pid": 100 + self.n}


def slot(n: int = 1, handle: Any = None) -> Slot:
    return Slot(id=n, handle=handle or Worker(n), state="busy", pid=100 + n)


class Board:
    """A fake CapacityBoard."""

    def __init__(self, caps: dict[str, dict[str, str]] | None = None) -> None:
        self.caps = caps or {}
        self.asked: list[str] = []
        self.cleared: list[str] = []
        self.reports: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    async def capacities(self, queues: Any) -> dict[str, dict[str, str]]:
        return {q: self.caps.get(q, {}) for q in queues}

    async def preemptions(self, ids: Any) -> dict[str, int]:
        return {i: self.counts.get(i, 0) for i in ids}

    async def ask_yield(self, job_id: str) -> None:
        self.asked.append(job_id)

    async def clear_yield(self, job_id: str) -> None:
        self.cleared.append(job_id)

    async def report_capacity(self, costs: Any, slots: int, busy: int, pending: int = 0, starved_since: float = 0.0,
                              **kw: Any) -> None:
        self.reports.append({"slots": slots, "busy": busy, "pending": pending, "starved": starved_since, **kw})


class Lifecycle:
    def __init__(self) -> None:
        self.waits: list[tuple[Any, ...]] = []

    async def wait_again(self, *args: Any) -> None:
        self.waits.append(args)


class Adoption:
    def __init__(self) -> None:
        self.adopted = 0
        self.pruned = 0

    async def adopt(self) -> int:
        self.adopted += 1
        return 0

    async def prune_fair(self) -> int:
        self.pruned += 1
        return 0


class Consumer:
    """A fake QueueConsumer: a list of waiting jobs, and what was done with each."""

    name = "sleep"
    id = "fake"

    def __init__(self, jobs: list[ActiveJob] | None = None) -> None:
        self.waiting = list(jobs or [])
        self.completed: list[tuple[str, Any]] = []
        self.failed: list[tuple[str, str, dict[str, Any]]] = []
        self.requeued: list[str] = []
        self.started: set[str] = set()
        self.board = Board()
        self.adoption = Adoption()
        self.lifecycle = Lifecycle()
        self.fail_errors: list[BaseException] = []  # raised by the next fail() calls, in order
        self.maintained = False
        self.closed = False

    def _pop(self, n: int) -> list[ActiveJob]:
        out, self.waiting = self.waiting[:n], self.waiting[n:]
        return out

    async def take(self, block_s: float = 0.0, up_to: int = 1) -> list[ActiveJob]:
        if not self.waiting:
            await asyncio.sleep(0.001)
        return self._pop(up_to)

    async def take_more(self, n: int) -> list[ActiveJob]:
        return self._pop(n)

    async def complete(self, done: list[tuple[ActiveJob, Any]], fetch_next: int = 0,
                       ) -> tuple[list[ActiveJob], list[LockLost]]:
        self.completed += [(j.id, r) for j, r in done]
        return self._pop(min(fetch_next, len(done))), []

    async def fail(self, job: ActiveJob, error: str, **kw: Any) -> None:
        if self.fail_errors:
            raise self.fail_errors.pop(0)
        self.failed.append((job.id, error, kw))

    async def requeue(self, *jobs: ActiveJob) -> bool:
        self.requeued += [j.id for j in jobs]
        return True

    async def attempts_started(self, jobs: list[ActiveJob]) -> set[str]:
        return {j.id for j in jobs} & self.started

    async def backlog(self, ahead_s: float = 0.0) -> int:
        return len(self.waiting)

    async def expire_overdue(self) -> int:
        self.swept = getattr(self, "swept", 0) + 1
        return 0

    async def settle_followers(self) -> int:
        return 0

    async def resolve_inputs(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        return jobs

    def start_maintenance(self) -> None:
        self.maintained = True

    async def close(self) -> None:
        self.closed = True


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (by yielding to the loop) until `check()` holds."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


# ---------------------------------------------------------------- timetable
async def test_the_timetable_runs_each_entry_on_its_period_and_a_failure_stops_no_other(
        caplog: pytest.LogCaptureFixture) -> None:
    tt = Timetable(0.5, name="q")
    ran: list[str] = []

    async def upkeep() -> None:
        ran.append("upkeep")
        raise ConnectionError("Redis away")

    tt.every(0.5, "watch", lambda: ran.append("watch"))
    tt.every(1.0, "upkeep", upkeep)
    tt.every(2.0, "beat", lambda: ran.append("beat"))
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            assert await tt.tick() == 0.5
    assert ran == ["watch", "watch", "upkeep", "watch", "watch", "upkeep", "beat"]
    warned = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warned) == 1  # one warning per outage, not one per tick


async def test_a_timetable_entry_that_fails_badly_is_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    tt = Timetable(0.5, name="q")
    tt.every(0.5, "bad", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR):
        await tt.tick()
    assert any(r.exc_info for r in caplog.records if "bad failed on q" in r.getMessage())


# ---------------------------------------------------------------- watchdog
async def test_the_watchdog_kills_the_worker_of_a_job_past_its_limit_once() -> None:
    clock, killed = Clock(), list[Any]()
    dog = Watchdog(killed.append, clock=clock)
    s = slot()
    dog.track("a", s, 10.0)
    dog.watch()
    assert killed == []
    clock.now += 10.0
    dog.watch()
    dog.watch()  # killed already: not again
    assert killed == [s.handle] and dog.killed(s) == "timeout: ran longer than 10s"
    assert dog.killed(s) is None  # told once


async def test_a_cancel_tells_the_worker_and_kills_it_after_the_grace() -> None:
    clock, killed = Clock(), list[Any]()
    dog = Watchdog(killed.append, cancel_grace_s=3.0, clock=clock)
    s = slot()
    dog.track("a", s, 600.0)
    dog.on_cancel("cancel-channel", "a")
    dog.on_cancel("cancel-channel", "not-running")  # nothing to do
    assert s.handle.cancel.calls == [("a",)]
    clock.now += 3.0
    dog.watch()
    assert killed == [s.handle] and dog.killed(s) == "cancelled"


async def test_an_untracked_job_is_not_watched() -> None:
    clock, killed = Clock(), list[Any]()
    dog = Watchdog(killed.append, clock=clock)
    s = slot()
    dog.track("a", s, 1.0)
    dog.untrack("a")
    clock.now += 5
    dog.watch()
    assert killed == [] and dog.running == {} and dog.deadlines == {}


async def test_a_busy_worker_that_stops_answering_its_heartbeat_is_killed() -> None:
    killed: list[Any] = []
    dog = Watchdog(killed.append, heartbeat_timeout_s=0.05)
    quiet, fine = slot(1), slot(2)
    quiet.handle.silent = True
    dog.track("a", quiet, 600.0)
    dog.track("b", fine, 600.0)
    dog.heartbeat()
    pings = list(dog.pings.values())
    dog.heartbeat()  # one ping in flight per worker
    assert len(dog.pings) == 2
    await asyncio.gather(*pings)
    assert killed == [quiet.handle] and "stopped answering" in (dog.killed(quiet) or "")
    assert dog.pings == {}


# ---------------------------------------------------------------- arbiter
async def test_the_arbiter_notes_since_when_its_queue_is_starved() -> None:
    clock = Clock(50.0)
    arb = Arbiter("q", Board(), clock=clock)
    assert arb.starving(pending=1, backlog=0) == 0.0
    assert arb.starving(pending=1, backlog=3) == 50.0
    clock.now = 60.0
    assert arb.starving(pending=2, backlog=3) == 50.0  # since then, not now
    assert arb.starving(pending=0, backlog=3) == 0.0


async def test_a_preemptible_queue_asks_its_lowest_priority_job_to_yield_to_a_starved_queue() -> None:
    clock = Clock(1000.0)
    board = Board({"generation": {"starved": "900"}})
    arbitration = Arbitration(preemptible=True, yields_to=("generation",), peers=("generation", "upscaling"),
                              after_s=60.0)
    arb = Arbiter("training", board, arbitration, clock=clock)
    running = {"hi": job("hi", priority=1), "lo": job("lo", priority=5), "mid": job("mid", priority=3)}
    await arb.arbitrate(backlog=2, running=running)
    assert board.asked == ["lo"] and arb.peers_starved and not arb.yield_idle
    await arb.arbitrate(backlog=2, running=running)
    assert board.asked == ["lo"]  # one at a time: none while the one asked still runs
    await arb.ended(["hi", "lo"])
    assert board.cleared == ["lo"] and arb.asked == set()
    await arb.arbitrate(backlog=0, running={"mid": running["mid"]})
    assert board.asked == ["lo", "mid"] and arb.yield_idle  # nothing waits here: idle workers go


async def test_a_queue_not_preemptible_only_lets_idle_workers_go() -> None:
    board = Board({"generation": {"starved": "999"}})
    arb = Arbiter("upscaling", board, Arbitration(peers=("generation",)), clock=Clock(1000.0))
    await arb.arbitrate(backlog=0, running={"a": job("a", priority=5)})
    assert board.asked == [] and not arb.peers_starved and not arb.yield_idle  # starved 1 s < idle_after_s
    arb.clock = Clock(1010.0)
    await arb.arbitrate(backlog=0, running={"a": job("a", priority=5)})
    assert arb.yield_idle and board.asked == []


# ---------------------------------------------------------------- measurements
def test_short_jobs_are_batched_within_the_budget() -> None:
    book = Measurements("sleep", batch_budget_s=0.02, max_batch=8)
    assert book.batch_size() == 1  # nothing measured yet
    book.ran(job("a"), Outcome("done", run_s=0.005))
    assert book.batch_size() == 4
    for _ in range(50):
        book.ran(job("a"), Outcome("done", run_s=0.0001))
    assert book.batch_size() == 8  # at most max_batch
    for _ in range(50):
        book.ran(job("a"), Outcome("failed", run_s=0.5))
    assert book.batch_size() == 1
    assert Measurements("sleep", batch_budget_s=0.0).batch_size() == 1


def test_costs_are_the_run_times_scaled_to_the_rounds_wall_time() -> None:
    book = Measurements("sleep")
    jobs = [job("a"), job("b"), job("c")]
    outcomes = [Outcome("done", run_s=0.1), Outcome("done", run_s=0.3), Outcome("failed", run_s=0.1, error="x")]
    book.costed(jobs, outcomes, wall_s=1.0)  # 0.5 s ran in a 1 s round: each done job counts double
    expected = CostBook()
    for seconds in (0.2, 0.6):
        expected.measured("sleep", {}, seconds)
    assert book.costs.dirty and book.costs.per_unit == pytest.approx(expected.per_unit)


def test_memory_peaks_size_the_next_workers_and_are_written_once() -> None:
    book = Measurements("generation", gpu_fraction=0.5)
    assert book.worker_fraction() == 0.5 and book.new_peaks() is None
    book.ran(job("a", data={"settings": {"model": "m"}}), Outcome("done", run_s=1.0, memory=("cuda", 1 << 30)))
    book.ran(job("b"), Outcome("failed", run_s=1.0))  # a failure carries a peak only when out of memory
    book.gpus_seen([Slot(1, None, gpu_bytes=16 << 30), Slot(2, None)])
    assert book.memory.gpu_bytes == 16 << 30
    assert book.worker_fraction() == pytest.approx(1 / 12, abs=1e-6)
    peaks = book.new_peaks()
    assert peaks is not None and list(peaks.values()) == [("cuda", 1 << 30)]
    assert book.new_peaks() is None  # written: until they change again
    book.gpus_seen([])
    assert book.memory.gpu_bytes == 16 << 30  # kept
    assert Measurements("sleep").worker_fraction() == 0.0


# ---------------------------------------------------------------- demand
async def test_the_demand_report_tells_the_ledger_on_change_and_every_refresh() -> None:
    told: list[int] = []
    clock = Clock(0.0)
    fail = [False]

    async def want(count: int) -> None:
        if fail[0]:
            raise RuntimeError("ledger restarting")
        told.append(count)

    rep = DemandReport("q", want, max_workers=4, refresh_s=30.0, clock=clock)
    assert rep.enabled and not DemandReport("q", None).enabled
    await rep.report(backlog=3, busy=0)
    await rep.report(backlog=2, busy=1)  # the same 3
    assert told == [3] and rep.wanted == 3
    await rep.report(backlog=10, busy=2)
    assert told == [3, 4]  # at most max_workers
    clock.now = 31.0
    await rep.report(backlog=10, busy=2)
    assert told == [3, 4, 4]  # refreshed: the ledger may have forgotten
    fail[0] = True
    await rep.report(backlog=0, busy=0)
    assert rep.wanted == 4  # not told: tried again next round
    fail[0] = False
    await rep.report(backlog=0, busy=0)
    assert told[-1] == 0 and rep.wanted == 0
    await DemandReport("q", None).report(5, 5)  # no ledger: nothing to do


# ---------------------------------------------------------------- handoff
async def test_a_batch_goes_to_the_worker_in_one_call_with_its_limits_watched() -> None:
    consumer, killed = Consumer(), list[Any]()
    pool = WorkerPool(lambda: None, killed.append)
    dog = Watchdog(killed.append)
    hand = Handoff(consumer, pool, dog, timeout_s=60.0, batch_budget_s=0.02)
    seen: list[dict[str, Any]] = []

    def outcome(ctx: Any) -> Outcome:
        seen.append({"id": ctx.id, "limit": dog.deadlines[ctx.id][1], "active": set(hand.active)})
        return Outcome("done", result=ctx.id, run_s=0.001)

    s = slot(1, Worker(1, outcome))
    outcomes, models, alive = await hand.run(s, [job("a", timeout_s=5.0), job("b"), job("bad", deferred="no input")])
    assert [o.kind for o in outcomes] == ["done", "done", "failed"] and outcomes[2].error == "no input"
    assert alive and models == ("m",) and hand.calls == 1
    assert s.handle.run.calls[0][1] == 0.04  # a batch may run for twice the budget
    assert [x["limit"] for x in seen] == ["timeout: ran longer than 5s", "timeout: ran longer than 60s"]
    assert seen[0]["active"] == {"a", "b"}
    assert hand.active == {} and dog.running == {} and dog.deadlines == {}


async def test_a_job_cancelled_between_its_take_and_its_worker_reaches_the_worker_stopped() -> None:
    """A take announced the job's start; the cancel came before the job reached a worker (no
    worker to tell yet): the worker gets it with `stop`, and ends it before it runs."""
    consumer, killed = Consumer(), list[Any]()
    hand = Handoff(consumer, WorkerPool(lambda: None, killed.append), Watchdog(killed.append))
    got: dict[str, Any] = {}

    def outcome(ctx: Any) -> Outcome:
        got[ctx.id] = (ctx.announced, ctx.stop)
        return Outcome("cancelled", error="cancelled") if ctx.stop else Outcome("done", run_s=0.001)

    hand.cancelled_early["second"] = time.monotonic()  # an earlier attempt's: before this one's take
    first, second = job("first"), job("second")
    first.announced = True
    hand.cancelled_early["first"] = time.monotonic()
    outcomes, _models, _alive = await hand.run(slot(1, Worker(1, outcome)), [first, second])
    assert got == {"first": (True, True), "second": (False, False)}
    assert [o.kind for o in outcomes] == ["cancelled", "done"] and not hand.cancelled_early


def same_batch(data: dict[str, Any]) -> tuple[str, int]:
    return "k", 1


async def test_a_batched_pass_lets_a_member_go_alone_but_never_its_last() -> None:
    consumer, killed = Consumer(), list[Any]()
    consumer.batch_of = same_batch
    pool = WorkerPool(lambda: None, killed.append)
    dog = Watchdog(killed.append, clock=Clock())
    hand = Handoff(consumer, pool, dog, timeout_s=60.0)
    gate = asyncio.Event()
    seen: dict[str, Any] = {}

    async def run(ctxs: list[Any], budget_s: float, together: bool = False) -> BatchReply:
        seen["together"], seen["budget"] = together, budget_s
        await gate.wait()
        return BatchReply([Outcome("done", result=c.id, run_s=1.0) for c in ctxs])

    w = Worker(1)
    w.run = Remote(run)
    s = slot(1, w)
    task = asyncio.create_task(hand.run(s, [job("a"), job("b", timeout_s=1.0), job("c")]))
    while "together" not in seen:
        await asyncio.sleep(0)
    assert seen == {"together": True, "budget": 0.0}  # one pass: no sequential budget
    assert hand.detach("zz") is None
    assert hand.detach("b") is not None and hand.detach("b") is None  # once
    assert "b" not in dog.deadlines and "b" in hand.settled  # its worker is not killed for it
    assert hand.detach("a") is not None
    assert hand.detach("c") is None  # the last one: the pass ends the usual way (stopped, or killed)
    assert "c" in dog.deadlines
    gate.set()
    outcomes, _models, alive = await task
    jobs, kept = hand.take_settled([job("a"), job("b"), job("c")], outcomes)
    assert alive and [j.id for j in jobs] == ["c"] and [o.result for o in kept] == ["c"]
    assert hand.settled == set() and hand.together == {}


async def test_a_member_past_its_own_limit_ends_alone_and_the_pass_runs_on() -> None:
    killed: list[Any] = []
    clock = Clock()
    dog = Watchdog(killed.append, clock=clock)
    ended: list[tuple[str, str]] = []
    members = {"a", "b"}

    def overdue(job_id: str, why: str) -> bool:
        if len(members) < 2:
            return False
        members.discard(job_id)
        dog.untrack(job_id)
        ended.append((job_id, why))
        return True

    dog.overdue = overdue
    s = slot(1)
    dog.track("a", s, 1.0)
    dog.track("b", s, 60.0)
    clock.now += 2
    dog.watch()
    assert ended == [("a", "timeout: ran longer than 1s")] and killed == []
    clock.now += 60
    dog.watch()  # the pass's last member past its limit: the worker is killed
    assert killed == [s.handle] and dog.kill_reasons[s.id] == "timeout: ran longer than 60s"


async def test_when_a_worker_dies_its_started_jobs_fail_and_the_others_go_back() -> None:
    consumer, killed = Consumer(), list[Any]()
    pool = WorkerPool(lambda: None, killed.append)
    dog = Watchdog(killed.append)
    hand = Handoff(consumer, pool, dog)

    def crash(ctx: Any) -> Outcome:
        raise RuntimeError("actor died")

    s = slot(1, Worker(1, crash))
    pool.slots[s.id] = s
    consumer.started = {"c"}
    outcomes, _models, alive = await hand.run(s, [job("a"), job("b"), job("c")])
    assert not alive and s.state == "dead" and killed == [s.handle]
    assert [o.kind for o in outcomes] == ["failed", "skipped", "failed"]  # the first always counts as started
    assert "the worker process died" in outcomes[0].error and outcomes[0].retry

    s2 = slot(2, Worker(2, crash))
    dog.kill_reasons[s2.id] = "cancelled"  # the watchdog killed it after a cancel
    outcomes, _models, _alive = await hand.run(s2, [job("d")])
    assert outcomes == [Outcome("cancelled", error="cancelled")]


# ---------------------------------------------------------------- outcomes
def writer(consumer: Consumer, max_failures: int = 3) -> OutcomeWriter:
    book = Measurements("sleep")
    return OutcomeWriter(consumer, book, Arbiter("sleep", consumer.board), max_failures=max_failures)


async def test_completed_jobs_are_completed_together_and_fetch_the_next_ones() -> None:
    consumer = Consumer([job("n1"), job("n2"), job("n3")])
    out = writer(consumer)
    out.book.cost_s = 0.005  # short jobs: batches of 4
    s = slot()
    nxt = await out.record(s, [job("a"), job("b")], [Outcome("done", result=1), Outcome("done", result=2)],
                           fetch=True)
    assert consumer.completed == [("a", 1), ("b", 2)] and out.completed == 2
    assert [j.id for j in nxt] == ["n1", "n2", "n3"]  # two fetched with the completions, one more taken
    assert await out.record(s, [job("c")], [Outcome("done")], fetch=False) == []


async def test_failures_are_written_and_a_worker_that_keeps_failing_fetches_no_more() -> None:
    consumer = Consumer([job("next")])
    out = writer(consumer, max_failures=2)
    s = slot()
    await out.record(s, [job("a")], [Outcome.failure("boom")], fetch=True)
    assert s.failures == 1 and out.failed == 1 and consumer.failed[0][:2] == ("a", "boom")
    await out.record(s, [job("b")], [Outcome.failure("bad input", retry=False)], fetch=True)
    assert s.failures == 1  # a bad input says nothing of the worker
    await out.record(s, [job("c")], [Outcome("cancelled", error="cancelled")], fetch=True)
    assert consumer.failed[-1][2]["cancelled"] is True
    nxt = await out.record(s, [job("d"), job("e")], [Outcome("done"), Outcome.failure("CUDA error: illegal address")],
                           fetch=True)
    assert s.failures == 2 and nxt == []  # a CUDA error: the worker is done for
    assert consumer.waiting and consumer.completed == [("d", None)]


async def test_a_write_is_retried_while_redis_is_away_and_a_lost_lock_is_dropped() -> None:
    consumer = Consumer()
    out = writer(consumer)
    consumer.fail_errors = [ConnectionError("down"), ConnectionError("down")]
    await out.record(slot(), [job("a")], [Outcome.failure("boom")], fetch=False)
    assert consumer.failed[0][0] == "a" and out.failed == 1
    consumer.fail_errors = [LockLost("job b: cannot fail")]
    await out.record(slot(), [job("b")], [Outcome.failure("boom")], fetch=False)
    assert out.failed == 1 and len(consumer.failed) == 1


async def test_skipped_jobs_go_back_and_a_preempted_one_retires_its_worker() -> None:
    consumer = Consumer([job("next")])
    out = writer(consumer)
    out.arbiter.asked.add("p")
    s = slot()
    nxt = await out.record(s, [job("p"), job("q")],
                           [Outcome("skipped", error="yielded its GPU", preempted=True), Outcome("skipped")],
                           fetch=True)
    assert consumer.requeued == ["p", "q"] and out.requeued == 2 and out.preempted == 1
    assert [w[0] for w in consumer.lifecycle.waits] == ["p"]  # it had started: it says it waits again
    assert s.retire and nxt == []
    assert consumer.board.cleared == ["p"]  # no longer asked to yield


# ---------------------------------------------------------------- the whole loop
async def test_the_dispatcher_runs_a_queue_on_fake_workers_and_drains() -> None:
    jobs = [job(f"j{i}") for i in range(6)]
    consumer = Consumer(jobs)
    made: list[Worker] = []

    def factory() -> Worker:
        made.append(Worker(len(made)))
        return made[-1]

    pool = WorkerPool(factory, lambda h: None, max_pending=2)
    wanted: list[int] = []

    async def want(count: int) -> None:
        wanted.append(count)

    d = Dispatcher(consumer, pool, want_workers=want)  # type: ignore[arg-type]
    task = asyncio.create_task(d.run())
    await until(lambda: len(consumer.completed) == 6)
    await until(lambda: consumer.board.reports != [] and consumer.adoption.adopted > 0 and getattr(consumer, 'swept', 0) > 0)
    assert consumer.maintained and {j for j, _ in consumer.completed} == {j.id for j in jobs}
    out = await d.drain(5.0)
    await asyncio.wait_for(task, 5.0)
    await d.close()
    assert out == {"finished": out["finished"], "unfinished": 0, "requeued": 0} and consumer.closed
    stats = d.stats()
    assert stats["completed"] == 6 and stats["running"] == 0 and stats["stopping"]
    assert 1 <= stats["worker_calls"] <= 6 and wanted


async def test_the_dispatcher_loop_survives_a_redis_outage(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer([job("a")])
    down = [2]
    real_backlog = consumer.backlog

    async def backlog(ahead_s: float = 0.0) -> int:
        if down[0]:
            down[0] -= 1
            raise ConnectionError("Redis away")
        return await real_backlog(ahead_s)

    consumer.backlog = backlog  # type: ignore[method-assign]
    pool = WorkerPool(lambda: Worker(), lambda h: None)
    d = Dispatcher(consumer, pool)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(d.run())
        await until(lambda: consumer.completed == [("a", {"ok": "a"})])
        await d.drain(1.0)
        await asyncio.wait_for(task, 5.0)
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
