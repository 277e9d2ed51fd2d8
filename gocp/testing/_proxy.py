"""FaultProxy: a fault-injecting loopback TCP proxy for tests; and the ``no_backoff`` switch.

A ``FaultProxy`` listens on an ephemeral loopback port and forwards every
connection it accepts to one upstream server. The test points its client (a
gocp pool, or any socket) at ``proxy.address`` and injects faults with control
calls: latency and jitter, a bandwidth limit, sliced writes, a cut after an
exact byte count, resets, a blackhole, a stall, slow closes, a refusing
listener. Everything runs in one background thread with an asyncio loop.

Vocabulary:

- A *direction* is ``"up"`` (client to server), ``"down"`` (server to
  client) or ``"both"``.
- Each connection forwards each direction in order: what one side sends is
  read in *chunks* (one ``recv`` each), queued, and written to the other
  side. The faults of a direction are looked up again before every write, so
  a control call takes effect for every byte not yet forwarded, on current
  connections and new ones alike.
- The end of a side's stream is forwarded in order after its data: a FIN
  (the side closed or shut down writing) becomes a FIN to the other side
  (``shutdown(SHUT_WR)``), a reset or other socket error becomes an RST of
  both sides. A connection ends when both directions have forwarded their
  FIN, or at the first reset, cut or kill.

Guarantees:

- Every control call is thread-safe, and returns or raises
  ``RuntimeError`` within 5 seconds. Calls that only change settings may be
  made before ``start``; they persist across ``stop``/``start``.
- The upstream address is resolved once, by ``start``; the proxy makes no
  DNS lookups while it runs.
- ``stop`` closes the listener and every connection, ends the thread and
  releases every descriptor before it returns.
- All randomness comes from ``random.Random`` streams seeded by ``seed``:
  the same seed and the same traffic replay the same delays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import attrs

from .. import _backoff
from .._address import Address, format_address, parse_address
from ._servers import close_socket

__all__ = ["FaultProxy", "ProxyEvent", "no_backoff"]

Direction = Literal["up", "down", "both"]
_Side = Literal["up", "down"]
_T = TypeVar("_T")

_CONTROL_BOUND: Final = 5.0  # every control call returns or raises within this

_CLOSE_BOUND = 2.0  # a connection told to end closes within this (it only closes sockets)
_CHUNK = 65536  # most bytes read from a side at once
_QUEUE_CHUNKS = 8  # chunks read but not yet written, per direction, before reading pauses
_BANDWIDTH_QUANTUM = 0.02  # a rate-limited write carries at most this many seconds' worth
_DRAIN_READS = 64  # reads of unread input before a gentle close (avoids an RST)
_EVENTS_KEPT = 10_000
_SIDES: tuple[_Side, _Side] = ("up", "down")
_SOURCE: dict[_Side, str] = {"up": "client", "down": "server"}
_TARGET: dict[_Side, str] = {"up": "server", "down": "client"}


# -- the event log -------------------------------------------------------------------


@attrs.frozen
class ProxyEvent:
    """One thing a ``FaultProxy`` did, as listed by ``FaultProxy.events``.

    - ``time``: ``time.monotonic()`` when it happened.
    - ``conn``: the connection's id (1, 2, ... in accept order, never reused
      by one proxy), or 0 for the proxy itself.
    - ``what``: the kind of event (below); ``detail``: a readable sentence.
    - ``direction``: ``"up"`` or ``"down"`` for events of one direction, else ``""``.
    - ``nbytes``, ``seconds``, ``pieces``: numbers for the events that have them.

    Kinds, for the proxy (``conn == 0``): ``"listen"`` (listening on
    ``address``), ``"refuse"`` (listener closed by ``refuse``), ``"stop"``,
    ``"error"`` (an unexpected failure inside the proxy, such as running out
    of descriptors, or a bug; a test should see none).
    For a connection: ``"accept"``; ``"connect"`` (upstream connected);
    ``"upstream_failed"`` (connecting upstream failed; a ``"reset"`` follows);
    ``"delay"`` (a chunk of ``nbytes`` was held ``seconds`` by latency and
    jitter); ``"slice"`` (a chunk of ``nbytes`` was written in ``pieces``
    writes); ``"drop"`` (``nbytes`` discarded by a blackhole); ``"cut"``
    (``cut_after`` fired; ``nbytes`` were forwarded since the count began);
    ``"eof"`` (a FIN was forwarded in ``direction``). Every connection's last
    event is exactly one ``"close"`` (both sides closed with FIN) or
    ``"reset"`` (both sides closed with RST), logged once its sockets are closed
    and ``connections`` no longer counts it. An event is logged once the
    thing is done: ``"delay"`` when the chunk is released, ``"slice"`` after
    its last write, ``"cut"`` before the sockets close.
    """

    __module__ = "gocp.testing"

    time: float
    conn: int
    what: str
    detail: str = ""
    direction: str = ""
    nbytes: int = 0
    seconds: float = 0.0
    pieces: int = 0


class _Recorder:
    """The event log and the connection count; shared by both threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[ProxyEvent] = deque(maxlen=_EVENTS_KEPT)
        self.connections = 0

    def add(
        self, conn: int, what: str, detail: str = "", *, opened: int = 0, **numbers: Any
    ) -> None:
        """Log an event; ``opened`` (+1, -1) changes the connection count in the same step."""
        with self._cond:
            self.connections += opened
            self._events.append(ProxyEvent(time.monotonic(), conn, what, detail, **numbers))
            self._cond.notify_all()

    def snapshot(self) -> list[ProxyEvent]:
        with self._cond:
            return list(self._events)

    def wait_for(
        self, predicate: Callable[[ProxyEvent], bool], timeout: float
    ) -> ProxyEvent | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                events = list(self._events)
                for event in events[seen:]:
                    if predicate(event):
                        return event
                seen = len(events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


# -- settings --------------------------------------------------------------------------


class _Faults:
    """The fault settings of one direction. Mutated in place: pumps hold a reference."""

    __slots__ = ("bandwidth", "blackhole", "cut", "jitter", "latency", "slice", "stall")

    latency: float
    jitter: float
    bandwidth: float | None
    slice: int | None
    cut: int | None  # the budget of each new connection
    blackhole: bool
    stall: bool

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.latency = 0.0
        self.jitter = 0.0
        self.bandwidth = None
        self.slice = None
        self.cut = None
        self.blackhole = False
        self.stall = False


class _Settings:
    """Every fault setting of a proxy. Only the proxy thread touches it while running."""

    def __init__(self) -> None:
        self.faults: dict[_Side, _Faults] = {side: _Faults() for side in _SIDES}
        self.slow_close = 0.0

    def clear(self) -> None:
        for faults in self.faults.values():
            faults.clear()
        self.slow_close = 0.0


# -- argument checks ----------------------------------------------------------------


def _number(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return float(value)


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    seconds = _number(name, value, "a number of seconds")
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{name}: must be {'>' if positive else '>='} 0, got {value!r}")
    return seconds


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    return value


def _rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    rate = _number(name, value, "a number of bytes per second or None")
    if rate <= 0:
        raise ValueError(f"{name}: must be > 0 or None, got {value!r}")
    return rate


def _sides(direction: object) -> tuple[_Side, ...]:
    if direction == "both":
        return _SIDES
    if direction == "up":
        return ("up",)
    if direction == "down":
        return ("down",)
    raise ValueError(f"direction: must be 'up', 'down' or 'both', got {direction!r}")


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


# -- sockets ---------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listener on ``(host, port)``, re-bindable while old connections live."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _resolve(address: Address) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address to connect to, resolved once (no lookups in the loop)."""
    host, port = address
    family, _kind, _proto, _name, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )[0]
    return family, sockaddr


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_gently(sock: socket.socket) -> None:
    """Close so that the peer gets a FIN: shut down writing, drain unread input, close.

    Closing a socket with unread input would send an RST instead of the FIN.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    for _ in range(_DRAIN_READS):
        try:
            if not sock.recv(_CHUNK):
                break
        except OSError:  # BlockingIOError: drained; others: nothing more to read
            break
    sock.close()


# -- one connection --------------------------------------------------------------------


@attrs.frozen
class _Chunk:
    arrival: float  # monotonic time it was read
    data: bytes
    draw: float  # this chunk's uniform [0, 1) draw for jitter


@attrs.frozen
class _End:
    """The source side's stream ended: FIN (``reset=False``) or a reset/error."""

    reset: bool
    reason: str


class _Pump:
    """One direction of one connection: read ``src``, apply the faults, write ``dst``.

    Two tasks: ``read`` queues chunks (pausing while stalled or when the
    queue is full, which is the backpressure) and ``write`` forwards them
    in order, looking the faults up again before each write.
    """

    def __init__(
        self, conn: _Connection, side: _Side, src: socket.socket, dst: socket.socket
    ) -> None:
        self.conn = conn
        self.engine = conn.engine
        self.side: _Side = side
        self.src = src
        self.dst = dst
        self.faults = self.engine.settings.faults[side]
        self.queue: asyncio.Queue[_Chunk | _End] = asyncio.Queue(_QUEUE_CHUNKS)
        self.rng = random.Random(f"{self.engine.seed}:{conn.id}:{side}")
        self.cut_remaining = self.faults.cut
        self.forwarded = 0  # bytes written to ``dst``
        self.cut_counted_from = 0  # ``forwarded`` when the cut budget was set
        self.send_at = 0.0  # bandwidth: the next write may not start before this
        self.finished = False  # the FIN was forwarded

    # -- reading ----------------------------------------------------------------------

    async def read(self) -> None:
        loop = self.engine.loop
        while True:
            while self.faults.stall:
                await self.engine.changed()
            try:
                data = await loop.sock_recv(self.src, _CHUNK)
            except OSError as exc:
                await self.queue.put(_End(True, f"{_SOURCE[self.side]}: {_describe(exc)}"))
                return
            if not data:
                await self.queue.put(_End(False, f"{_SOURCE[self.side]} closed"))
                return
            await self.queue.put(_Chunk(time.monotonic(), data, self.rng.random()))

    # -- writing ----------------------------------------------------------------------

    async def write(self) -> None:
        while True:
            if self.cut_remaining == 0:
                self.cut()
                return
            item = await self.queue.get()
            if isinstance(item, _Chunk):
                if not await self._forward(item):
                    return
                continue
            await self._hold()
            if item.reset:
                self.conn.end(reset=True, reason=item.reason)
            else:
                await self._forward_fin(item.reason)
            return

    async def _hold(self) -> None:
        """Wait while this direction is stalled or blackholed (the end of a stream waits too)."""
        while self.faults.stall or self.faults.blackhole:
            await self.engine.changed()

    async def _forward(self, chunk: _Chunk) -> bool:
        """Write one chunk under the current faults; False once the connection must end."""
        view = memoryview(chunk.data)
        released = False  # its latency has passed
        pieces = 0
        while view:
            if self.cut_remaining == 0:
                self.cut()
                return False
            if self.faults.blackhole:
                self._record("drop", f"discarded {len(view)} bytes", nbytes=len(view))
                return True
            wait = self._wait_before_write(chunk, released=released)
            if wait is None or wait > 0:
                await self.engine.changed(wait)
                continue
            if not released:
                released = True
                self._record_delay(chunk)
            size = self._piece_size(len(view))
            if not await self._send(view[:size]):
                return False
            view = view[size:]
            pieces += 1
        if pieces > 1:
            self._record(
                "slice",
                f"{len(chunk.data)} bytes in {pieces} writes",
                nbytes=len(chunk.data),
                pieces=pieces,
            )
        if self.cut_remaining == 0:
            self.cut()
            return False
        return True

    def _delay(self, chunk: _Chunk) -> float:
        return self.faults.latency + chunk.draw * self.faults.jitter

    def _wait_before_write(self, chunk: _Chunk, *, released: bool) -> float | None:
        """Seconds until the next piece of ``chunk`` may go; ``None``: until a setting changes."""
        if self.faults.stall:
            return None
        now = time.monotonic()
        if not released:
            wait = chunk.arrival + self._delay(chunk) - now
            if wait > 0:
                return wait
        if self.faults.bandwidth:
            return self.send_at - now
        return 0.0

    def _record_delay(self, chunk: _Chunk) -> None:
        if self.faults.latency or self.faults.jitter:
            delay = self._delay(chunk)
            self._record(
                "delay",
                f"{len(chunk.data)} bytes held {delay:.6f}s",
                nbytes=len(chunk.data),
                seconds=delay,
            )

    def _piece_size(self, remaining: int) -> int:
        faults = self.faults
        size = remaining
        if faults.slice is not None:
            size = min(size, faults.slice)
        if faults.bandwidth is not None:
            size = min(size, max(1, int(faults.bandwidth * _BANDWIDTH_QUANTUM)))
        if self.cut_remaining is not None:
            size = min(size, self.cut_remaining)
        return size

    async def _send(self, piece: memoryview) -> bool:
        try:
            await self.engine.loop.sock_sendall(self.dst, piece)
        except OSError as exc:
            self.conn.end(reset=True, reason=f"{_TARGET[self.side]}: {_describe(exc)}")
            return False
        count = len(piece)
        self.forwarded += count
        if self.faults.bandwidth:
            self.send_at = max(self.send_at, time.monotonic()) + count / self.faults.bandwidth
        if self.cut_remaining is not None:
            self.cut_remaining -= count
        return True

    async def _forward_fin(self, reason: str) -> None:
        """Send the FIN on, after ``slow_close`` seconds; the connection ends after both."""
        reached = time.monotonic()
        while True:
            wait = reached + self.engine.settings.slow_close - time.monotonic()
            if wait <= 0:
                break
            await self.engine.changed(wait)
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self._record("eof", f"{reason}; FIN sent to {_TARGET[self.side]}")
        self.finished = True
        self.conn.pump_finished()

    # -- control ----------------------------------------------------------------------

    def set_cut(self, nbytes: int | None) -> None:
        """Cut the connection once ``nbytes`` more bytes are forwarded (``None``: never)."""
        self.cut_remaining = nbytes
        self.cut_counted_from = self.forwarded
        if nbytes == 0:
            self.cut()

    def cut(self) -> None:
        if self.conn.outcome is None:
            counted = self.forwarded - self.cut_counted_from
            self._record(
                "cut",
                f"after {counted} bytes ({self.forwarded} on this connection)",
                nbytes=counted,
            )
            self.conn.end(reset=False, reason=f"cut_after ({self.side})")

    def _record(self, what: str, detail: str, **numbers: Any) -> None:
        self.engine.recorder.add(
            self.conn.id, what, f"{self.side}: {detail}", direction=self.side, **numbers
        )


class _Connection:
    """One accepted client, its upstream socket, and the two pumps between them.

    ``run`` (the supervising task) dials upstream, starts the pumps, waits
    for ``end`` to be called (by a pump, a control call or ``stop``), then
    cancels the tasks and closes both sockets with FIN or RST.
    """

    def __init__(self, engine: _Engine, conn_id: int, client: socket.socket) -> None:
        self.engine = engine
        self.id = conn_id
        self.client = client
        self.server: socket.socket | None = None
        self.pumps: dict[_Side, _Pump] = {}
        self.outcome: _End | None = None
        self._ended = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.task = engine.loop.create_task(self._run())

    def end(self, *, reset: bool, reason: str) -> None:
        """Close this connection (RST if ``reset``, else FIN) soon. The first call decides."""
        if self.outcome is None:
            self.outcome = _End(reset, reason)
            self._ended.set()

    def pump_finished(self) -> None:
        if all(pump.finished for pump in self.pumps.values()):
            self.end(reset=False, reason="both sides closed")

    async def _run(self) -> None:
        self._spawn(self._dial())
        try:
            await self._ended.wait()
        finally:
            self.end(reset=True, reason="proxy stopped")  # if cancelled: spawn nothing more
            await self._stop_tasks()
            self._close_sockets()

    async def _stop_tasks(self) -> None:
        """Cancel this connection's tasks and wait for them: none may outlive its sockets.

        A task can finish instead of being cancelled (``wait_for`` returns a
        result that was ready), so look again until none is left.
        """
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.outcome is not None:  # ending: start nothing new
            coro.close()
            return
        task = self.engine.loop.create_task(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in the proxy: make it visible, and do not hang
            self.engine.internal_error(f"connection {self.id}: {_describe(exc)}")
            self.end(reset=True, reason=f"internal error: {_describe(exc)}")

    async def _dial(self) -> None:
        engine = self.engine
        server = socket.socket(engine.upstream_family, socket.SOCK_STREAM)
        server.setblocking(False)
        self.server = server
        try:
            await asyncio.wait_for(
                engine.loop.sock_connect(server, engine.upstream_sockaddr),
                engine.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:  # noqa: UP041 - distinct before 3.11
            engine.recorder.add(self.id, "upstream_failed", _describe(exc))
            self.end(reset=True, reason="upstream connect failed")
            return
        if self.outcome is not None:  # ended while connecting
            return
        _nodelay(server)
        engine.recorder.add(self.id, "connect", f"to {engine.upstream_text}")
        ends: dict[_Side, tuple[socket.socket, socket.socket]] = {
            "up": (self.client, server),
            "down": (server, self.client),
        }
        for side, (src, dst) in ends.items():
            pump = _Pump(self, side, src, dst)
            self.pumps[side] = pump
            self._spawn(pump.read())
            self._spawn(pump.write())

    def _close_sockets(self) -> None:
        outcome = self.outcome or _End(True, "ended")
        for sock in (self.client, self.server):
            if sock is not None:
                if outcome.reset:
                    close_socket(sock, reset=True)
                else:
                    _close_gently(sock)
        self.engine.forget(self, outcome)


# -- the loop side ----------------------------------------------------------------------


class _Engine:
    """The proxy's thread and asyncio loop: listener, connections, timers.

    Methods other than ``start``, ``call`` and ``join`` run on the loop's thread.
    """

    def __init__(
        self,
        proxy: FaultProxy,
        listener: socket.socket,
        upstream: tuple[socket.AddressFamily, Any],
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = proxy._settings
        self.recorder = proxy._recorder
        self.seed = proxy._seed
        self.connect_timeout = proxy._connect_timeout
        self.upstream_family, self.upstream_sockaddr = upstream
        self.upstream_text = format_address(proxy.upstream)
        self.address = proxy.address
        self._ids = proxy._ids
        self.listener: socket.socket | None = listener
        self.conns: dict[int, _Connection] = {}
        self._accepting: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"gocp-fault-proxy-{self.address[1]}", daemon=True
        )

    # -- from the caller's thread -------------------------------------------------------

    def start(self) -> None:
        self.loop.set_exception_handler(self._loop_error)
        self.thread.start()
        self.call(self._begin())

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and return its result, within ``_CONTROL_BOUND``."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(_CONTROL_BOUND)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RuntimeError(
                f"FaultProxy {format_address(self.address)}: no answer within {_CONTROL_BOUND}s"
            ) from None

    def join(self) -> None:
        """Stop the loop, join the thread, release the loop's descriptors."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_CONTROL_BOUND)
        if self.thread.is_alive():  # pragma: no cover - a bug in the loop
            raise RuntimeError("FaultProxy thread did not stop")
        self.loop.close()

    # -- waiting for settings -----------------------------------------------------------

    async def changed(self, timeout: float | None = None) -> None:
        """Wait until a control call changes the settings, or ``timeout`` seconds pass."""
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.add(future)
        timer = None if timeout is None else self.loop.call_later(timeout, _wake, future)
        try:
            await future
        finally:
            self._waiters.discard(future)
            if timer is not None:
                timer.cancel()

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for future in waiters:
            _wake(future)

    async def apply(self, action: Callable[[_Engine | None], None]) -> None:
        action(self)
        self.notify()

    # -- the listener -------------------------------------------------------------------

    async def _begin(self) -> None:
        self._accept_on(self.listener)

    def _accept_on(self, listener: socket.socket | None) -> None:
        if listener is not None:
            self._accepting = self.loop.create_task(self._accept_loop(listener))
            self.recorder.add(0, "listen", f"on {format_address(self.address)}")

    async def _accept_loop(self, listener: socket.socket) -> None:
        # Not loop.sock_accept: cancelling it (refuse) could drop a socket it just accepted.
        while True:
            try:
                client, _peer = listener.accept()
            except BlockingIOError:
                await self._readable(listener)
                continue
            except OSError as exc:  # e.g. out of descriptors: log, breathe, go on
                self.recorder.add(0, "error", f"accept: {_describe(exc)}")
                await asyncio.sleep(0.05)
                continue
            client.setblocking(False)
            _nodelay(client)
            conn_id = next(self._ids)
            self.recorder.add(conn_id, "accept", f"from {_peer_text(client)}", opened=1)
            self.conns[conn_id] = _Connection(self, conn_id, client)

    async def _readable(self, sock: socket.socket) -> None:
        future: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(sock.fileno(), _wake, future)
        try:
            await future
        finally:
            self.loop.remove_reader(sock.fileno())

    async def listen(self) -> None:
        if self.listener is None:
            self.listener = _listen(*self.address)
            self._accept_on(self.listener)

    async def refuse(self, *, record: bool = True) -> None:
        task, self._accepting = self._accepting, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
            if record:
                self.recorder.add(0, "refuse", "listener closed")

    # -- connections --------------------------------------------------------------------

    def forget(self, conn: _Connection, outcome: _End) -> None:
        self.conns.pop(conn.id, None)
        what = "reset" if outcome.reset else "close"
        self.recorder.add(conn.id, what, outcome.reason, opened=-1)

    async def kill(self, *, reset: bool, reason: str) -> None:
        """End every current connection and wait until their sockets are closed."""
        conns = list(self.conns.values())
        for conn in conns:
            conn.end(reset=reset, reason=reason)
        if conns:
            await asyncio.wait([conn.task for conn in conns], timeout=_CLOSE_BOUND)

    async def reset(self, after: float) -> None:
        if after <= 0:
            await self.kill(reset=True, reason="reset()")
            return

        def fire() -> None:
            self._timers.discard(timer)
            for conn in list(self.conns.values()):
                conn.end(reset=True, reason=f"reset(after={after})")

        timer = self.loop.call_later(after, fire)
        self._timers.add(timer)

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def shutdown(self, *, reset: bool) -> None:
        self.cancel_timers()
        await self.refuse(record=False)
        await self.kill(reset=reset, reason="proxy stopped")
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:  # pragma: no cover - only if a connection did not end
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await self.loop.shutdown_default_executor()
        self.recorder.add(0, "stop", "proxy stopped")

    # -- bugs ---------------------------------------------------------------------------

    def internal_error(self, message: str) -> None:
        self.recorder.add(0, "error", message)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        detail = context.get("message", "")
        if exc is not None:
            detail = f"{detail}: {_describe(exc)}"
        self.internal_error(detail)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _peer_text(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return format_address((host, port))


# -- the public proxy --------------------------------------------------------------------


class FaultProxy:
    """A fault-injecting TCP proxy on loopback, for tests (see the module docstring).

    ``FaultProxy(upstream)`` forwards connections made to ``proxy.address``
    to ``upstream`` (``(host, port)`` or ``"host:port"``). ``start()`` (or
    ``with``) binds an ephemeral port on ``host`` and starts the proxy's
    thread; ``stop()`` ends it. ``seed`` seeds every random choice (jitter).
    ``connect_timeout`` bounds each upstream connect. The proxy connects
    upstream after accepting: when that fails, it resets the client's
    connection and logs ``"upstream_failed"``, so a client sees its connect
    succeed (or even fail, if the RST is quick) and then
    ``ConnectionResetError``, never a hang.

    Fault settings (``set_latency``, ``set_bandwidth``, ``set_slice``,
    ``cut_after``, ``blackhole``, ``stall``, ``slow_close``) apply to the
    given direction of current and new connections, to every byte not yet
    forwarded, until changed or cleared by ``heal``. Actions (``reset``,
    ``kill_all``, ``refuse``, ``accept``) act on the listener or on the
    connections open now.

    Every method is thread-safe and returns within 5 seconds (else raises
    ``RuntimeError``). Invalid arguments raise ``TypeError`` or
    ``ValueError`` naming the argument.
    """

    __module__ = "gocp.testing"

    def __init__(
        self,
        upstream: Address | str,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            self._upstream = parse_address(upstream)
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace("address:", "upstream:", 1)) from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
        if not isinstance(host, str):
            raise TypeError(f"host: expected a str, got {type(host).__name__} {host!r}")
        if not host:
            raise ValueError("host: must not be empty")
        self._seed = seed
        self._host = host
        self._port = 0
        self._connect_timeout = _seconds("connect_timeout", connect_timeout, positive=True)
        self._settings = _Settings()
        self._recorder = _Recorder()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()  # orders start, stop and control calls
        self._engine: _Engine | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen and start forwarding in a background thread; return ``self``.

        The first start binds an ephemeral port; a start after ``stop``
        binds the same port again. Does nothing if already running. Raises
        ``OSError`` if the port cannot be bound or ``upstream`` not resolved.
        """
        with self._lock:
            if self._engine is not None:
                return self
            upstream = _resolve(self._upstream)
            listener = _listen(self._host, self._port)
            self._port = listener.getsockname()[1]
            engine = _Engine(self, listener, upstream)
            try:
                engine.start()
            except BaseException:  # pragma: no cover - the thread could not start
                listener.close()
                engine.loop.close()
                raise
            self._engine = engine
        return self

    def stop(self, *, reset: bool = False) -> None:
        """Close the listener and every connection (RST if ``reset``, else FIN); end the thread.

        When it returns, no thread and no descriptor of the proxy is left.
        Settings and the event log are kept, and ``start`` may be called
        again. Idempotent.
        """
        with self._lock:
            engine, self._engine = self._engine, None
            if engine is None:
                return
            try:
                engine.call(engine.shutdown(reset=reset))
            finally:
                engine.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observing ----------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """``(host, port)`` to connect to; the same across ``refuse``/``accept`` and restarts.

        Raises ``RuntimeError`` before the first ``start`` (no port yet).
        """
        if self._port == 0:
            raise RuntimeError("FaultProxy: no address before start()")
        return self._host, self._port

    @property
    def address_text(self) -> str:
        """``address`` as ``"host:port"`` (``"[v6]:port"`` for IPv6)."""
        return format_address(self.address)

    @property
    def upstream(self) -> Address:
        """The ``(host, port)`` every connection is forwarded to."""
        return self._upstream

    @property
    def running(self) -> bool:
        """Whether the proxy thread runs (between ``start`` and ``stop``)."""
        return self._engine is not None

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed (both sides)."""
        return self._recorder.connections

    @property
    def events(self) -> list[ProxyEvent]:
        """A copy of the event log, oldest first (the last 10,000 events; see ``ProxyEvent``)."""
        return self._recorder.snapshot()

    def wait_for_event(
        self, what: str, *, conn: int | None = None, timeout: float = 5.0
    ) -> ProxyEvent:
        """The first logged event of kind ``what`` (of connection ``conn`` if given).

        Looks at the whole log, then waits up to ``timeout`` seconds for one
        to happen. Raises ``TimeoutError`` if none does.
        """
        timeout = _seconds("timeout", timeout)
        found = self._recorder.wait_for(
            lambda e: e.what == what and (conn is None or e.conn == conn), timeout
        )
        if found is None:
            recent = ", ".join(f"{e.conn}:{e.what}" for e in self.events[-10:])
            raise TimeoutError(f"no {what!r} event within {timeout}s (last events: {recent})")
        return found

    def __repr__(self) -> str:
        where = format_address((self._host, self._port)) if self._port else "unbound"
        state = "running" if self.running else "stopped"
        return (
            f"<gocp.testing.FaultProxy {where} -> {format_address(self._upstream)} "
            f"{state} connections={self.connections}>"
        )

    # -- fault settings -------------------------------------------------------------------

    def set_latency(
        self, seconds: float, jitter: float = 0.0, direction: Direction = "both"
    ) -> None:
        """Hold each chunk ``seconds + uniform(0, jitter)`` after it was read, then forward it.

        The uniform draw comes from the seeded stream of the connection and
        direction. Order is preserved: a chunk is never forwarded before the
        one read before it. ``set_latency(0)`` removes the delay.
        """
        seconds = _seconds("seconds", seconds)
        jitter = _seconds("jitter", jitter)
        sides = _sides(direction)

        def action(_engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].latency = seconds
                self._settings.faults[side].jitter = jitter

        self._control(action)

    def set_bandwidth(self, bytes_per_second: float | None, direction: Direction = "both") -> None:
        """Forward at most ``bytes_per_second`` per connection and direction (``None``: no limit).

        Writes are paced in pieces of at most 20 ms' worth of bytes.
        """
        rate = _rate("bytes_per_second", bytes_per_second)
        sides = _sides(direction)

        def action(_engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].bandwidth = rate

        self._control(action)

    def set_slice(self, max_bytes: int | None, direction: Direction = "both") -> None:
        """Forward each chunk in writes of at most ``max_bytes`` (``None``: whole chunks).

        Each write is a separate ``send`` with ``TCP_NODELAY``, so the peer
        sees the stream in small segments (short reads, split messages).
        """
        size = None if max_bytes is None else _count("max_bytes", max_bytes, minimum=1)
        sides = _sides(direction)

        def action(_engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].slice = size

        self._control(action)

    def cut_after(self, nbytes: int | None, direction: Direction = "up") -> None:
        """Close a connection once exactly ``nbytes`` more bytes went through in ``direction``.

        Counted per connection and direction: from now for current
        connections, from the start for new ones. When the count is reached
        the rest of that chunk is discarded and both sides get a FIN
        (nothing more is forwarded either way; a ``"cut"`` event is logged).
        ``nbytes=0`` cuts current connections now and new ones at once;
        ``None`` removes the cut.
        """
        budget = None if nbytes is None else _count("nbytes", nbytes, minimum=0)
        sides = _sides(direction)

        def action(engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].cut = budget
            for conn in list(engine.conns.values()) if engine else ():
                for side in sides:
                    if side in conn.pumps:
                        conn.pumps[side].set_cut(budget)

        self._control(action)

    def blackhole(self, direction: Direction = "both", *, enabled: bool = True) -> None:
        """Read and discard everything in ``direction``; keep both sockets open.

        Data already read but not yet forwarded is discarded too. A side's
        FIN or reset is not passed on while blackholed (it is held, and
        passed on after ``heal``). ``enabled=False`` ends the blackhole.
        """
        on = _flag("enabled", enabled)
        sides = _sides(direction)

        def action(_engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].blackhole = on

        self._control(action)

    def stall(self, direction: Direction = "both", *, enabled: bool = True) -> None:
        """Stop reading and forwarding in ``direction``; the sender's buffers fill up.

        Nothing is lost: what was read is held, and everything flows again
        after ``heal`` (or ``stall(direction, enabled=False)``).
        """
        on = _flag("enabled", enabled)
        sides = _sides(direction)

        def action(_engine: _Engine | None) -> None:
            for side in sides:
                self._settings.faults[side].stall = on

        self._control(action)

    def slow_close(self, seconds: float) -> None:
        """When one side closes (FIN), wait ``seconds`` before passing the FIN to the other.

        ``slow_close(0)`` passes it on at once (the default).
        """
        delay = _seconds("seconds", seconds)

        def action(_engine: _Engine | None) -> None:
            self._settings.slow_close = delay

        self._control(action)

    def heal(self) -> None:
        """Clear every fault: latency, jitter, bandwidth, slice, cuts, blackhole, stall, slow close.

        Also cancels ``reset(after=...)`` calls that have not fired yet. Data
        held by a fault is forwarded at once. Does not change the listener
        (see ``accept``) and does not bring back closed connections.
        """

        def action(engine: _Engine | None) -> None:
            self._settings.clear()
            if engine is not None:
                engine.cancel_timers()
                for conn in engine.conns.values():
                    for pump in conn.pumps.values():
                        pump.cut_remaining = None

        self._control(action)

    def _control(self, action: Callable[[_Engine | None], None]) -> None:
        """Run a settings change on the proxy thread (or here, when stopped) and wake the pumps."""
        with self._lock:
            engine = self._engine
            if engine is None:
                action(None)
            else:
                engine.call(engine.apply(action))

    # -- actions --------------------------------------------------------------------------

    def reset(self, after: float = 0.0) -> None:
        """Reset (RST, ``SO_LINGER`` 0) both sides of every open connection.

        With ``after == 0`` it returns once they are closed; otherwise it
        returns at once and resets the connections open ``after`` seconds
        later (``heal`` and ``stop`` cancel it). Nothing happens when stopped.
        """
        delay = _seconds("after", after)
        with self._lock:
            engine = self._engine
            if engine is not None:
                engine.call(engine.reset(delay))

    def kill_all(self, reset: bool = False) -> None:
        """Close every open connection, both sides, with FIN (RST if ``reset``).

        Returns once they are closed; the listener keeps accepting.
        """
        rst = _flag("reset", reset)
        with self._lock:
            engine = self._engine
            if engine is not None:
                engine.call(engine.kill(reset=rst, reason="kill_all()"))

    def refuse(self) -> None:
        """Close the listener: new connections are refused (``ECONNREFUSED``).

        Open connections live on. Raises ``RuntimeError`` when not running.
        """
        with self._lock:
            engine = self._running_engine("refuse")
            engine.call(engine.refuse())

    def accept(self) -> None:
        """Listen again, on the same port, after ``refuse``; does nothing if listening.

        Raises ``OSError`` if the port was taken meanwhile and ``RuntimeError``
        when not running.
        """
        with self._lock:
            engine = self._running_engine("accept")
            engine.call(engine.listen())

    def _running_engine(self, call: str) -> _Engine:
        engine = self._engine
        if engine is None:
            raise RuntimeError(f"FaultProxy.{call}(): the proxy is not running (call start())")
        return engine


# -- testing switches -------------------------------------------------------------------


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Within the block, every pool redials at once: dial backoff waits are 0.

    A failed dial still fails (``DialError``), but the next operation makes
    a real new attempt instead of raising "backing off". Process-wide: it
    affects all pools in all threads. On exit, also by an exception, the
    previous setting is restored, so blocks nest.
    """
    previous = _backoff.set_no_wait(True)
    try:
        yield
    finally:
        _backoff.set_no_wait(previous)
