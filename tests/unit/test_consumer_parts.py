"""The queue consumer's parts on fakes (no Redis): the lock keeper and its maintenance loops, the
capacity board, adoption's user-id rule and fair-clock pruning; and the pub/sub reader's
reconnects against a fake server on a local socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from dash_ray.loops import pause as retry_pause
from dash_ray.queues import CostBook, Keys
from dash_ray.queues.adoption import Adoption, _user_of
from dash_ray.queues.board import CapacityBoard, cold_starts, parse_cold
from dash_ray.queues.locks import LockKeeper
from dash_ray.queues.pubsub import RawPubSub

pytestmark = pytest.mark.unit


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


class Script:
    """A registered Lua script: answers each call with the next of `replies` (an exception is raised)."""

    sha = "fake-extend"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.replies: list[Any] = []

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls.append({"keys": keys, "args": args})
        reply = self.replies.pop(0) if self.replies else []
        if isinstance(reply, BaseException):
            raise reply
        return reply


class Pipeline:
    """A redis-py pipeline: records commands; `execute` answers from `replies`."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.commands.append((name, args, kwargs))

    async def execute(self) -> list[Any]:
        self.redis.executed.append(self.commands)
        return [self.redis.replies.pop(0) if self.redis.replies else None for _ in self.commands]


class FakeRedis:
    def __init__(self) -> None:
        self.script = Script()
        self.executed: list[list[tuple[Any, ...]]] = []
        self.replies: list[Any] = []
        self.pings = 0
        self.owners: dict[str, str] = {}
        self.pages: list[tuple[int, list[str]]] = []
        self.deleted: list[str] = []

    def register_script(self, src: str) -> Script:
        return self.script

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self)

    async def ping(self) -> bool:
        self.pings += 1
        return True

    async def hget(self, key: str, field: str) -> str | None:
        return self.owners.get(key)

    async def hscan(self, key: str, cursor: int, match: str, count: int) -> tuple[int, list[str]]:
        return self.pages.pop(0)

    async def delete(self, key: str) -> None:
        self.deleted.append(key)


class Scripts:
    """BullMQ's `Scripts` as the lock keeper uses it."""

    keys = {"stalled": "bull:q:stalled", "active": "bull:q:active"}

    def __init__(self) -> None:
        self.stalled: list[list[str]] = []  # what each stalled check finds
        self.checks = 0

    async def moveStalledJobsToWait(self, max_stalled: int, stalled_ms: int) -> list[str]:
        self.checks += 1
        return self.stalled.pop(0) if self.stalled else []


class Lifecycle:
    def __init__(self) -> None:
        self.keys = Keys("bull")
        self.waits: list[tuple[Any, ...]] = []
        self.pruned: list[list[str]] = []

    async def wait_again(self, *args: Any) -> None:
        self.waits.append(args)

    async def fair_prune(self, queue: str, fields: list[str]) -> int:
        self.pruned.append(fields)
        return len(fields)


class Held:
    def __init__(self, job_id: str, token: str) -> None:
        self.id, self.token = job_id, token


def keeper(redis: FakeRedis, scripts: Scripts, lifecycle: Lifecycle, *, lock_ms: int = 30_000,
           stalled_ms: int = 15_000) -> LockKeeper:
    return LockKeeper(redis, redis, "q", Keys("bull"), scripts, lifecycle,  # type: ignore[arg-type]
                      consumer_id="c1", lock_ms=lock_ms, stalled_ms=stalled_ms, max_stalled_count=1)


# ---------------------------------------------------------------- locks
async def test_tokens_are_the_consumers_id_and_a_count() -> None:
    locks = keeper(FakeRedis(), Scripts(), Lifecycle())
    assert [locks.token(), locks.token()] == ["c1:1", "c1:2"]


async def test_renewal_extends_every_held_lock_in_one_call_and_says_which_were_lost() -> None:
    redis = FakeRedis()
    locks = keeper(redis, Scripts(), Lifecycle())
    assert await locks.renew() == [] and redis.script.calls == []  # nothing held: no call
    locks.held.update({"a": Held("a", "c1:1"), "b": Held("b", "c1:2")})  # type: ignore[dict-item]
    redis.script.replies = [["b"]]
    assert await locks.renew() == ["b"]
    assert redis.script.calls[0]["args"] == ["bull:q:", 30_000, "a", "c1:1", "b", "c1:2"]


