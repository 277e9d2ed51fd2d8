"""What the two shells' hubs share: the steps around each piece of a pool's I/O.

``HubBase`` is what a pool's ``get``/``put``, its members and its upkeep share in
either shell: the core and the connector, and the steps around each piece of I/O (a
dial's begin, failure, success and end; a check's; closing doomed connections; the
synchronous part of a background pass; the close). The core's decisions are taken
under ``lock`` (the threaded shell's lock; none in asyncio); reports and closes are
made outside it. The threaded ``Hub`` (``gocp._hub``) and the asyncio hub
(``gocp._aio_hub``) add the waiting and the I/O itself.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from ._core import BUSY, CHECK, DIAL, IDLE, LEAK, LENT, WAKE, PoolCore, Slot
from ._errors import ConnectionBroken, DialError, describe
from ._log import EventLog

__all__ = ["Attempt", "Connector", "HubBase", "caller_stack", "format_stack"]


class Connector(Protocol):
    """Makes, checks and closes one pool's connections (sockets or clients)."""

    label: str
    probe_lease: float
    release_lent: bool

    @property
    def can_check(self) -> bool: ...
    @property
    def dial_timeout(self) -> float | None: ...  # a connect's bound (None: the hook's own)
    def connect(self, deadline: float | None) -> Any: ...
    def check(self, slot: Slot) -> bool: ...
    def close(self, conn: Any) -> None: ...
    def release(self, conn: Any) -> bool: ...
    def forget(self, slot: Slot) -> None: ...
    def interrupt(self, conn: Any) -> None: ...
    def stale(self, conn: Any) -> bool: ...


class Attempt:
    """One dial in flight: when it began, whether the backoff let it go ahead, what it
    made, and whether its outcome is recorded (set under the lock, so an interruption
    after that point never records it twice)."""

    __slots__ = ("conn", "done", "started", "wait")

    def __init__(self, started: float) -> None:
        self.started = started
        self.wait: float | None = None  # 0.0: the backoff let it go ahead
        self.conn: Any = None
        self.done = False


