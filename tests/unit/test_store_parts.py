"""The job store's parts on fakes (no Redis): queue control (`control.py`), reading jobs back and
their ETAs (`reader.py`), the producer's rules and cancel (`producer.py`), users' usage
(`usage.py`), and CREATE's reply (`Created.from_reply`); and the facade's size."""

from __future__ import annotations

import ast
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from dash_ray import errors
from dash_ray.models.events import JobFailedEvent
from dash_ray.models.queues import parse_options, parse_payload
from dash_ray.models.views import JobView
from dash_ray.queues import store as store_module
from dash_ray.queues.control import QueueControl, parse_peaks
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Created
from dash_ray.queues.lua import USAGE
from dash_ray.queues.producer import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    Producer,
    ProducerOptions,
    bull_opts,
    digest,
    identify,
    refusal,
)
from dash_ray.queues.reader import ETA_CACHE_S, JobReader, ViewEtas
from dash_ray.queues.usage import UsageBook

pytestmark = pytest.mark.unit

KEYS = Keys("t")


class Pipeline:
    """A redis-py pipeline: records commands; `execute` answers each from the fake's handlers."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: self.commands.append((name, args))

    async def execute(self) -> list[Any]:
        return [self.redis.answer(name, *args) for name, args in self.commands]


class FakeRedis:
    """Answers commands from `handlers` (name -> function of the arguments); records every call."""

    def __init__(self, **handlers: Callable[..., Any]) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.scripts: list[FakeScript] = []

    def answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        return self.handlers[name](*args)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self)

    def register_script(self, text: str) -> FakeScript:
        script = FakeScript(text)
        self.scripts.append(script)
        return script

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return self.answer(name, *args, *kwargs.values())
        return call


class FakeScript:
    def __init__(self, text: str) -> None:
        self.script, self.sha = text, f"sha-{abs(hash(text))}"
        self.calls: list[tuple[list[str], list[Any]]] = []
        self.reply: Any = None

    async def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        self.calls.append((keys, args))
        return self.reply


# ---------------------------------------------------------------- control
class FakeBackend:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def getCounts(self, types: list[str]) -> list[int]:
        self.asked.append(types)
        return [1, 2, 3, 4, 5, 6, 7]


class FakeQueue:
    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.paused = False

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    async def isPaused(self) -> bool:
        return self.paused


def control_with(redis: Any, *names: str) -> tuple[QueueControl, dict[str, FakeQueue]]:
    control = QueueControl(redis, KEYS, "t", names)
    queues = {n: FakeQueue() for n in names}
    control._queues.update(queues)  # made on first use otherwise
    return control, queues


async def test_queue_control_sums_the_waiting_states_and_pauses_only_served_queues() -> None:
    control, queues = control_with(FakeRedis(), "sleep")
    assert await control.counts("sleep") == {"waiting": 1 + 2 + 3, "delayed": 4, "active": 5, "completed": 6,
                                             "failed": 7}
    assert queues["sleep"].backend.asked == [["wait", "paused", "prioritized", "delayed", "active", "completed",
                                              "failed"]]
    await control.pause("sleep")
    assert await control.is_paused("sleep")
    await control.resume("sleep")
    assert not await control.is_paused("sleep")
    with pytest.raises(errors.UnknownQueue):
        control.queue("training")
    with pytest.raises(errors.UnknownQueue):
        await control.counts("training")


async def test_queue_control_reads_the_consumers_sizing_report() -> None:
    memory = {b"512x512": b"cuda:1048576", "1024": "rss:77", "bad": "cuda:", "worse": "nothing"}
    redis = FakeRedis(hget=lambda key, field: b"0.5" if key == KEYS.capacity("generation") else None,
                      hgetall=lambda key: memory if key == KEYS.memory("generation") else {})
    control, _ = control_with(redis, "generation")
    assert await control.sizing("generation") == (0.5, {"512x512": ("cuda", 1048576), "1024": ("rss", 77)})
    assert await control.sizing("upscaling") == (None, {})  # not reported: no share, no peaks
    assert parse_peaks(None) == {}
    redis.handlers["hgetall"] = lambda key: {"le_1": "3", "sum": "1.5"} if key == KEYS.metrics("sleep") else {}
    assert await control.durations("sleep") == {"le_1": "3", "sum": "1.5"}


# ---------------------------------------------------------------- ETAs
async def test_a_waiting_jobs_eta_is_estimated_once_per_place_and_interval() -> None:
    asked: list[tuple[str, str, int]] = []
    answer: list[tuple[float, float] | None] = [(12.0, 20.0)]

    async def estimator(redis: Any, keys: Keys, queue: str, job_id: str, data: dict[str, Any],
                        position: int) -> tuple[float, float] | None:
        asked.append((queue, job_id, position))
        return answer[0]

    etas = ViewEtas(FakeRedis(), KEYS, estimator)  # type: ignore[arg-type]

    def waiting(position: int, job_id: str = "j") -> JobView:
        return JobView(id=job_id, queue="sleep", status="waiting", queue_position=position)

    view = await etas.with_eta(waiting(3))
    assert (view.eta_s, view.finish_eta_s) == (12.0, 20.0)
    assert (await etas.with_eta(waiting(3))).eta_s == 12.0 and len(asked) == 1  # the cached answer
    await etas.with_eta(waiting(2))  # moved up: another place, asked again
    assert asked == [("sleep", "j", 3), ("sleep", "j", 2)]
    answer[0] = None  # nothing measured yet: no ETA
    assert (await etas.with_eta(waiting(1))).eta_s is None
    # an old entry is asked again
    key = ("sleep", "j", 3)
    etas._etas[key] = (time.monotonic() - ETA_CACHE_S - 0.1, (1.0, 2.0))
    assert (await etas.with_eta(waiting(3))).eta_s is None and asked[-1] == key
    # a full cache starts over
    etas.MAX_ENTRIES = len(etas._etas)
    await etas.with_eta(waiting(9, "k"))
    assert list(etas._etas) == [("sleep", "k", 9)]
    # neither waiting with a place nor running: untouched, nothing asked
    n = len(asked)
    assert (await etas.with_eta(JobView(id="j", queue="sleep", status="delayed"))).eta_s is None
    assert (await etas.with_eta(JobView(id="j", queue="sleep", status="waiting"))).eta_s is None
    assert len(asked) == n


async def test_a_running_jobs_eta_comes_from_its_progress() -> None:
    async def never(*args: Any) -> None:
        raise AssertionError("a running job's ETA asks nothing of Redis")

    etas = ViewEtas(FakeRedis(), KEYS, never)  # type: ignore[arg-type]
    view = JobView(id="j", queue="sleep", status="active", progress=50, started_at=time.time() - 10)
    await etas.with_eta(view)
    assert view.eta_s == view.finish_eta_s == pytest.approx(10.0, abs=0.1)
    assert (await etas.with_eta(JobView(id="j", queue="sleep", status="active", progress=50))).eta_s is None


# ---------------------------------------------------------------- reading jobs back
def reader_with(redis: FakeRedis, *names: str) -> JobReader:
    control, _ = control_with(redis, *names)
    return JobReader(redis, KEYS, control)  # type: ignore[arg-type]


async def test_a_jobs_queue_is_its_records_else_the_queue_holding_a_bullmq_job() -> None:
    records = {KEYS.job("ours"): "sleep"}
    bull = {KEYS.bull("generation", "plain")}
    redis = FakeRedis(hget=lambda key, field: records.get(key),
                      type=lambda key: "hash" if key in bull else "none")
    reader = reader_with(redis, "sleep", "generation")
    assert await reader.find_queue("ours") == "sleep"
    assert await reader.find_queue("plain") == "generation"
    assert await reader.find_queue("nowhere") is None
    n = len(redis.calls)
    assert await reader.find_queue("../bad id") is None and len(redis.calls) == n  # no lookup for such an id
    with pytest.raises(errors.JobNotFound):
        await reader.get("nowhere")


class History:
    """A user's history (a sorted set, member -> score) with the job records it points at."""

    def __init__(self, entries: dict[str, float], queues: dict[str, str]) -> None:
        self.entries, self.queues = dict(entries), queues
        self.removed: list[str] = []

    def zrevrangebyscore(self, key: str, top: str, bottom: str, start: int, num: int,
                         withscores: bool) -> list[tuple[str, float]]:
        below = float(top[1:]) if top.startswith("(") else float("inf")
        rows = sorted(((m, s) for m, s in self.entries.items() if s < below), key=lambda r: -r[1])
        return rows[start:start + num]

    def zrem(self, key: str, *members: str) -> int:
        self.removed += members
        for m in members:
            self.entries.pop(m, None)
        return len(members)

    def zcount(self, key: str, low: str, high: str) -> int:
        return sum(s < float(high[1:]) for s in self.entries.values())


