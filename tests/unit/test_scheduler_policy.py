"""Scheduler policy without Ray: resources, the reporter's throttle, the worker pool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from dash_ray.config import load_settings
from dash_ray.errors import JobCancelled
from dash_ray.models import JobProgressEvent
from dash_ray.scheduler import JobContext, Reporter, node_resources, queue_specs
from dash_ray.scheduler.demand import DemandLedger, wanted_workers
from dash_ray.scheduler.pool import WorkerPool
from dash_ray.scheduler.resources import logical_gpus
from dash_ray.scheduler.runner import Publisher


def test_specs_and_node_resources() -> None:
    specs = queue_specs(load_settings())
    assert node_resources(specs) == {"dash_training": 1.0, "dash_upscaling": 3.0, "dash_generation": 5.0}
    opts = {s.name: s.actor_options() for s in specs}
    assert opts["generation"]["num_gpus"] == 0.2 and opts["generation"]["resources"] == {"dash_generation": 1}
    assert opts["training"]["num_gpus"] == 1.0
    assert logical_gpus(specs) == 3.0  # 1.0 + 3 x 0.33 + 5 x 0.2, rounded up


class FakeBus:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.times: list[float] = []

    def publish(self, events: list[Any], tokens: list[str] | None = None) -> list[bool]:
        for e in events:
            self.events.append(e)
            self.times.append(time.monotonic())
        return [getattr(e, "message", "") == "cancel me" for e in events]


def test_reporter_throttles_keeps_last_and_never_decreases() -> None:
    bus = FakeBus()
    pub = Publisher(bus)
    job = JobContext(id="j", queue="generation", data={})
    rep = Reporter(job, pub, max_hz=20)
    for i in range(200):
        rep.progress(i / 2, f"{i}")
        time.sleep(0.002)
    rep.progress(10, "lower")  # never goes down
    rep.flush()
    pub.close()
    sent = [e.progress for e in bus.events]
    assert sent == sorted(sent) and sent[-1] == 99.5
    elapsed = bus.times[-1] - bus.times[0]
    assert len(sent) <= elapsed * 20 + 2, (len(sent), elapsed)
    assert bus.events[-1].message == "lower"


class GatedBus(FakeBus):
    """A bus whose first publish blocks until `gate` is set (the publisher thread is busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def publish(self, events: list[Any], tokens: list[str] | None = None) -> list[bool]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return super().publish(events, tokens)


def test_a_held_report_never_overtakes_one_sent_after_its_timer_was_queued() -> None:
    """The interleaving behind a progress bar that stepped back (24.0 sent before 23.5): a held
    report's timer waits in the publisher's queue; the runner then sends a report at once
    (its turn came) and holds a newer one. The timer must not publish the newer one ahead of
    the report queued before it. Driven by a fake clock and a gated bus: no timing involved."""
    bus = GatedBus()
    pub = Publisher(bus)
    now = [1.0]
    rep = Reporter(JobContext(id="j", queue="generation", data={}), pub, max_hz=20, clock=lambda: now[0])
    rep.progress(1, "sent at once")  # the publisher thread takes it and blocks in the bus
    assert bus.entered.wait(10)
    now[0] = 1.01
    rep.progress(2, "held")  # too soon: held, its timer queued behind the blocked publish
    now[0] = 1.2
    rep.progress(3, "sent at once, queued after the timer")
    now[0] = 1.21
    rep.progress(4, "held again")  # the timer, already queued, will find this one
    bus.gate.set()
    deadline = time.monotonic() + 10  # the publisher thread runs the timer and sends all three
    while len(bus.events) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    rep.flush()
    pub.close()
    assert [e.progress for e in bus.events] == [1, 3, 4]


def test_reporter_cancel_raises_at_next_check() -> None:
    bus = FakeBus()
    pub = Publisher(bus)
    flag = threading.Event()
    rep = Reporter(JobContext(id="j", queue="q", data={}), pub, cancelled=flag)
    rep.progress(1)
    flag.set()
    with pytest.raises(JobCancelled):
        rep.progress(2)
    with pytest.raises(JobCancelled):
        rep.check()
    pub.close()


def test_publisher_sets_flag_when_a_cancel_was_requested() -> None:
    bus = FakeBus()
    pub = Publisher(bus)
    flag = threading.Event()
    pub.send(JobProgressEvent(job_id="j", queue="q", status="active", message="cancel me"), cancel=flag)
    pub.wait()
    pub.close()
    assert flag.is_set()


class Handle:
    """A worker actor's handle: ready at once (with `cold`, its start's phases, if given)."""

    def __init__(self, n: int, cold: Any = None) -> None:
        self.n = n
        self.preload: list[str] | None = None
        handle = self

        class Ready:
            async def remote(_self, preload: list[str] | None = None) -> dict[str, Any]:
                handle.preload = preload
                await asyncio.sleep(0)
                info = {"pid": 1000 + n, "models": ["m"] if n % 2 else []}
                return info if cold is None else {**info, "cold": cold}

        self.ready = Ready()


def handles(made: list[Handle]) -> Callable[[], Handle]:
    """A pool's factory of fake handles, each kept in `made`."""
    def factory() -> Handle:
        made.append(Handle(len(made)))
        return made[-1]

    return factory


async def test_pool_spawns_reuses_prefers_model_and_reaps() -> None:
    made: list[Handle] = []
    killed: list[Handle] = []
    factory = handles(made)
    pool = WorkerPool(factory, killed.append, idle_s=0.2, max_pending=2)
    assert pool.starter.spawn(5) == 2  # bounded pending
    await pool.wait_change(1)
    await asyncio.sleep(0.01)
    assert pool.stats()["idle"] == 2
    slot = pool.take_idle()
    assert slot is not None
    better = pool.prefer(slot, "m")
    assert "m" in better.models
    pool.release(better)
    time.sleep(0.25)
    assert pool.reap_idle() == 2 and len(killed) == 2 and len(pool.slots) == 0


def test_milestones_are_never_dropped_even_in_a_fast_loop() -> None:
    bus = FakeBus()
    pub = Publisher(bus)
    rep = Reporter(JobContext(id="j", queue="q", data={}), pub, max_hz=20)
    for step in range(1, 51):
        rep.progress(step * 2 - 1, f"inside step {step}")  # throttled
        rep.progress(step * 2, f"step {step}/50", step=step, steps=50, milestone=True)
    rep.flush()
    pub.close()
    assert [e.step for e in bus.events if e.step] == list(range(1, 51))
    assert len([e for e in bus.events if not e.step]) <= 3


class SlowBus(FakeBus):
    def publish(self, events: list[Any], tokens: list[str] | None = None) -> list[bool]:
        time.sleep(0.001)  # a round trip: the background thread is often mid-batch
        return super().publish(events, tokens)


def test_publisher_keeps_order_when_wait_publishes_on_the_callers_thread() -> None:
    bus = SlowBus()
    pub = Publisher(bus)
    n = 0
    for _job in range(40):
        for _ in range(5):
            n += 1
            pub.send(JobProgressEvent(job_id="j", queue="q", status="active", progress=0, message=str(n)))
        pub.wait()  # returns only once everything sent so far is out
        assert bus.events[-1].message == str(n)
    pub.close()
    assert [e.message for e in bus.events] == [str(i) for i in range(1, n + 1)]


def test_flush_sends_a_held_report_at_once() -> None:
    bus = FakeBus()
    pub = Publisher(bus)
    rep = Reporter(JobContext(id="j", queue="q", data={}), pub, max_hz=2)  # a held report waits 0.5 s
    rep.progress(10, "first")
    rep.progress(20, "held")
    t0 = time.monotonic()
    rep.flush()
    assert time.monotonic() - t0 < 0.25
    assert [e.message for e in bus.events] == ["first", "held"]
    time.sleep(0.6)  # the armed timer finds nothing held: no duplicate
    pub.close()
    assert [e.message for e in bus.events] == ["first", "held"]


async def test_pool_never_holds_more_than_max_size_workers() -> None:
    made: list[Handle] = []
    factory = handles(made)
    pool = WorkerPool(factory, lambda h: None, max_pending=4, max_size=3)
    assert pool.starter.spawn(10) == 3
    await pool.wait_change(1)
    assert pool.starter.spawn(10) == 0 and len(pool.slots) == 3
    pool.discard(next(iter(pool.slots.values())))
    assert pool.starter.spawn(10) == 1 and len(made) == 4


async def _ready(pool: WorkerPool, n: int) -> None:
    for _ in range(100):
        if pool.count("idle") >= n:
            return
        await pool.wait_change(0.05)
    raise AssertionError(f"{n} idle workers expected, {pool.stats()}")


async def test_pool_keeps_min_workers_warm_unless_their_gpu_is_wanted_elsewhere() -> None:
    made: list[Handle] = []
    killed: list[Handle] = []
    factory = handles(made)
    pool = WorkerPool(factory, killed.append, idle_s=0.0, min_workers=2)
    assert pool.keep_warm(["m"]) == 2 and pool.keep_warm() == 0  # pending ones count
    await _ready(pool, 2)
    assert [h.preload for h in made] == [["m"], ["m"]]
    assert pool.starter.spawn(1) == 1
    await _ready(pool, 3)
    assert made[-1].preload == []  # asked to load nothing
    assert pool.reap_idle() == 1 and pool.reap_idle() == 0 and pool.count("idle") == 2
    busy = pool.take_idle()
    assert busy is not None and pool.reap_idle() == 0  # one busy, one idle: both kept
    assert pool.reap_idle(0.0, keep_warm=False) == 1 and pool.stats() == {"pending": 0, "idle": 0, "busy": 1}
    assert pool.keep_warm() == 1 and len(made) == 4
    await _ready(pool, 1)
    pool.release(busy)
    assert pool.reap_idle(0.0, keep_warm=False) == 2 and len(killed) == 4


async def test_keep_warm_starts_within_the_pools_bounds_and_pending_ones_are_kept() -> None:
    assert WorkerPool(lambda: Handle(0), lambda h: None).keep_warm() == 0  # no min_workers: nothing
    pool = WorkerPool(lambda: Handle(0), lambda h: None, max_pending=2, max_size=3, min_workers=5)
    assert pool.keep_warm() == 2  # at most max_pending waiting
    await _ready(pool, 2)
    assert pool.keep_warm() == 1 and pool.keep_warm() == 0 and len(pool.slots) == 3  # at most max_size
    pending = WorkerPool(lambda: Handle(0), lambda h: None, min_workers=1)
    assert pending.starter.spawn(3) == 3
    assert pending.drop_pending(0) == 2 and pending.count("pending") == 1  # the backlog went: one stays warm
    assert pending.drop_pending(0, keep_warm=False) == 1 and not pending.slots
    pending.shutdown()


async def test_the_pool_tallies_its_workers_cold_starts_by_phase() -> None:
    colds: list[Any] = [
        {"processS": 1.0, "importS": 4.0, "loadS": 2.0, "readyS": 7.0},
        {"processS": 3.0, "importS": 2.0, "loadS": 0, "readyS": 5.5},
        None,  # an older worker: nothing reported
        {"processS": "soon", "readyS": float("nan"), "loadS": True, "importS": 1.5},  # only importS is a time
    ]
    made: list[Handle] = []

    def factory() -> Handle:
        made.append(Handle(len(made), colds[len(made)]))
        return made[-1]

    pool = WorkerPool(factory, lambda h: None, idle_s=0.0)
    assert pool.cold_starts() == {}
    assert pool.starter.spawn(4) == 4
    await _ready(pool, 4)
    by_pid = {s.pid: s for s in pool.slots.values()}
    assert by_pid[1000].cold == colds[0] and by_pid[1002].cold is None and by_pid[1003].cold == {"importS": 1.5}
    assert by_pid[1000].describe()["cold"] == colds[0]
    assert pool.reap_idle() == 4 and not pool.slots  # the tally outlives the workers
    assert pool.cold_starts() == {
        "processS": {"count": 2, "sum": 4.0, "max": 3.0},
        "importS": {"count": 3, "sum": 7.5, "max": 4.0},
        "loadS": {"count": 2, "sum": 2.0, "max": 2.0},
        "readyS": {"count": 2, "sum": 12.5, "max": 7.0},
    }
    pool.cold_starts()["readyS"]["count"] = 99  # a copy
    assert pool.cold_starts()["readyS"]["count"] == 2


def test_a_queue_wants_a_worker_per_waiting_or_running_job_up_to_its_cap() -> None:
    assert wanted_workers(backlog=0, busy=0, max_workers=8) == 0
    assert wanted_workers(backlog=3, busy=2, max_workers=8) == 5
    assert wanted_workers(backlog=500, busy=5, max_workers=8) == 8


def test_the_demand_ledger_asks_for_the_union_of_the_queues_once_per_change() -> None:
    asked: list[list[dict[str, float]]] = []
    ledger = DemandLedger(asked.append)
    gen = queue_specs(load_settings())[2]
    assert gen.bundle() == {"dash_generation": 1.0, "GPU": 0.2}
    assert ledger.report("a/generation", gen.bundle(), 2) == 2
    assert ledger.report("a/generation", gen.bundle(), 2) == 2  # unchanged: not asked again
    assert ledger.report("a/training", {"dash_training": 1.0, "GPU": 1.0}, 1) == 3
    assert ledger.report("b/generation", gen.bundle(), 1) == 4  # another deployment on the cluster
    assert len(asked) == 3 and sorted(map(str, asked[-1])) == sorted(
        map(str, [gen.bundle()] * 3 + [{"dash_training": 1.0, "GPU": 1.0}]))
    assert ledger.clear("a") == 1 and asked[-1] == [gen.bundle()]
    assert ledger.report("b/generation", gen.bundle(), 0) == 0 and asked[-1] == []  # idle: nothing asked


def test_a_failed_request_is_made_again_at_the_next_report() -> None:
    calls: list[int] = []

    def flaky(bundles: list[dict[str, float]]) -> None:
        calls.append(len(bundles))
        if len(calls) == 1:
            raise ConnectionError("GCS restarting")

    ledger = DemandLedger(flaky)
    with pytest.raises(ConnectionError):
        ledger.report("a/generation", {"dash_generation": 1.0}, 2)
    assert ledger.report("a/generation", {"dash_generation": 1.0}, 2) == 2 and calls == [2, 2]
