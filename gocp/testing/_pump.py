"""One direction of one proxied connection: read a side, apply the faults, write the other.

With no fault aimed at it and nothing held, a direction forwards each read
at once, inside the read callback (the fast path: one ``recv`` and one
``send``). Otherwise what is read is queued, in order, and a task forwards
it under the faults in force, looking them up again before every write.
The task writes one piece per turn of the event loop, so no connection can
keep the proxy thread from the others or from a control call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from ._checks import Side
from ._faults import (
    Bandwidth,
    Blackhole,
    Entry,
    Latency,
    LimitData,
    Slicer,
    SlowClose,
    Stall,
    Timeout,
)

if TYPE_CHECKING:
    from ._link import Connection, Socket

__all__ = ["Pump", "View"]

# Bytes read but not yet written, per direction, before reading pauses.
QUEUE_LIMIT: Final = 512 * 1024
BANDWIDTH_QUANTUM: Final = 0.02  # a rate-limited write carries at most this many seconds' worth
TARGET: Final = {"up": "server", "down": "client"}


class View:
    """The faults that apply to one direction of one connection, sorted by kind."""

    __slots__ = ("bandwidth", "clear", "drop", "latency", "limit", "slicer", "slow_close", "stall")

    def __init__(self, entries: list[Entry]) -> None:
        self.clear = not entries
        self.latency = [e for e in entries if isinstance(e.fault, Latency)]
        self.bandwidth = [e for e in entries if isinstance(e.fault, Bandwidth)]
        self.slicer = [e for e in entries if isinstance(e.fault, Slicer)]
        self.limit = [e for e in entries if isinstance(e.fault, LimitData)]
        self.drop = [e for e in entries if isinstance(e.fault, (Blackhole, Timeout))]
        self.stall = any(isinstance(e.fault, Stall) for e in entries)
        self.slow_close = sum(e.fault.seconds for e in entries if isinstance(e.fault, SlowClose))

    def holds_the_end(self) -> bool:
        """Whether the end of the stream must wait (stalled, or dropping every chunk)."""
        return self.stall or any(e.public.per == "connection" for e in self.drop)


EMPTY_VIEW: Final = View([])


class _Chunk:
    """What one read returned, and how far forwarding it has got."""

    __slots__ = ("arrival", "data", "draws", "next_at", "offset", "pieces", "released")

    def __init__(self, data: bytes) -> None:
        self.arrival = time.monotonic()
        self.data = data
        self.offset = 0  # bytes written so far
        self.pieces = 0  # writes so far
        self.released = False  # its latency has passed
        self.next_at = 0.0  # a slicer's delay: the next piece may not go before this
        self.draws: dict[tuple[Entry, str], float] = {}


class _End:
    """The source side's stream ended: FIN (``reset=False``) or a reset or error."""

    __slots__ = ("reason", "reset")

    def __init__(self, *, reset: bool, reason: str) -> None:
        self.reset = reset
        self.reason = reason


