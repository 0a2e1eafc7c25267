"""The event frame and the one catch-up, without Redis: `models.events.Frame` (the one parser),
`Seen`/`unseen` (the one "each frame once" rule), and `queues.frames` (`FrameCursor`, pushed
by a hub, and `catch_up()`, pulled) on a fake job whose replay stream and pub/sub are lists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from dash_ray.models.events import (
    EVENT_TYPES,
    NOT_SEEN,
    Frame,
    JobCompletedEvent,
    JobFailedEvent,
    JobLogEvent,
    JobPreviewEvent,
    JobProgressEvent,
    Seen,
    parse_event,
    unseen,
)
from dash_ray.models.status import FINAL_EVENT_TYPES
from dash_ray.queues.frames import FrameCursor, catch_up
from dash_ray.queues.keys import Keys

pytestmark = pytest.mark.unit

JOB = "job-1"


def frame_text(seq: int, event: Any = None, position: int | None = None) -> str:
    """A frame as the scripts publish it: `Frame.body_of`, then the place and the seq."""
    event = event or JobProgressEvent(job_id=JOB, queue="q", status="active", progress=seq, user_id="alice")
    body = Frame.body_of(event)
    if position is not None:
        body += f',"queuePosition":{position}'
    return body + f',"seq":{seq}}}'


EVENTS = [
    JobProgressEvent(job_id=JOB, queue="q", status="waiting", message='say "status":"active"', user_id="alice"),
    JobCompletedEvent(job_id=JOB, queue="q", result={"status": "failed", "seq": 99}, user_id="alice"),
    JobFailedEvent(job_id=JOB, queue="q", error='boom "userId":"bob"', status="cancelled", user_id="alice"),
    JobPreviewEvent(job_id=JOB, queue="q", image="data:image/webp;base64,AAAA", step=3),
    JobLogEvent(job_id=JOB, queue="q", message="loaded", level="info", user_id="alice"),
]


# ------------------------------------------------------------------ the frame
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_the_frame_reads_what_a_full_parse_reads(event: Any) -> None:
    text = frame_text(7, event, position=4 if event.type == "job:progress" else None)
    whole = json.loads(text)
    frame = Frame(text)
    assert frame.seq == whole["seq"] == 7
    assert frame.type == whole["type"] == event.type
    assert frame.job_id == whole["jobId"]
    assert frame.user_id == whole.get("userId")
    assert frame.status == whole.get("status")  # free text and results may hold the same keys
    for status in ("waiting", "active", "completed", "failed", "cancelled"):
        assert frame.has_status(status) == (whole.get("status") == status), status
    assert frame.is_final == (event.type in FINAL_EVENT_TYPES)
    assert frame.is_preview == (event.type == "job:preview")
    assert frame.event() == parse_event(text)
    assert event.type in EVENT_TYPES


def test_a_frame_names_its_owner_and_knows_another_one() -> None:
    mine = Frame(frame_text(1))
    assert not mine.of_another("alice")
    assert mine.of_another("bob")
    assert not mine.of_another(None)  # the reader did not know the owner: nothing to compare
    anonymous = Frame(frame_text(1, JobProgressEvent(job_id=JOB, queue="q", status="active")))
    assert anonymous.user_id is None and not anonymous.of_another("bob")


def test_a_place_refresh_and_odd_text_have_no_seq_and_no_type() -> None:
    refresh = Frame('{"type":"job:progress","jobId":"j","status":"waiting","queuePosition":3,"ts":1.0}')
    assert refresh.seq == 0 and refresh.type == "job:progress" and refresh.status == "waiting"
    odd = Frame('["not", "a", "frame"]')
    assert (odd.seq, odd.type, odd.user_id, odd.is_final, odd.is_preview) == (0, "", None, False, False)


def test_the_body_is_stamped_and_has_no_seq_or_closing_brace() -> None:
    event = JobProgressEvent(job_id=JOB, queue="q", status="active", seq=5)
    body = Frame.body_of(event)
    assert event.ts > 0 and not body.endswith("}") and '"seq"' not in body
    assert body.startswith('{"type":"job:progress"')


# ------------------------------------------------------------------ each frame once
def test_a_frame_is_new_only_past_the_last_seq_had() -> None:
    assert unseen(0, NOT_SEEN) and unseen(3, 2)
    assert not unseen(2, 2) and not unseen(1, 2)
    seen = Seen({"a": 2})
    assert not seen.fresh("a", 2) and seen.fresh("a", 3) and not seen.fresh("a", 3)
    assert seen.fresh("b", 0)  # nothing had of b yet: its snapshot at seq 0 is new
    assert seen.since(["a", "b", "c"]) == {"a": 3, "b": 0}


# ------------------------------------------------------------------ a fake job
class FakeJob:
    """A job's replay stream and pub/sub channel: `publish` appends to the stream and (unless
    `lost`) calls the listeners at once. A replay read yields to the loop first, and can run
    `during_read` there (frames published while a reader reads the stream)."""

    def __init__(self) -> None:
        self.keys = Keys("test")
        self.stream: list[str] = []
        self.listeners: list[Callable[[str, str], None]] = []
        self.reads = 0
        self.during_read: Callable[[], None] | None = None

    def publish(self, n: int = 1, *, lost: bool = False, final: bool = False) -> None:
        for _ in range(n):
            seq = len(self.stream) + 1
            event = JobCompletedEvent(job_id=JOB, queue="q", user_id="alice") if final else None
            text = frame_text(seq, event)
            self.stream.append(text)
            if not lost:
                for listener in list(self.listeners):
                    listener(self.keys.channel(JOB), text)

    async def add(self, channel: str, listener: Callable[[str, str], None]) -> None:
        assert channel == self.keys.channel(JOB)
        self.listeners.append(listener)

    async def remove(self, channel: str, listener: Callable[[str, str], None]) -> None:
        self.listeners.remove(listener)

    async def replay(self, job_id: str, after_seq: int = 0) -> list[str]:
        assert job_id == JOB
        self.reads += 1
        await asyncio.sleep(0)
        if self.during_read is not None:
            during, self.during_read = self.during_read, None
            during()
        return [t for t in self.stream if Frame(t).seq > after_seq]


def seqs(frames: list[Frame]) -> list[int]:
    return [f.seq for f in frames]


# ------------------------------------------------------------------ the cursor (pushed)
async def test_the_cursor_holds_live_frames_until_caught_up_then_passes_new_ones() -> None:
    job = FakeJob()
    job.publish(3)
    cursor = FrameCursor(JOB)
    assert cursor.live(job.stream[1]) is None and not cursor.following  # held: the snapshot is not out
    job.during_read = lambda: job.publish(2)  # 4 and 5 come while the stream is read: the read has them too
    sent = seqs(await cursor.catch_up(job.replay, 1))
    assert sent == [2, 3, 4, 5] and cursor.following and cursor.last == 5
    assert cursor.live(job.stream[4]) is None  # seen already
    job.publish()
    assert cursor.live(job.stream[5]) is not None and cursor.last == 6


async def test_the_cursor_without_a_replay_sends_only_what_it_held_after_the_snapshot() -> None:
    job = FakeJob()
    job.publish(5)
    cursor = FrameCursor(JOB)
    for text in reversed(job.stream):  # held out of order: sent in order
        cursor.live(text)
    assert seqs(await cursor.catch_up(job.replay, 3, replay=False)) == [4, 5]
    assert job.reads == 0


async def test_a_cursor_that_held_too_many_reads_the_stream_again() -> None:
    job = FakeJob()
    cursor = FrameCursor(JOB, max_held=2)
    job.listeners.append(lambda _c, text: cursor.live(text))
    job.publish(5)  # 1 and 2 held, 3 to 5 not: overflow
    assert cursor.overflow
    assert seqs(await cursor.catch_up(job.replay, 0, replay=False)) == [1, 2, 3, 4, 5]
    assert job.reads == 1 and not cursor.overflow


async def test_a_resync_catches_a_following_cursor_up_from_its_last_seq() -> None:
    job = FakeJob()
    cursor = FrameCursor(JOB)
    await cursor.catch_up(job.replay, 0)
    job.listeners.append(lambda _c, text: cursor.live(text))
    job.publish(2)
    job.publish(3, lost=True)  # pub/sub was away
    assert cursor.last == 2
    assert seqs(await cursor.catch_up(job.replay)) == [3, 4, 5]


async def test_with_gaps_a_held_frame_past_a_lost_one_is_read_from_the_stream() -> None:
    job = FakeJob()
    cursor = FrameCursor(JOB)
    job.listeners.append(lambda _c, text: cursor.live(text))
    job.publish(1)
    job.publish(1, lost=True)
    job.publish(1)
    assert seqs(await cursor.catch_up(job.replay, 0, replay=False)) == [1, 3]  # without gaps: as held
    cursor = FrameCursor(JOB)
    for text in (job.stream[0], job.stream[2]):
        cursor.live(text)
    assert seqs(await cursor.catch_up(job.replay, 0, replay=False, gaps=True)) == [1, 2, 3]
    cursor = FrameCursor(JOB)
    cursor.live(frame_text(1500))  # a jump of a Redis restart (the scripts' SEQ_GAP): not a gap
    assert seqs(await cursor.catch_up(job.replay, 3, replay=False, gaps=True)) == [1500]


# ------------------------------------------------------------------ catch_up (pulled)
async def test_catch_up_replays_then_follows_each_frame_once_and_in_order() -> None:
    job = FakeJob()
    job.publish(3)
    got: list[int] = []
    async with contextlib.aclosing(catch_up(job, job, JOB, 1, idle_s=30)) as frames:
        first = True
        async for frame in frames:
            assert frame is not None
            got.append(frame.seq)
            if first:  # live while the reader is busy: held, then passed in order
                job.publish(2)
                first = False
            if frame.seq == 5:
                job.publish(1, lost=True)  # 6 is lost to pub/sub; 7 shows the gap
                job.publish(1, final=True)
            if frame.is_final:
                break
    assert got == [2, 3, 4, 5, 6, 7]
    assert job.listeners == []  # closed: unsubscribed


async def test_catch_up_says_when_nothing_came_for_a_while() -> None:
    job = FakeJob()
    async with contextlib.aclosing(catch_up(job, job, JOB, 0, idle_s=0.01)) as frames:
        assert await frames.__anext__() is None
        job.publish(1)
        frame = await frames.__anext__()
        assert frame is not None and frame.seq == 1
    assert job.listeners == []


@pytest.mark.parametrize("seed", range(20))
async def test_catch_up_never_loses_or_repeats_a_frame_whatever_pub_sub_loses(seed: int) -> None:
    rng = random.Random(seed)
    job = FakeJob()
    job.publish(rng.randrange(5))
    total = 60

    async def publisher() -> None:
        while len(job.stream) < total - 1:
            job.publish(rng.randrange(1, 4), lost=rng.random() < 0.2)
            await asyncio.sleep(0)
        job.publish(final=True)

    got: list[int] = []
    task = asyncio.create_task(publisher())
    async with contextlib.aclosing(catch_up(job, job, JOB, 0, idle_s=0.05)) as frames:
        async for frame in frames:
            if frame is None:
                continue
            got.append(frame.seq)
            if frame.is_final:
                break
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # a slow reader
    await task
    assert got == list(range(1, len(job.stream) + 1))
