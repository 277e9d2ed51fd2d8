"""One proxied connection: the accepted client, its upstream socket, the two pumps.

Life of a connection, all on the proxy thread: accepted; the faults that
act on whole connections are looked at (a due ``ResetPeer`` resets it before
anything else); the upstream is dialled; both sockets get an asyncio
transport, paused until both exist; the pumps take the faults in force and
start reading. ``end`` (called by a pump, a fault, a control call or the
proxy's stop) decides FIN or RST once; both sockets are then closed and the
engine logs the connection's last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, cast

import attrs

from ._checks import Side
from ._faults import Entry, FaultTable, ResetPeer, Timeout
from ._net import close_gently, close_socket, describe, finish_gently
from ._pump import Pump, View

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["CLOSE_BOUND", "Connection", "Outcome", "Socket"]

CLOSE_BOUND: Final = 2.0  # a connection told to end closes within this
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends an RST


@attrs.frozen
class Outcome:
    """How a connection ends: FIN or RST, why, and whether to send what is buffered first."""

    reset: bool
    reason: str
    flush: bool = False


class Socket(asyncio.Protocol):
    """One side of a connection: its socket and, once linked, its asyncio transport.

    Until a transport adopts the socket the connection closes it itself;
    after, only through the transport. Writes are made only when nothing is
    buffered in the transport (``full`` is False), so each write is one
    ``send`` and a slow reader holds the proxy's reading back.
    """

    def __init__(self, conn: Connection, name: str, sock: socket.socket) -> None:
        self.conn = conn
        self.name = name
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self.adopted = False  # a transport owns ``sock``
        self.reader: Pump | None = None  # the pump that reads this side
        self.writer: Pump | None = None  # the pump that writes to it
        self.full = False  # the transport holds bytes the kernel did not take yet
        self.closing = False
        self.closed = False
        self._fin_when_flushed = False
        self._fin_sent = False
        self._fin_timer: asyncio.TimerHandle | None = None

    # -- for the pumps ----------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> bool:
        """Send ``data`` (buffering what the kernel does not take); False if the socket
        is gone (the connection is then told to end)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.conn.end(reset=True, reason=f"{self.name}: connection lost")
            return False
        transport.write(data)
        return True

    def write_eof(self) -> None:
        """Send a FIN after what is buffered."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write_eof()

    def set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is not None:
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # until both sides are linked
        self.transport.set_write_buffer_limits(high=0, low=0)

    def data_received(self, data: bytes) -> None:
        assert self.reader is not None  # reading starts once linked
        self.reader.received(data)

    def eof_received(self) -> bool:
        assert self.reader is not None
        self.reader.ended(reset=False, reason=f"{self.name} closed")
        return True  # keep the transport: the other direction may still write

    def pause_writing(self) -> None:
        self.full = True
        if self.writer is not None:
            self.writer.update()

    def resume_writing(self) -> None:
        self.full = False
        if self._fin_when_flushed:
            # Not from inside the transport's write callback: it goes on using itself.
            self.conn.engine.loop.call_soon(self._fin)
        if self.writer is not None:
            self.writer.update()
            self.writer.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.conn.outcome is None:  # not closed by the proxy: broken
            reason = f"{self.name}: {describe(exc)}" if exc else f"{self.name}: closed"
            reader = self.reader
            if reader is not None and not reader.src_done:
                reader.ended(reset=True, reason=reason)  # in order after held data
            else:
                self.conn.end(reset=True, reason=reason)
        self.conn.check_done()

    # -- closing ----------------------------------------------------------------------

    def close(self, outcome: Outcome) -> None:
        """Close with FIN or RST; with ``outcome.flush``, after sending what is buffered
        (for at most ``CLOSE_BOUND`` seconds)."""
        if self.closing or self.closed:
            return
        loop = self.conn.engine.loop
        if not self.adopted:
            self.closing = self.closed = True
            if outcome.reset:
                close_socket(self.sock, reset=True)
            else:
                close_gently(self.sock)
            loop.call_soon(self.conn.check_done)
            return
        transport = self.transport
        if transport is None:  # adopted, connection_made is on its way: it runs first
            loop.call_soon(self.close, outcome)
            return
        self.closing = True
        if outcome.reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            transport.abort()
            return
        transport.pause_reading()
        if outcome.flush and transport.get_write_buffer_size():
            self._fin_when_flushed = True
            self._fin_timer = loop.call_later(CLOSE_BOUND, self._fin)
            return
        self._fin()

    def _fin(self) -> None:
        """FIN now: shut down writing, read what is unread (no RST), let the transport close."""
        if self._fin_timer is not None:
            self._fin_timer.cancel()
        transport = self.transport
        if self.closed or self._fin_sent or transport is None:
            return
        self._fin_sent = True
        self._fin_when_flushed = False
        finish_gently(self.sock)
        transport.abort()


class Connection:
    """One accepted client, its upstream socket, and the two pumps between them."""

    def __init__(self, engine: Engine, conn_id: int, ordinal: int, client: socket.socket) -> None:
        self.engine = engine
        self.id = conn_id
        self.ordinal = ordinal  # its place since the last start: seeds its draws
        self.accepted = time.monotonic()
        self.client = Socket(self, "client", client)
        self.server: Socket | None = None
        self.pumps: dict[Side, Pump] = {}
        self.linked = False
        self.outcome: Outcome | None = None
        self.table: FaultTable | None = None  # the table last applied
        self.done: asyncio.Future[None] = engine.loop.create_future()
        self._hits: dict[Entry, bool] = {}
        self._timers: dict[Entry, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dialing: asyncio.Task[None] | None = None

    def ended(self) -> bool:
        """Whether ``end`` was called (a method, as awaits may change it)."""
        return self.outcome is not None

    def start(self) -> None:
        self.refresh()
        if self.outcome is None:
            self._dialing = self.spawn(self._dial())

    # -- the fault table --------------------------------------------------------------

    def refresh(self) -> None:
        """Apply the fault table if it changed since last time (cheap when it did not)."""
        table = self.engine.board.table
        if table is self.table or self.outcome is not None:
            return
        self.table = table
        entries = [e for e in table.entries if e.targets(self.id) and self._hit(e)]
        timed = [e for e in entries if isinstance(e.fault, (ResetPeer, Timeout))]
        for entry in [e for e in self._timers if e not in timed]:
            self._timers.pop(entry).cancel()
        for entry in timed:
            if entry not in self._timers:
                self._schedule(entry)
        for side, pump in self.pumps.items():
            if self.outcome is None:
                pump.apply(
                    View([e for e in entries if side in e.sides and not e.fault.whole_connection])
                )

    def _hit(self, entry: Entry) -> bool:
        """Whether ``entry`` applies to this connection: its per-connection draw, made once."""
        public = entry.public
        if public.per == "chunk" or public.probability >= 1:
            return True
        hit = self._hits.get(entry)
        if hit is None:
            draw = random.Random(f"{self.engine.seed}:{entry.name}:{self.ordinal}").random()
            hit = self._hits[entry] = draw < public.probability
        return hit

    def _schedule(self, entry: Entry) -> None:
        fault = entry.fault
        assert isinstance(fault, (ResetPeer, Timeout))
        if isinstance(fault, Timeout) and fault.after == 0:
            return  # drops only (the pumps do that); never closes
        reset = isinstance(fault, ResetPeer)
        reason = f"{entry.name}: {fault!r}"
        delay = max(entry.public.added, self.accepted) + fault.after - time.monotonic()
        if delay <= 0 and reset:
            self.end(reset=True, reason=reason)
            return
        self._timers[entry] = self.engine.loop.call_later(
            max(0.0, delay), lambda: self.end(reset=reset, reason=reason)
        )

    # -- setting up ---------------------------------------------------------------------

    async def _dial(self) -> None:
        engine = self.engine
        loop = engine.loop
        try:
            sock = socket.socket(engine.upstream_family, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. out of descriptors
            engine.log.add(self.id, "upstream_failed", describe(exc))
            self.end(reset=True, reason="upstream connect failed")
            return
        sock.setblocking(False)
        server = self.server = Socket(self, "server", sock)
        try:
            try:
                async with asyncio.timeout(engine.connect_timeout):
                    await loop.sock_connect(sock, engine.upstream_sockaddr)
            except (OSError, TimeoutError) as exc:
                engine.log.add(self.id, "upstream_failed", describe(exc))
                self.end(reset=True, reason="upstream connect failed")
                return
            if self.ended():
                return
            engine.log.add(self.id, "connect", f"to {engine.upstream_text}")
            server.adopted = True
            await loop.connect_accepted_socket(lambda: server, sock)
            if self.ended():
                return
            self.client.adopted = True
            await loop.connect_accepted_socket(lambda: self.client, self.client.sock)
            if self.ended():
                return
        except asyncio.CancelledError:
            return  # ``end`` stopped the dial
        finally:
            if self.outcome is not None and not server.adopted:
                server.close(self.outcome)
        self._link(server)

    def _link(self, server: Socket) -> None:
        client = self.client
        up = Pump(self, "up", client, server)
        down = Pump(self, "down", server, client)
        self.pumps = {"up": up, "down": down}
        client.reader = server.writer = up
        server.reader = client.writer = down
        self.linked = True
        self.table = None  # apply the table to the pumps, which now exist
        self.refresh()
        for pump in self.pumps.values():
            pump.update()

    # -- tasks --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this connection: cancelled by ``end``, awaited by close."""
        task = self.engine.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug in the proxy: make it visible, and do not hang.
            self.engine.log.add(0, "error", f"connection {self.id}: {describe(exc)}")
            self.end(reset=True, reason=f"internal error: {describe(exc)}")
        self.check_done()

    # -- ending -------------------------------------------------------------------------

    def pump_finished(self) -> None:
        if all(pump.finished for pump in self.pumps.values()):
            self.end(reset=False, reason="both sides closed", flush=True)

    def end(self, *, reset: bool, reason: str, flush: bool = False) -> None:
        """Close this connection soon, with RST if ``reset``, else FIN (after sending what
        is buffered if ``flush``). The first call decides; later ones do nothing."""
        if self.outcome is not None:
            return
        self.outcome = Outcome(reset, reason, flush)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        current = asyncio.current_task(self.engine.loop)
        for task in list(self._tasks):
            if task is current:
                continue
            if task is self._dialing and self.server is not None and self.server.adopted:
                continue  # linking: it looks at the outcome after each step
            task.cancel()
        for pump in self.pumps.values():
            pump.update()
        # Not now: the caller may be inside a transport's callback.
        self.engine.loop.call_soon(self._close_sides)

    def _close_sides(self) -> None:
        outcome = self.outcome
        assert outcome is not None
        self.client.close(outcome)
        server = self.server
        if server is not None and (server.adopted or self._dialing is None or self._dialing.done()):
            server.close(outcome)  # else the dial task closes it once its connect is cancelled
        self.check_done()

    def check_done(self) -> None:
        """Once both sockets are closed and no task is left, report the end to the engine."""
        if self.done.done() or self.outcome is None or self._tasks:
            return
        if not self.client.closed or (self.server is not None and not self.server.closed):
            return
        self.done.set_result(None)
        self.engine.forget(self, self.outcome)

    def force_close(self) -> None:
        """Reset every socket now (for a stop whose connections did not close in time)."""
        self.end(reset=True, reason="proxy stopped")
        for side in (self.client, self.server):
            if side is not None and side.transport is not None and not side.closed:
                side.transport.abort()
