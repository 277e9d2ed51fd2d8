"""The proxy's thread and asyncio loop: the listener, the connections, the timers.

The thread owns the loop from start to close: it runs ``_main`` (listen,
then wait for the stop request, then shut everything down) and closes the
loop itself, so nothing is ever scheduled on a closed loop. Callers reach
the loop only through ``call`` (run a coroutine there, bounded),
``post`` (fire and forget) and ``stop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._address import Address, format_address
from ._events import EventLog
from ._faults import Switchboard
from ._link import CLOSE_BOUND, Connection, Outcome
from ._net import describe, listen, nodelay, peer_text

__all__ = ["CONTROL_BOUND", "Engine"]

CONTROL_BOUND: Final = 5.0  # every control call returns or raises within this
_ACCEPTS_PER_TURN: Final = 64  # accepts per turn of the loop, so data keeps flowing meanwhile
_ACCEPT_RETRY: Final = 0.05  # seconds to wait after accept failed (out of descriptors)


class Engine:
    """One run of a proxy, from ``start`` to ``stop``.

    Methods other than ``start``, ``call``, ``post`` and ``stop`` run on the
    loop's thread.
    """

    def __init__(
        self,
        *,
        address: Address,
        listener: socket.socket,
        upstream: Address,
        upstream_sockaddr: tuple[socket.AddressFamily, Any],
        connect_timeout: float,
        seed: int,
        board: Switchboard,
        log: EventLog,
        ids: itertools.count[int],
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.address = address
        self.listener: socket.socket | None = listener
        self.upstream_text = format_address(upstream)
        self.upstream_family, self.upstream_sockaddr = upstream_sockaddr
        self.connect_timeout = connect_timeout
        self.seed = seed
        self.board = board
        self.log = log
        self.conns: dict[int, Connection] = {}
        self._ids = ids
        self._ordinals = itertools.count(1)  # per run: the same traffic draws the same
        self._timers: set[asyncio.TimerHandle] = set()
        self._accept_retry: asyncio.TimerHandle | None = None
        self._stop_reset = False
        self._stop_requested = asyncio.Event()  # bound to the loop at its first use, there
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"gocp-fault-proxy-{address[1]}", daemon=True
        )

    # -- from the caller's thread -------------------------------------------------------

    def start(self) -> None:
        """Start the thread; return once it listens. Raises ``RuntimeError`` if it does not
        (and then leaves nothing behind)."""
        self.loop.set_exception_handler(self._loop_error)
        try:
            self._thread.start()
        except BaseException:  # pragma: no cover - no thread could be started
            if self.listener is not None:
                self.listener.close()
            self.loop.close()
            raise
        if not self._ready.wait(CONTROL_BOUND):  # pragma: no cover - a bug in the loop
            self.stop(reset=True)
            raise RuntimeError(f"FaultProxy {self._where()}: did not start")

    def call(self, action: Callable[[], Awaitable[object] | None]) -> None:
        """Run ``action`` on the loop, then wait for what it returns (if anything): return
        within ``CONTROL_BOUND`` seconds, or raise ``RuntimeError``; ``action``'s errors
        are raised here.

        One turn of the loop runs it: a busy proxy answers as fast as it turns.
        """
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                waiting = action()
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                done.set_exception(exc)
                return
            if waiting is None:
                done.set_result(None)
            else:
                asyncio.ensure_future(waiting, loop=self.loop).add_done_callback(
                    lambda _finished: done.set_result(None)
                )

        self.loop.call_soon_threadsafe(run)
        try:
            done.result(CONTROL_BOUND)
        except concurrent.futures.TimeoutError:
            raise RuntimeError(
                f"FaultProxy {self._where()}: no answer within {CONTROL_BOUND}s"
            ) from None

    def post(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop soon; do not wait. Ignored once the loop is closed."""
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: the proxy stopped meanwhile
            pass

    def stop(self, *, reset: bool) -> None:
        """Close the listener and every connection, end the thread, close the loop."""
        self.post(lambda: self._request_stop(reset))
        self._thread.join(CONTROL_BOUND + CLOSE_BOUND)
        if self._thread.is_alive():  # pragma: no cover - a bug in the loop
            raise RuntimeError(f"FaultProxy {self._where()}: thread did not stop")

    def _where(self) -> str:
        return format_address(self.address)

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = self.loop
        try:
            loop.run_until_complete(self._main())
        finally:
            self.refuse(record=False)  # done already, unless _main failed
            leftovers = asyncio.all_tasks(loop)
            if leftovers:  # pragma: no cover - only if a connection did not end
                for task in leftovers:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self.board.on_change = lambda: self.post(self.table_changed)
        self._accept_on()
        self._ready.set()
        await self._stop_requested.wait()
        await self._shutdown(reset=self._stop_reset)

    def _request_stop(self, reset: bool) -> None:
        self._stop_reset = reset
        self._stop_requested.set()

    async def _shutdown(self, *, reset: bool) -> None:
        self.board.on_change = None
        self.cancel_timers()
        self.refuse(record=False)
        closing = self.kill(reset=reset, reason="proxy stopped")
        if closing is not None:
            await closing
        stuck = list(self.conns.values())
        for conn in stuck:  # pragma: no cover - a connection that did not close in time
            conn.force_close()
        if stuck:  # pragma: no cover
            await asyncio.wait([conn.done for conn in stuck], timeout=CLOSE_BOUND)
        self.log.add(0, "stop", "proxy stopped")

    # -- the fault table ----------------------------------------------------------------

    def table_changed(self) -> None:
        """Apply a new fault table to every connection now (the pumps also look before
        each write; this wakes the ones that wait and starts the timers)."""
        for conn in list(self.conns.values()):
            conn.refresh()

    # -- the listener -------------------------------------------------------------------

    def _accept_on(self) -> None:
        if self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept_ready)
            self.log.add(0, "listen", f"on {self._where()}")

    def _accept_ready(self) -> None:
        listener = self.listener
        assert listener is not None
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                client, _peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. out of descriptors: log, breathe, go on
                self.log.add(0, "error", f"accept: {describe(exc)}")
                self.loop.remove_reader(listener.fileno())
                self._accept_retry = self.loop.call_later(_ACCEPT_RETRY, self._accept_again)
                return
            client.setblocking(False)
            nodelay(client)
            conn_id = next(self._ids)
            self.board.last_id = conn_id
            self.log.add(conn_id, "accept", f"from {peer_text(client)}", opened=1)
            conn = Connection(self, conn_id, next(self._ordinals), client)
            self.conns[conn_id] = conn
            conn.start()

    def _accept_again(self) -> None:
        self._accept_retry = None
        if self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept_ready)

    def listen(self) -> None:
        """Listen again on the same port (after ``refuse``); nothing if listening."""
        if self.listener is None:
            self.listener = listen(*self.address)
            self._accept_on()

    def refuse(self, *, record: bool = True) -> None:
        """Close the listener: connects are refused until ``listen``."""
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        listener, self.listener = self.listener, None
        if listener is not None:
            self.loop.remove_reader(listener.fileno())
            listener.close()
            if record:
                self.log.add(0, "refuse", "listener closed")

    # -- connections --------------------------------------------------------------------

    def forget(self, conn: Connection, outcome: Outcome) -> None:
        """``conn`` closed both its sockets: drop it and log its last event."""
        self.conns.pop(conn.id, None)
        what = "reset" if outcome.reset else "close"
        self.log.add(conn.id, what, outcome.reason, opened=-1)

    def kill(self, *, reset: bool, reason: str) -> Awaitable[object] | None:
        """End every current connection; return what finishes once their sockets are
        closed (at most ``CLOSE_BOUND`` seconds later), or ``None`` if there were none."""
        conns = list(self.conns.values())
        for conn in conns:
            conn.end(reset=reset, reason=reason)
        if not conns:
            return None
        return asyncio.wait([conn.done for conn in conns], timeout=CLOSE_BOUND)

    def reset(self, after: float) -> Awaitable[object] | None:
        """Reset the connections open now (``kill``), or (``after > 0``) those open
        ``after`` seconds from now, without waiting."""
        if after <= 0:
            return self.kill(reset=True, reason="reset()")

        def fire() -> None:
            self._timers.discard(timer)
            for conn in list(self.conns.values()):
                conn.end(reset=True, reason=f"reset(after={after})")

        timer = self.loop.call_later(after, fire)
        self._timers.add(timer)
        return None

    def cancel_timers(self) -> None:
        """Cancel the ``reset(after=...)`` calls that have not fired (``heal``, stop)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # -- bugs ---------------------------------------------------------------------------

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        detail = context.get("message", "")
        if exc is not None:
            detail = f"{detail}: {describe(exc)}"
        self.log.add(0, "error", detail)