async def test_a_users_history_pages_on_and_drops_entries_whose_job_is_gone_or_anothers() -> None:
    entries = {f"j{i}": float(i) for i in range(1, 8)}
    queues = {m: "sleep" for m in entries if m != "j6"}  # j6's record expired
    hist = History(entries, queues)
    redis = FakeRedis(zrevrangebyscore=hist.zrevrangebyscore, zrem=hist.zrem, zcount=hist.zcount,
                      hget=lambda key, field: queues.get(key.rsplit(":", 1)[-1]))
    reader = reader_with(redis, "sleep")

    async def views(ids: list[tuple[str, str]], with_state: bool, with_data: bool = True) -> list[JobView]:
        assert not with_state  # a list guesses the states from the hashes
        return [JobView(id=j, queue=q, user_id="mallory" if j == "j4" else "alice",  # j4's id was taken over
                        status="failed" if j == "j2" else "completed") for j, q in ids]

    reader.views = views  # type: ignore[method-assign]
    page = await reader.list("alice", limit=3)
    assert [v.id for v in page.jobs] == ["j7", "j5", "j3"] and page.next_cursor == "3"
    assert sorted(hist.removed) == ["j4", "j6"]
    page = await reader.list("alice", limit=3, cursor=page.next_cursor)
    assert [v.id for v in page.jobs] == ["j2", "j1"] and page.next_cursor is None
    assert [v.id for v in (await reader.list("alice", status="failed")).jobs] == ["j2"]
    with pytest.raises(errors.InvalidPayload):
        await reader.list("alice", cursor="not a number")
    with pytest.raises(errors.InvalidPayload):
        await reader.list(None)
    with pytest.raises(errors.UnknownQueue):
        await reader.list("alice", queue="training")


