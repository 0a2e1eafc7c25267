"""Grouped: concurrent callers' commands on one connection, sent in groups, each caller
answered with its own reply or error, through errors, dropped connections and cancels."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.exceptions import ResponseError

from dash_ray.queues.batch import Grouped

pytestmark = pytest.mark.redis


async def test_concurrent_callers_each_get_their_own_reply_in_few_round_trips(redis: Any, prefix: str) -> None:
    g = Grouped(redis)
    n = 300
    replies = await asyncio.gather(*(g.execute_command("INCRBY", f"{prefix}:n{i % 7}", i) for i in range(n)))
    # Made in one turn of the loop: one group; each reply is its own command's.
    assert g.groups == 1
    totals: dict[int, int] = {}
    for i, reply in enumerate(replies):
        totals[i % 7] = totals.get(i % 7, 0) + i
        assert reply == totals[i % 7]
    # Callers that arrive while a group is on its way go out together with the next one.
    first = asyncio.ensure_future(g.execute_command("ECHO", "first"))
    await asyncio.sleep(0)  # its group is written
    later = [asyncio.ensure_future(g.execute_command("ECHO", f"later-{i}")) for i in range(50)]
    assert await first == "first"
    assert await asyncio.gather(*later) == [f"later-{i}" for i in range(50)]
    assert g.groups <= 3


async def test_an_error_reply_reaches_only_its_caller(redis: Any, prefix: str) -> None:
    g = Grouped(redis)
    await redis.hset(f"{prefix}:h", "f", "v")
    got = await asyncio.gather(g.execute_command("ECHO", "a"), g.execute_command("INCR", f"{prefix}:h"),
                               g.execute_command("ECHO", "b"), return_exceptions=True)
    assert got[0] == "a" and got[2] == "b"
    assert isinstance(got[1], ResponseError) and "WRONGTYPE" in str(got[1])
    assert await g.execute_command("ECHO", "after") == "after"


async def test_a_dropped_connection_is_made_again_and_what_was_unanswered_is_sent_again(
        redis: Any, prefix: str) -> None:
    g = Grouped(redis)
    for round_ in range(3):
        my_id = await g.execute_command("CLIENT", "ID")
        assert await redis.client_kill_filter(_id=str(my_id)) == 1  # killed from outside, between groups
        # The next group meets the closed connection: made again, sent again, answered.
        assert await asyncio.gather(*(g.execute_command("INCR", f"{prefix}:c") for _ in range(5))) == \
            [round_ * 5 + i for i in range(1, 6)]
        assert await g.execute_command("CLIENT", "ID") != my_id


async def test_a_cancelled_caller_leaves_the_others_answered_in_order(redis: Any, prefix: str) -> None:
    g = Grouped(redis)
    assert await g.execute_command("ECHO", "warm") == "warm"  # its connection is made
    calls = [asyncio.ensure_future(g.execute_command("INCR", f"{prefix}:k{i}")) for i in range(10)]
    for _ in range(10):  # the callers queue their commands; the sender writes them and waits for the replies
        await asyncio.sleep(0)
        if g.groups == 2:
            break
    assert g.groups == 2 and not any(c.done() for c in calls)
    calls[3].cancel()  # cancelled with its command sent: its reply is read and dropped
    calls[7].cancel()
    got = await asyncio.gather(*calls, return_exceptions=True)
    assert [x for i, x in enumerate(got) if i not in (3, 7)] == [1] * 8
    assert isinstance(got[3], asyncio.CancelledError) and isinstance(got[7], asyncio.CancelledError)
    # The next callers get their own replies, not those.
    assert await asyncio.gather(*(g.execute_command("ECHO", f"n{i}") for i in range(3))) == ["n0", "n1", "n2"]
    # Cancelled before its group is written: it is not sent at all.
    early = asyncio.ensure_future(g.execute_command("INCR", f"{prefix}:early"))
    await asyncio.sleep(0)
    early.cancel()
    assert await g.execute_command("ECHO", "x") == "x"
    assert await redis.get(f"{prefix}:early") is None


async def test_a_script_through_it_is_loaded_again_after_a_flush(redis: Any, prefix: str) -> None:
    g = Grouped(redis)
    script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await script(keys=[f"{prefix}:s"], args=[2], client=g) == 2
    await redis.script_flush()
    assert await asyncio.gather(*(script(keys=[f"{prefix}:s"], args=[1], client=g) for _ in range(3))) == [3, 4, 5]


async def test_a_create_sent_again_after_its_reply_was_lost_answers_as_the_first_did(
        make_store: Any, redis: Any) -> None:
    """The connection drops after the CREATE ran but before its reply was read: it is sent
    again on a new connection, and answers `created` (201), counting the owner's rate once,
    where counting it twice would refuse a job that exists (429) or answer it as old (200)."""
    from dash_ray.queues.lifecycle import Quota, Rate

    store = make_store()
    await store.add("sleep", {"userId": "bob"})  # the script loaded: the reply lost below is the CREATE's
    g = store.lifecycle._grouped
    made_conns: list[Any] = []
    connection = g._connection

    async def flaky_connection() -> Any:
        conn = await connection()
        if not made_conns:  # the first connection loses the first reply, after Redis ran the command
            read = conn.read_response

            async def lose(*a: Any, **kw: Any) -> Any:
                await read(*a, **kw)
                conn.read_response = read
                raise ConnectionError("connection lost before the reply")

            conn.read_response = lose
        if conn not in made_conns:
            made_conns.append(conn)
        return conn

    g._connection = flaky_connection
    quota = Quota(rate=Rate(limit=1, window_ms=60_000, text="1/minute"))
    result = await store.add("sleep", {"userId": "alice"}, quota=quota)
    assert result.created and result.job.status == "waiting"
    assert len(made_conns) == 2  # sent again, on a new connection
    assert await redis.llen(store.keys.rate("alice")) == 1  # counted once
    assert [e["status"] for e in [json.loads(x) for x in await store.bus.replay(result.job.id)]] == ["waiting"]


async def test_a_connection_gone_silent_times_out_and_its_group_goes_again_on_a_new_one(redis: Any, prefix: str) -> None:
    g = Grouped(redis, timeout_s=0.3)
    assert await g.execute_command("ECHO", "warm") == "warm"
    first = g._conn
    never = asyncio.Event()

    async def silent(*_a: Any, **_kw: Any) -> Any:  # the server's replies stop coming (a dead route)
        await never.wait()

    first.read_response = silent
    got = await asyncio.wait_for(asyncio.gather(*(g.execute_command("INCR", f"{prefix}:t") for _ in range(3))), 5)
    # Sent twice (the first copies ran: their replies were what went missing), answered on a new connection.
    assert got == [4, 5, 6] and g._conn is not first and not first.is_connected
    await g.aclose()
    assert g._conn is None
    assert await g.execute_command("ECHO", "again") == "again"  # a new connection once asked
    await g.aclose()
