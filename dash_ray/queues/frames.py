"""Catching a reader up on a job's frames: what the job's replay stream holds after the last seq
the reader had, then its live frames from pub/sub, each once and in order (`models.events.unseen`).

This is the one place that does it. The WebSocket gateway keeps a `FrameCursor` per subscription
(a socket follows many jobs; the hub pushes their frames to it); SSE reads `catch_up()`, an
async iterator over one job. The frames themselves are `models.events.Frame`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from dash_ray.models.events import NOT_SEEN, Frame, unseen
from dash_ray.queues.keys import Keys

__all__ = ["GAP_MAX", "MAX_HELD", "FrameCursor", "Replay", "catch_up"]

# Reads a job's replay stream after a seq (`EventBus.replay`): its frames' texts, oldest first.
Replay = Callable[[str, int], Awaitable[list[str]]]

MAX_HELD = 1000  # live frames held while a reader catches up; past it, the replay stream is read again
GAP_MAX = 1000  # a jump in seq this big is Redis having restarted (the scripts' SEQ_GAP), not frames lost


class FrameCursor:
    """One reader's place in one job's frames: the last seq it had (`last`), and, while it
    catches up, the live frames that arrive meanwhile (held, then passed on after the replay).

    It starts holding: `catch_up()` passes on the replay stream's frames and the held ones, then
    follows (`live()` passes each new live frame at once), or, with `follow=False`, goes on
    holding for a reader that pulls (`catch_up()` again for what came since)."""

    __slots__ = ("held", "holding", "job_id", "last", "max_held", "overflow")

    def __init__(self, job_id: str, *, max_held: int = MAX_HELD) -> None:
        self.job_id = job_id
        self.last = NOT_SEEN
        self.holding = True
        self.held: list[Frame] = []
        self.overflow = False  # more live frames came than are held: the replay stream has them
        self.max_held = max_held

    @property
    def following(self) -> bool:
        """True once caught up: live frames pass at once."""
        return not self.holding

    def live(self, text: str) -> Frame | None:
        """A frame from pub/sub: the frame to pass on now, or None (had already, or held while the
        reader catches up)."""
        frame = Frame(text)
        if self.holding:
            if len(self.held) < self.max_held:
                self.held.append(frame)
            else:
                self.overflow = True
            return None
        if unseen(frame.seq, self.last):  # `_new`, inline: every relayed frame comes here
            self.last = frame.seq
            return frame
        return None

    def _new(self, frame: Frame) -> bool:
        if unseen(frame.seq, self.last):
            self.last = frame.seq
            return True
        return False

    async def catch_up(self, read: Replay, after: int | None = None, *, replay: bool = True, gaps: bool = False,
                       follow: bool = True) -> list[Frame]:
        """The frames the reader has not had, in order: the replay stream's after `after` (by
        default the last it had), read when `replay` or when more live frames came meanwhile than
        are held, then the live frames held meanwhile. With `gaps`, a held frame a few seqs past
        the last had (pub/sub lost some) sends it to the replay stream instead. Live frames are
        held from the call on; they pass at once after it, unless `follow=False`.

        Nothing is awaited after the last read: the caller sends what it returns before any
        live frame can come between."""
        self.holding = True
        if after is not None:
            self.last = after
        out: list[Frame] = []
        while True:
            if replay or self.overflow:
                replay = self.overflow = False
                out.extend(f for f in map(Frame, await read(self.job_id, self.last)) if self._new(f))
            held, self.held = self.held, []
            held.sort(key=_seq_of)
            for i, frame in enumerate(held):
                if gaps and 1 < frame.seq - self.last < GAP_MAX:
                    replay = True
                    self.held[:0] = held[i + 1:]  # the replay reads this one (the rest too, unless it stops short)
                    break
                if self._new(frame):
                    out.append(frame)
            if not replay and not self.overflow:
                break
        self.holding = not follow
        return out


def _seq_of(frame: Frame) -> int:
    return frame.seq


class Hub(Protocol):
    """Live frames by channel (`EventHub`)."""

    async def add(self, channel: str, listener: Callable[[str, str], None]) -> None: ...

    async def remove(self, channel: str, listener: Callable[[str, str], None]) -> None: ...


class Bus(Protocol):
    """The replay streams (`EventBus`)."""

    keys: Keys

    async def replay(self, job_id: str, after_seq: int = 0) -> list[str]: ...


async def catch_up(hub: Hub, bus: Bus, job_id: str, after: int = 0, *,
                   idle_s: float) -> AsyncGenerator[Frame | None, None]:
    """A job's frames after seq `after`, then its live ones as they come, each once and in order,
    for a reader that pulls (SSE); None after each `idle_s` without one (time for a keep-alive).
    Live frames are listened to before the replay stream is read, so none falls between the
    two; a gap in them (pub/sub lost frames) is filled from the replay stream. Never ends by
    itself: the reader stops at the final frame (close it: `contextlib.aclosing`)."""
    cursor = FrameCursor(job_id)
    wake = asyncio.Event()

    def on_live(_channel: str, text: str) -> None:
        cursor.live(text)  # held: the reader takes them below
        wake.set()

    channel = bus.keys.channel(job_id)
    await hub.add(channel, on_live)
    try:
        frames = await cursor.catch_up(bus.replay, after, gaps=True, follow=False)
        while True:
            for frame in frames:
                yield frame
            frames = []
            if not cursor.held and not cursor.overflow:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), idle_s)
                except asyncio.TimeoutError:
                    yield None
                    continue
            frames = await cursor.catch_up(bus.replay, replay=False, gaps=True, follow=False)
    finally:
        with contextlib.suppress(Exception):
            await hub.remove(channel, on_live)