async def test_a_jobs_log_is_its_newest_lines_decoded() -> None:
    redis = FakeRedis(lrange=lambda key, start, stop: [b"one", "two"] if key == KEYS.bull_logs("sleep", "j") else [])
    reader = reader_with(redis, "sleep")
    assert await reader.logs("j", "sleep", limit=2) == ["one", "two"]
    assert redis.calls[-1] == ("lrange", (KEYS.bull_logs("sleep", "j"), -2, -1))


# ---------------------------------------------------------------- the producer's rules
def test_an_adds_id_and_owner_come_from_the_payload_or_the_caller_and_must_agree() -> None:
    sleep = parse_payload("sleep", {"userId": "alice", "durationS": 1}, allow_test_only=True)
    job_id, owner, chosen = identify(sleep, parse_options(None), None)
    assert owner == "alice" and len(job_id) == 32 and not chosen
    assert identify(sleep, parse_options({"jobId": "mine"}), "alice") == ("mine", "alice", True)
    with pytest.raises(errors.Forbidden):
        identify(sleep, parse_options(None), "bob")
    anonymous = parse_payload("sleep", {"durationS": 1}, allow_test_only=True)
    assert identify(anonymous, parse_options({"jobId": "x"}), "bob") == ("x", "bob", True)
    with pytest.raises(errors.InvalidPayload):
        identify(anonymous, parse_options(None), None)
    gen = parse_payload("generation", {"userId": "alice", "prompt": "p", "jobId": "g1"}, allow_test_only=True)
    assert identify(gen, parse_options({"jobId": "g1"}), None) == ("g1", "alice", True)
    with pytest.raises(errors.InvalidPayload):
        identify(gen, parse_options({"jobId": "g2"}), None)