class HubBase:
    """What a pool's members, its upkeep and its ``get``/``put`` share in either shell:
    the core and the connector, and the steps around each piece of I/O (the core's
    decisions taken under ``lock``; reports and closes made outside it). The threaded
    ``Hub`` and the asyncio hub add the waiting and the I/O itself."""

    __slots__ = ("__weakref__", "clock", "connector", "core", "lock", "log", "on_idle", "pool_ref")

    core: PoolCore[Any, Any]  # set by the pool once its members (which refer here) exist
    lock: Any  # a context manager: the pool's lock (threads), or none (asyncio)
    #: Whether threads share the pool (the thread shell): its core is then a
    #: ``SharedCore`` on a free-threaded build.
    threads = False

    def __init__(
        self,
        connector: Any,
        *,
        clock: Callable[[], float],
        log: EventLog | None,
    ) -> None:
        self.connector = connector
        self.clock = clock
        self.log = log
        self.pool_ref: Callable[[], Any] = lambda: None
        # Called (outside the lock) when the pool's own work gave a slot back to the idle
        # ring: a cluster waiting on several pools at once hears of it here.
        self.on_idle: Callable[[], None] | None = None

    # -- the shell's part ---------------------------------------------------------------

    def wake(self, waiter: Any) -> None:
        """Wake a waiter the core served (``DRAIN`` or ``None``: nobody). Under the lock."""
        raise NotImplementedError

    def wake_closed(self, waiter: Any) -> None:
        """Wake a waiter because the pool closed. Under the lock."""
        raise NotImplementedError

    def dial_reported(self) -> None:
        """A dial's outcome was recorded (under the lock): callers waiting out a probe, or
        for ``min_idle``, look again."""

    def upkeep_wake(self) -> None:
        """A connection was closed while ``min_idle`` wants members connected."""

    # -- dialling steps ------------------------------------------------------------------

    def deadline(self, by: float | None) -> float | None:
        """A connect's deadline (``time.monotonic``): ``dial_timeout`` from now, and no
        later than ``by`` (past ``by`` already: a last, near-instant try)."""
        limit: float | None = self.connector.dial_timeout
        if limit is None:
            return None
        now = time.monotonic()
        if by is None:
            return now + limit
        return min(now + limit, max(by, now + 0.001))

    def dial_begin(self, attempt: Attempt) -> None:
        """Ask the backoff; ``DialError`` (with ``retry_in``) while it says wait."""
        core = self.core
        with self.lock:
            attempt.wait = core.dial_begin(attempt.started)
            if attempt.wait:
                raise core.backoff_error(attempt.wait)

    def dial_failed(self, attempt: Attempt, slot: Slot, exc: BaseException) -> DialError:
        """Record a failed connect, report it, and return the error to raise."""
        core = self.core
        with self.lock:
            error = core.dial_failed(self.clock(), attempt.started, exc)
            attempt.done = True
            tries = core.backoff.failures
            self.dial_reported()
        self.report(
            "warning",
            "dial_failed",
            member=slot.index,
            error=describe(exc),
            attempt=tries,
            retry_in=round(error.retry_in, 3),
        )
        return error

    def dial_made(self, attempt: Attempt, slot: Slot) -> Any:
        """Attach what the connect made and return it (``DialError`` if the pool holds it
        already: a dial hook that returned an old client)."""
        conn = attempt.conn
        with self.lock:
            failures, refused = self.core.dial_made(slot, conn, self.clock(), attempt.started)
            attempt.done = True
            self.dial_reported()
            if refused is not None:
                attempt.conn = None  # not ours to close: another slot holds it
                raise refused
        if failures:
            self.report("info", "reconnected", failures=failures)
        return conn

    def dial_ended(self, attempt: Attempt, slot: Slot) -> None:
        """However the dial ended: if no outcome was recorded (interrupted, cancelled),
        give up its probe and close what it made."""
        if not attempt.done and attempt.wait == 0.0:
            with self.lock:
                self.core.dial_abandoned(attempt.started)
                attempt.done = True
                self.dial_reported()
            conn = attempt.conn
            if conn is not None and slot.conn is not conn:
                self.close_conn(conn)

    # -- checking steps ---------------------------------------------------------------

    def check_begins(self, slot: Slot) -> None:
        with self.lock:
            self.core.check_begins(slot)

    def check_failed(self, slot: Slot, exc: BaseException) -> bool:
        """Report a check that raised; True if its hook failed (not the socket's I/O)."""
        self.report("warning", "check_failed", member=slot.index, error=describe(exc))
        return not isinstance(exc, ConnectionBroken)

    def check_ended(self, slot: Slot, ok: bool, failed: bool) -> None:
        with self.lock:
            self.core.checked(slot, self.clock(), ok, hook_failed=failed)
        if not ok:
            self.drain()

    # -- closing connections -------------------------------------------------------------

    def drain(self) -> None:
        """Close the connections the core doomed (any thread, outside the lock).

        A connection is taken off ``doomed`` under the lock (threads that run at once
        could otherwise take the same one) and held in a local with no call in between,
        so an interrupt cannot come between them either; an interrupted close is tried
        once more (so a close hook should be idempotent, as ``socket.close`` and most
        clients' ``close()`` are)."""
        doomed = self.core.doomed
        if not doomed:
            return
        lock = self.lock
        while doomed:
            conn = None
            try:
                with lock:
                    if not doomed:  # another thread took the last one
                        break
                    conn = doomed[0]
                    del doomed[0]
                self.close_conn(conn)
            except BaseException:
                if conn is not None:
                    self.close_conn(conn)
                raise
        if self.core.min_idle:  # a member lost its connection: the upkeep refills it
            self.upkeep_wake()

    def close_conn(self, conn: Any) -> None:
        """Close one connection; a close that fails is reported, never raised."""
        try:
            self.connector.close(conn)
        except Exception as exc:  # noqa: BLE001 - a user hook or close(): report, go on
            self.close_failed(exc)

    def close_failed(self, exc: BaseException) -> None:
        with self.lock:
            self.core.hook_failed()
        self.report("warning", "close_failed", error=describe(exc))

    def broke(self, slot: Slot, op: str, exc: BaseException) -> None:
        """A lent slot's connection failed during I/O: close it (it redials on next use)."""
        with self.lock:
            self.core.broke(slot)
        self.drain()
        self.report("warning", "connection_broken", error=describe(exc), op=op, member=slot.index)

    def stale(self, slot: Slot) -> None:
        """A lent slot's idle connection was closed by the peer: replace it (nothing sent)."""
        with self.lock:
            self.core.found_stale(slot)
        self.drain()
        self.report("info", "stale_dropped", member=slot.index)

    def lent_to(self, slot: Slot, seq: int | None) -> bool:
        """Whether ``slot`` is lent (in its lend ``seq``, when given). Call under the lock."""
        return slot.state is LENT and (seq is None or slot.seq == seq)

    # -- the background pass ------------------------------------------------------------

    def plan(self) -> tuple[float, list[tuple[str, Any]], float]:
        """The synchronous part of a background pass: find idle connections the peer
        closed, take the core's tasks (waking the waiters it served), report leaks.
        Returns ``(now, tasks, due)``: the shell runs the ``CHECK`` and ``DIAL`` tasks
        (each then ``restore``), and looks again at ``due``."""
        self.sweep()
        with self.lock:
            now = self.clock()
            tasks, due = self.core.maintain(now)
            for kind, waiter in tasks:
                if kind == WAKE:  # served under the lock: woken before letting go of it
                    self.wake(waiter)
        self.drain()
        for kind, slot in tasks:
            if kind == LEAK:
                self.report(
                    "warning",
                    "leak",
                    member=slot.index,
                    held_for=round(now - slot.lent_at, 3),
                    taken_at=format_stack(slot.stack),
                )
        return now, [task for task in tasks if task[0] in (CHECK, DIAL)], due

    def sweep(self) -> None:
        """Find idle connections the peer closed (sockets: the stale probe, no I/O), so
        that ``connected`` and ``min_idle`` see the truth without waiting for a lend."""
        idle = [(slot, slot.conn) for slot in list(self.core.idle)]
        dead = [
            (slot, conn) for slot, conn in idle if conn is not None and self.connector.stale(conn)
        ]
        if not dead:
            return
        with self.lock:
            for slot, conn in dead:
                if slot.state is IDLE and slot.conn is conn:  # still idle, still the same
                    self.core.found_stale(slot)
        self.drain()

    def restore(self, slot: Slot, *, dialled: bool) -> None:
        """A background task on ``slot`` ended: back to the idle ring (or a waiter)."""
        with self.lock:
            self.wake(self.core.restore(slot, self.clock(), dialled=dialled))
        self.drain()
        on_idle = self.on_idle
        if on_idle is not None:
            on_idle()

    # -- closing -------------------------------------------------------------------------

    def close_core(self) -> None:
        """Close the core: wake every waiter, end checks blocked on a dead peer. Running it
        again finishes an interrupted close."""
        with self.lock:
            for waiter in self.core.close():
                self.wake_closed(waiter)
            self.dial_reported()
            for slot in self.core.checking:  # a check blocked on a dead peer ends now
                if slot.state is BUSY and slot.conn is not None:
                    self.connector.interrupt(slot.conn)

    def closed_down(self) -> None:
        """After the close: close what it doomed, write the log counts still held."""
        self.drain()
        if self.log is not None:
            self.log.close(self.clock())  # write the counts of repeats still held back

    # -- reporting ----------------------------------------------------------------------

    def report(self, level: str, event: str, **fields: Any) -> None:
        """Send an event to the pool's logger (none: nothing), with the pool's address and
        name, at the pool's clock's time (repeats of one failure are held back: gocp._log)."""
        log = self.log
        if log is not None:
            log(
                level,
                event,
                self.clock(),
                address=self.connector.label,
                pool=self.core.label,
                **fields,
            )


def format_stack(stack: Any) -> str:
    """Where a lend was taken: ``file:line in function`` of the caller of ``get``."""
    if not stack:
        return "unknown (leak_timeout was not set when it was taken)"
    frame = stack[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stack() -> traceback.StackSummary:
    """The stack of the code that called into gocp (its innermost frame last); from a
    coroutine, the frames that await it."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    return traceback.extract_stack(frame, limit=12)