async def test_stalled_jobs_go_back_to_waiting_with_their_owners_told() -> None:
    redis, scripts, lifecycle = FakeRedis(), Scripts(), Lifecycle()
    scripts.stalled = [["7"]]
    redis.owners = {Keys("bull").job("7"): "alice"}
    assert await keeper(redis, scripts, lifecycle).recover_stalled() == ["7"]
    assert lifecycle.waits[0][:3] == ("7", "q", "alice")


async def test_maintenance_retries_a_failed_renewal_soon_and_skips_the_stalled_check_meanwhile(
        caplog: pytest.LogCaptureFixture) -> None:
    redis, scripts = FakeRedis(), Scripts()
    locks = keeper(redis, scripts, Lifecycle(), lock_ms=60_000, stalled_ms=60_000)  # intervals of 30 s and 60 s
    locks.held["a"] = Held("a", "c1:1")  # type: ignore[assignment]
    redis.script.replies = [ConnectionError("Redis away")]
    with caplog.at_level(logging.WARNING):
        locks.start()
        locks.start()  # once
        assert len(locks.tasks) == 3
        await until(lambda: len(redis.script.calls) == 2, timeout_s=2.0)  # again within half a second, not 30 s
        await until(lambda: redis.pings == 1)
    assert locks.renewed and scripts.checks == 0  # our own locks may have expired: no stalled check then
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    tasks = list(locks.tasks)
    await locks.close()
    assert locks.tasks == [] and all(t.done() for t in tasks)


async def test_maintenance_checks_for_stalled_jobs_once_renewals_go_through() -> None:
    redis, scripts = FakeRedis(), Scripts()
    locks = keeper(redis, scripts, Lifecycle(), lock_ms=200, stalled_ms=50)
    locks.start()
    await until(lambda: scripts.checks >= 2 and redis.pings >= 2)
    await locks.close()


# ---------------------------------------------------------------- capacity board
async def test_the_board_writes_workers_and_costs_only_when_they_changed() -> None:
    redis = FakeRedis()
    board = CapacityBoard(redis, "q", Keys("bull"))  # type: ignore[arg-type]
    costs = CostBook()
    await board.report_capacity(costs, 2, 1, 1, 123.4567, gpu_fraction=0.25)
    written = {c[1][0] for c in redis.executed[0] if c[0] == "hset"}
    assert written == {Keys("bull").capacity("q")}
    cap = next(c for c in redis.executed[0] if c[0] == "hset" and "mapping" in c[2])[2]["mapping"]
    assert cap["slots"] == 2 and cap["busy"] == 1 and cap["pending"] == 1 and cap["starved"] == 123.457
    costs.per_unit["*"], costs.dirty = 0.5, True  # a measurement came in
    await board.report_capacity(costs, 2, 1, memory={"m": ("cuda", 10)})
    written = {c[1][0] for c in redis.executed[1] if c[0] == "hset"}
    assert written == {Keys("bull").capacity("q"), Keys("bull").costs("q"), Keys("bull").memory("q")}
    assert not costs.dirty


async def test_the_board_writes_the_cold_start_tally_in_the_capacity_hash_and_reads_it_back() -> None:
    redis = FakeRedis()
    board = CapacityBoard(redis, "q", Keys("bull"))  # type: ignore[arg-type]
    await board.report_capacity(CostBook(), 1, 0, cold={})  # no start yet: nothing more
    assert [c[0] for c in redis.executed[0]] == ["hset", "expire"]
    await board.report_capacity(CostBook(), 1, 0, cold={"readyS": {"count": 2, "sum": 12.34567, "max": 7.0}})
    cold = [c for c in redis.executed[1] if c[0] == "hset"][1]
    assert cold[1] == (Keys("bull").capacity("q"),)
    assert cold[2]["mapping"] == {"cold:readyS:count": 2, "cold:readyS:sum": 12.346, "cold:readyS:max": 7.0}
    raw = {b"slots": b"1", b"cold:readyS:count": b"2", b"cold:readyS:sum": b"12.346", b"cold:readyS:max": b"7",
           b"cold:a:b:sum": b"1", b"cold:loadS:min": b"1", b"cold:loadS:max": b"soon", b"coldx:p:sum": b"1"}
    assert parse_cold(raw) == {"readyS": {"count": 2, "sum": 12.346, "max": 7.0}, "a:b": {"sum": 1.0}}
    redis.replies = [raw, None]
    assert await cold_starts(redis, Keys("bull"), ["q", "other"]) == {  # type: ignore[arg-type]
        "q": parse_cold(raw), "other": {}}
    assert await cold_starts(redis, Keys("bull"), []) == {}  # type: ignore[arg-type]