def test_bull_options_digest_refusals_and_fair_share() -> None:
    opts = parse_options({"priority": 2, "delayS": 1.5, "timeoutS": 30, "backoff": {"type": "fixed", "delayS": 2}})
    out = bull_opts("j", opts, 3, 10, 20, keep_s=60)
    assert out == {"jobId": "j", "priority": 2, "attempts": 3, "backoff": {"type": "fixed", "delay": 2000},
                   "removeOnComplete": {"count": 10, "age": 60}, "removeOnFail": {"count": 20, "age": 60},
                   "delay": 1500, "timeoutS": 30}
    assert "delay" not in bull_opts("j", parse_options(None), 1, 1, 1)
    a, b = digest({"b": 1, "a": [1, 2]}), digest({"a": [1, 2], "b": 1})
    assert a == b and len(a[0]) == 32 and a[1] == len(json.dumps({"a": [1, 2], "b": 1}, separators=(",", ":")))
    assert isinstance(refusal("open", 3, 0), errors.RateLimited) and isinstance(refusal("high", 1, 0), errors.RateLimited)
    too_big = refusal("bytes", 100, 90)
    assert isinstance(too_big, errors.QuotaExceeded) and "keep 90 bytes" in too_big.message
    fair = ProducerOptions(user_weights={"alice": 4.0, "huge": 1e9})
    assert fair.fair(2, "alice", None) == (2, 0.25)
    assert fair.fair(2, "bob", None) == (2, 1.0)
    assert fair.fair(1, "alice", 0.5) == (1, 2.0)  # a weight given wins
    assert fair.fair(1, "huge", None) == (1, 1 / MAX_WEIGHT) and fair.fair(1, "x", 0.0) == (1, 1 / MIN_WEIGHT)
    assert ProducerOptions(fair_share=False).fair(1, "alice", 2.0) is None


class FakeReader:
    def __init__(self, *views: JobView) -> None:
        self.views = list(views)
        self.asked = 0

    async def get(self, job_id: str) -> JobView:
        self.asked += 1
        return self.views.pop(0) if len(self.views) > 1 else self.views[0]


class FakeLifecycle:
    def __init__(self) -> None:
        self.finished: list[JobFailedEvent] = []
        self.cancelled: list[str] = []

    async def finish(self, event: JobFailedEvent) -> int:
        self.finished.append(event)
        return 1

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


class RemovingBackend(FakeBackend):
    def __init__(self, removes: bool) -> None:
        super().__init__()
        self.removes = removes
        self.removed: list[str] = []

    async def remove(self, job_id: str, remove_children: bool) -> int:
        self.removed.append(job_id)
        return 1 if self.removes else 0


def producer_with(view: JobView, removes: bool = True) -> tuple[Producer, FakeLifecycle, RemovingBackend]:
    control, queues = control_with(FakeRedis(), "sleep")
    backend = RemovingBackend(removes)
    queues["sleep"].backend = backend
    lifecycle = FakeLifecycle()
    producer = Producer(FakeRedis(smembers=lambda key: set(), hget=lambda key, field: None),  # type: ignore[arg-type]
                        KEYS, control, FakeReader(view), lifecycle)  # (a job in no flow: in none, waits for none)
    return producer, lifecycle, backend