class Pump:
    """One direction: ``src`` is read, ``dst`` is written. Runs on the proxy thread only."""

    def __init__(self, conn: Connection, side: Side, src: Socket, dst: Socket) -> None:
        self.conn = conn
        self.board = conn.engine.board
        self.side: Side = side
        self.src = src
        self.dst = dst
        self.view = EMPTY_VIEW
        self.queue: deque[_Chunk | _End] = deque()
        self.queued = 0  # bytes in ``queue``
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle = False  # the fast path is open: nothing held, no fault, linked
        self.reading = False  # ``src`` is being read (its transport is not paused)
        self.src_done = False  # ``src`` sent its FIN or broke: never read it again
        self.finished = False  # the FIN was passed on
        self.forwarded = 0  # bytes written to ``dst``
        self.budgets: dict[Entry, int] = {}  # LimitData: bytes left
        self.counted_from: dict[Entry, int] = {}  # LimitData: ``forwarded`` when it began
        self.send_at = 0.0  # bandwidth: when the bytes sent so far are paid for
        self._streams: dict[Entry, random.Random] = {}

    # -- the fault table --------------------------------------------------------------

    def apply(self, view: View) -> None:
        """Take the faults in force now (called by the connection when the table changed)."""
        for entry in view.limit:
            if entry not in self.budgets:
                assert isinstance(entry.fault, LimitData)
                self.budgets[entry] = entry.fault.nbytes
                self.counted_from[entry] = self.forwarded
        for entry in [e for e in self.budgets if e not in view.limit]:
            del self.budgets[entry], self.counted_from[entry]
        self.view = view
        self.update()
        self._kick()
        self.wake()
        if self.budgets and min(self.budgets.values()) == 0:
            self.cut()

    def update(self) -> None:
        """Recompute the fast path and whether to read, after any change of state."""
        conn = self.conn
        open_ = conn.linked and conn.outcome is None
        self.idle = open_ and self.view.clear and not self.queue and self.task is None
        want = (
            open_
            and not self.src_done
            and not self.dst.full
            and not self.view.stall
            and self.queued < QUEUE_LIMIT
        )
        if want != self.reading:
            self.reading = want
            self.src.set_reading(want)

    def wake(self) -> None:
        """Let the forwarding task look again (settings changed, ``dst`` drained)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- from the source side -----------------------------------------------------------

    def received(self, data: bytes) -> None:
        """``src`` read ``data``: forward it now (fast path) or queue it."""
        if self.idle and self.conn.table is self.board.table:
            self.dst.write(data)
            self.forwarded += len(data)
            return
        self.conn.refresh()
        if self.conn.outcome is not None:
            return  # ending: nothing more is forwarded
        if self.idle:
            self.dst.write(data)
            self.forwarded += len(data)
            return
        self.queue.append(_Chunk(data))
        self.queued += len(data)
        self.update()
        self._kick()

    def ended(self, *, reset: bool, reason: str) -> None:
        """``src`` sent a FIN (``reset=False``) or broke: pass it on, in order after its data."""
        if self.src_done:
            return
        self.src_done = True
        self.update()
        if self.conn.outcome is not None:
            return
        self.conn.refresh()
        if self.idle and not self.view.slow_close:
            self._pass_end(_End(reset=reset, reason=reason))
            return
        self.queue.append(_End(reset=reset, reason=reason))
        self.update()
        self._kick()

    # -- the forwarding task ----------------------------------------------------------

    def _kick(self) -> None:
        if self.task is None and self.queue and self.conn.outcome is None:
            self.task = self.conn.spawn(self._forward_all())
            self.update()

    async def _forward_all(self) -> None:
        try:
            while self.queue and self.conn.outcome is None:
                item = self.queue[0]
                if isinstance(item, _End):
                    await self._forward_end(item)
                    return
                if not await self._forward(item):
                    return
                self.queue.popleft()
                self.queued -= len(item.data)
                self.update()
        finally:
            self.task = None
            self.update()

    async def _forward(self, chunk: _Chunk) -> bool:
        """Write one chunk under the faults in force; False once the connection must end."""
        size = len(chunk.data)
        while chunk.offset < size:
            self.conn.refresh()
            view = self.view
            if self.conn.outcome is not None:
                return False
            if any(self._hits(chunk, entry) for entry in view.drop):
                left = size - chunk.offset
                self._record("drop", f"discarded {left} bytes", nbytes=left)
                return True
            rate = self._rate(chunk, view)
            wait = self._wait(chunk, view, rate)
            if wait is None or wait > 0:
                await self._pause(wait)
                continue
            if not chunk.released:
                chunk.released = True
                self._record_delay(chunk, view)
            if self.dst.full:
                await self._pause(None)
                continue
            piece = self._piece_size(chunk, view, size - chunk.offset, rate)
            if not self._write(memoryview(chunk.data)[chunk.offset : chunk.offset + piece], rate):
                return False
            chunk.offset += piece
            chunk.pieces += 1
            if self.budgets and min(self.budgets.values()) == 0:
                break
            if chunk.offset < size:
                await asyncio.sleep(0)  # one piece per turn of the loop: fairness
        if chunk.pieces > 1:
            self._record(
                "slice", f"{size} bytes in {chunk.pieces} writes", nbytes=size, pieces=chunk.pieces
            )
        if self.budgets and min(self.budgets.values()) == 0:
            self.cut()
            return False
        return True

    def _wait(self, chunk: _Chunk, view: View, rate: float | None) -> float | None:
        """Seconds until the next piece of ``chunk`` may go; ``None``: until a change."""
        if view.stall:
            return None
        now = time.monotonic()
        if not chunk.released:
            wait = chunk.arrival + self._delay(chunk, view) - now
            if wait > 0:
                return wait
        if chunk.pieces and chunk.next_at > now:
            return chunk.next_at - now
        if rate is not None and self.send_at > now:
            return self.send_at - now
        return 0.0

    def _delay(self, chunk: _Chunk, view: View) -> float:
        delay = 0.0
        for entry in view.latency:
            fault = entry.fault
            assert isinstance(fault, Latency)
            if not self._hits(chunk, entry):
                continue
            held = fault.seconds
            if fault.jitter:  # uniform within the jitter around the mean, never below 0
                held = max(0.0, held + (2 * self._draw(chunk, entry, "jitter") - 1) * fault.jitter)
            delay += held
        return delay

    def _rate(self, chunk: _Chunk, view: View) -> float | None:
        rates = [
            entry.fault.bytes_per_second
            for entry in view.bandwidth
            if isinstance(entry.fault, Bandwidth) and self._hits(chunk, entry)
        ]
        return min(rates) if rates else None

    def _slicer(self, chunk: _Chunk, view: View) -> tuple[Entry, Slicer] | None:
        found: tuple[Entry, Slicer] | None = None
        for entry in view.slicer:
            fault = entry.fault
            assert isinstance(fault, Slicer)
            if self._hits(chunk, entry) and (
                found is None or fault.average_size < found[1].average_size
            ):
                found = (entry, fault)
        return found

    def _piece_size(self, chunk: _Chunk, view: View, left: int, rate: float | None) -> int:
        size = left
        slicer = self._slicer(chunk, view)
        if slicer is not None:
            entry, fault = slicer
            spread = fault.size_variation
            drawn = fault.average_size + (
                self._stream(entry).randint(-spread, spread) if spread else 0
            )
            size = min(size, drawn)
            chunk.next_at = time.monotonic() + fault.delay
        if rate is not None:
            size = min(size, max(1, int(rate * BANDWIDTH_QUANTUM)))
        if self.budgets:
            size = min(size, *self.budgets.values())
        return size

    def _write(self, piece: memoryview, rate: float | None) -> bool:
        """Write ``piece`` to ``dst`` and count it (against the bandwidth ``rate`` and the
        cuts); False if ``dst`` is gone (the connection is then ending)."""
        if not self.dst.write(piece):
            return False
        count = len(piece)
        self.forwarded += count
        if rate is not None:
            # Keep to the schedule while sending back to back, so that writes started late
            # (timers fire late) are made up for; after a pause, start from now (no burst).
            now = time.monotonic()
            start = self.send_at if now - self.send_at <= BANDWIDTH_QUANTUM else now
            self.send_at = start + count / rate
        for entry in self.budgets:
            self.budgets[entry] -= count
        return True

    async def _forward_end(self, end: _End) -> None:
        """Pass the end of the stream on once no fault holds it (after ``SlowClose``)."""
        reached = time.monotonic()
        while True:
            self.conn.refresh()
            view = self.view
            if view.holds_the_end():
                await self._pause(None)
                continue
            wait = 0.0 if end.reset else reached + view.slow_close - time.monotonic()
            if wait <= 0:
                break
            await self._pause(wait)
        self.queue.popleft()
        self._pass_end(end)

    def _pass_end(self, end: _End) -> None:
        if end.reset:
            self.conn.end(reset=True, reason=end.reason)
            return
        self.dst.write_eof()
        self._record("eof", f"{end.reason}; FIN sent to {TARGET[self.side]}")
        self.finished = True
        self.conn.pump_finished()

    async def _pause(self, timeout: float | None) -> None:
        """Wait until ``wake`` or ``timeout`` seconds (``None``: no timeout)."""
        loop = self.conn.engine.loop
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, self.wake)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    # -- draws ----------------------------------------------------------------------------

    def _stream(self, entry: Entry) -> random.Random:
        """This direction's seeded stream for ``entry``: same seed, same draws."""
        stream = self._streams.get(entry)
        if stream is None:
            seed = self.conn.engine.seed
            stream = random.Random(f"{seed}:{self.conn.ordinal}:{self.side}:{entry.name}")
            self._streams[entry] = stream
        return stream

    def _draw(self, chunk: _Chunk, entry: Entry, what: str) -> float:
        """``chunk``'s uniform [0, 1) draw for ``entry`` and ``what``, made once."""
        key = (entry, what)
        draw = chunk.draws.get(key)
        if draw is None:
            draw = chunk.draws[key] = self._stream(entry).random()
        return draw

    def _hits(self, chunk: _Chunk, entry: Entry) -> bool:
        """Whether ``entry`` applies to ``chunk`` (its per-chunk probability)."""
        public = entry.public
        if public.per != "chunk" or public.probability >= 1:
            return True
        return self._draw(chunk, entry, "hit") < public.probability

    # -- endings ----------------------------------------------------------------------------

    def cut(self) -> None:
        """A ``LimitData`` count ran out: log it, end the connection with FIN."""
        if self.conn.outcome is not None:
            return
        entry = min(self.budgets, key=self.budgets.__getitem__)
        counted = self.forwarded - self.counted_from[entry]
        self._record(
            "cut", f"after {counted} bytes ({self.forwarded} on this connection)", nbytes=counted
        )
        self.conn.end(reset=False, reason=f"cut by {entry.name} ({self.side})", flush=True)

    def _record_delay(self, chunk: _Chunk, view: View) -> None:
        if any(self._hits(chunk, entry) for entry in view.latency):
            delay = self._delay(chunk, view)
            size = len(chunk.data)
            self._record("delay", f"{size} bytes held {delay:.6f}s", nbytes=size, seconds=delay)

    def _record(self, what: str, detail: str, **numbers: Any) -> None:
        self.conn.engine.log.add(
            self.conn.id, what, f"{self.side}: {detail}", direction=self.side, **numbers
        )