async def test_the_board_reads_other_queues_and_flags_yields() -> None:
    redis = FakeRedis()
    board = CapacityBoard(redis, "q", Keys("bull"))  # type: ignore[arg-type]
    assert await board.capacities([]) == {}
    redis.replies = [{b"starved": b"12"}, None]
    assert await board.capacities(["a", "b"]) == {"a": {"starved": "12"}, "b": {}}
    redis.replies = ["2", None]
    assert await board.preemptions(["x", "y"]) == {"x": 2, "y": 0}
    await board.ask_yield("x")
    assert [c[0] for c in redis.executed[-1]] == ["set", "hincrby"]
    await board.clear_yield("x")
    assert redis.deleted == [Keys("bull").yield_flag("x")]


# ---------------------------------------------------------------- adoption
def test_an_adopted_jobs_user_is_a_short_plain_string_or_none() -> None:
    assert _user_of('{"userId": "alice"}') == "alice"
    assert _user_of('{"userId": 7}') is None
    assert _user_of('{"userId": "a\\u0000b"}') is None
    assert _user_of('{"userId": "' + "x" * 129 + '"}') is None
    assert _user_of("not json") is None and _user_of(None) is None and _user_of("[1]") is None


async def test_fair_clocks_are_pruned_page_by_page_from_where_the_walk_stopped() -> None:
    redis, lifecycle = FakeRedis(), Lifecycle()
    adoption = Adoption(redis, "q", lifecycle)  # type: ignore[arg-type]
    redis.pages = [(5, ["u:a", "u:b"]), (9, ["u:c"]), (0, ["u:d"])]
    assert await adoption.prune_fair(pages=2) == 3
    assert await adoption.prune_fair(pages=2) == 1  # on from cursor 9, to the end
    assert lifecycle.pruned == [["u:a", "u:b"], ["u:c"], ["u:d"]]


# ---------------------------------------------------------------- pub/sub
def _resp(*items: str) -> bytes:
    out = f"*{len(items)}\r\n"
    for it in items:
        out += f":{it[1:]}\r\n" if it.startswith(":") else f"${len(it.encode())}\r\n{it}\r\n"
    return out.encode()


async def test_pubsub_reconnects_after_a_drop_and_says_when_it_is_subscribed_again() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        data = b""
        while b"SUBSCRIBE" not in data:
            data += await reader.read(1024)
        writer.write(_resp("subscribe", "c", ":1") + _resp("message", "c", f"hello {connections}"))
        await writer.drain()
        if connections == 1:
            writer.close()  # the first connection drops
        else:
            await reader.read()  # held open until the client goes

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got: list[tuple[str, str]] = []
    resubscribed: list[bool] = []
    sub = RawPubSub(f"redis://127.0.0.1:{port}", lambda ch, data: got.append((ch, data)),
                    lambda: resubscribed.append(True))
    sub.subscribe(["c"])
    await sub.start()
    try:
        await until(lambda: resubscribed == [True] and len(got) == 2)
        assert got == [("c", "hello 1"), ("c", "hello 2")] and sub.reconnects == 1
        await sub.wait_connected(1.0)
    finally:
        await sub.close()
        server.close()
        await server.wait_closed()


async def test_pubsub_retries_an_absent_server_with_backoff_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now
    sub = RawPubSub(f"redis://127.0.0.1:{port}", lambda ch, data: None)
    with caplog.at_level(logging.WARNING):
        await sub.start()
        await until(lambda: sub._backoff.tries >= 3)
        await sub.close()
    assert sum("pub/sub: unavailable" in r.getMessage() for r in caplog.records) == 1


async def test_retry_pause_is_the_one_pause_and_stops_a_cancelled_task() -> None:
    await retry_pause(0)

    async def swallowed() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # a network call that swallowed the cancel
            await asyncio.sleep(10)
        await retry_pause(10)  # ... the pause still stops

    task = asyncio.create_task(swallowed())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