async def test_cancel_removes_a_waiting_job_flags_a_running_one_and_refuses_a_finished_one() -> None:
    waiting = JobView(id="w", queue="sleep", user_id="alice", status="waiting")
    producer, lifecycle, backend = producer_with(waiting)
    await producer.cancel("w")
    assert backend.removed == ["w"] and not lifecycle.cancelled
    (event,) = lifecycle.finished
    assert (event.job_id, event.status, event.error, event.user_id) == ("w", "cancelled", "cancelled", "alice")

    producer, lifecycle, backend = producer_with(waiting, removes=False)  # it started meanwhile
    await producer.cancel("w")
    assert backend.removed == ["w"] and lifecycle.cancelled == ["w"] and not lifecycle.finished

    producer, lifecycle, backend = producer_with(JobView(id="r", queue="sleep", status="active"))
    await producer.cancel("r")
    assert not backend.removed and lifecycle.cancelled == ["r"]

    producer, lifecycle, backend = producer_with(JobView(id="d", queue="sleep", status="completed"))
    with pytest.raises(errors.InvalidJobState):
        await producer.cancel("d")
    assert not backend.removed and not lifecycle.cancelled


async def test_an_add_of_a_taken_id_is_the_same_job_or_a_conflict_that_says_nothing_of_it() -> None:
    mine = JobView(id="j", queue="sleep", user_id="alice", status="waiting")
    producer, _, _ = producer_with(mine)
    same = await producer._existing("j", "sleep", "d1", "alice", Created(0, None, "sleep", "d1", "waiting", "alice"))
    assert same.job is mine and not same.created
    cases = [Created(0, None, "sleep", "d1", "waiting", "bob"),  # someone else's
             Created(0, None),  # BullMQ holds it without a record of ours
             Created(0, None, "generation", "d1", "waiting", "alice"),  # another queue
             Created(0, None, "sleep", "d2", "waiting", "alice")]  # another payload
    for found in cases:
        with pytest.raises(errors.JobConflict) as err:
            await producer._existing("j", "sleep", "d1", "alice", found)
        assert ("generation" in err.value.message) == (found.queue == "generation")
        assert "bob" not in err.value.message


def test_creates_reply_reads_as_created_existing_or_refused() -> None:
    assert Created.from_reply([7, 3]) == Created(7, 3) and Created.from_reply([7, 3]).created
    assert Created.from_reply([7, -1]).position is None
    assert Created.from_reply([0, -1, "sleep", "d", "waiting", "alice"]) == Created(0, None, "sleep", "d", "waiting",
                                                                                    "alice")
    assert Created.from_reply([0, -1, "", "", "", ""]).digest == ""
    assert Created.from_reply([0, -2, b"bytes", 100, 90]).refused == ("bytes", 100, 90)
    assert Created.from_reply([0, -2, "open", 3]).refused == ("open", 3, 0)


# ---------------------------------------------------------------- usage
async def test_a_users_usage_runs_the_usage_script_on_their_keys() -> None:
    redis = FakeRedis(scard=lambda key: 4 if key == KEYS.waiting_count("alice") else 0,
                      zrevrange=lambda key, start, stop, withscores: [(b"alice", 300.0), ("bob", 20.0)])
    users = UsageBook(redis, KEYS)  # type: ignore[arg-type]
    (script,) = redis.scripts
    assert script.script == USAGE.text()
    script.reply = [b"1234", 2]
    assert await users.usage("alice") == (1234, 2)
    keys, args = script.calls[0]
    assert keys == [KEYS.usage, KEYS.sizes("alice"), KEYS.kept("alice"), KEYS.waiting_count("alice")]
    assert args[0] == "alice" and abs(args[1] - time.time() * 1000) < 60_000
    assert await users.open_jobs("alice") == 4
    assert await users.top_usage(2) == [("alice", 300), ("bob", 20)]
    assert redis.calls[-1] == ("zrevrange", (KEYS.usage, 0, 1, True))


# ---------------------------------------------------------------- the facade
def test_the_store_is_a_small_facade_over_its_parts() -> None:
    tree = ast.parse(inspect.getsource(store_module))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobStore"]
    methods = [n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert len(methods) <= 12 and (cls.end_lineno or 0) - cls.lineno < 250, methods
    from redis.asyncio import Redis

    store = store_module.JobStore(Redis(), prefix="t", queues=("sleep",))  # never connects
    assert store.reader.control is store.control and store.producer.reader is store.reader
    assert store.producer.lifecycle is store.lifecycle and store.control.names == ("sleep",)
