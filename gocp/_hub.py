"""The threaded shell's I/O around the core: dial, check and close connections.

A ``Hub`` is what a pool's ``get``/``put``, its members (``PersistentConn``)
and its background thread share: the core, the lock, the connector, the
clock and the logger. Every decision comes from the core, under the lock;
every dial, check and close runs here, outside it. Members reach their pool
through this small interface only; the hub holds its ``Pool`` weakly, so a
pool dropped without ``close()`` is collected (and closed) at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._core import BUSY, CHECK, DIAL, DRAIN, IDLE, LEAK, LENT, WAKE, PoolCore, Slot
from ._errors import ConnectionBroken, DialError, PoolClosed, describe
from ._log import EventLog

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["Connector", "Hub", "Waiter", "format_stack"]

_allocate_lock = threading.Lock


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


class Waiter:
    """A caller queued in ``get``: a held lock that the pool releases to wake it.

    Served waiters are reused (``Pool._spare_waiters``): making one costs a lock and an
    ``__init__``, a fifth of a contended get+put.
    """

    __slots__ = ("closed", "lock", "since", "slot")

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.lock.acquire()
        self.slot: Any = None
        self.closed = False
        self.since = 0.0


class Hub:
    """Runs the work the core decides, outside the lock (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "clock",
        "closing",
        "connector",
        "core",
        "lock",
        "log",
        "on_idle",
        "pool_ref",
        "ready",
        "worker",
    )

    core: PoolCore[Any, Waiter]  # set by the pool once its members (which refer here) exist

    def __init__(
        self,
        connector: Connector,
        *,
        clock: Callable[[], float],
        log: EventLog | None,
    ) -> None:
        self.connector = connector
        self.clock = clock
        self.log = log
        # An RLock, for its owner (see "Taking the lock" in gocp._pool); never taken twice
        # by one thread.
        self.lock = threading.RLock()
        self.ready = threading.Condition(self.lock)  # min_idle connected, or closed
        self.closing = threading.Event()  # set by close: ends waits between dial attempts
        self.pool_ref: Callable[[], Pool[Any] | None] = lambda: None
        self.worker: Any = None  # the background thread, when an option needs one
        # Called (outside the lock) when the pool's own work gave a slot back to the idle
        # ring: a cluster waiting on several pools at once hears of it here.
        self.on_idle: Callable[[], None] | None = None

    # -- dialling -------------------------------------------------------------------

    def dial(self, slot: Slot, by: float | None = None) -> Any:
        """Make a connection for a lent or busy ``slot`` and attach it; return it.

        A socket connect is bounded by ``dial_timeout`` and, earlier, by ``by``
        (``time.monotonic``: the caller's own deadline). During the
        backoff this raises ``DialError`` at once (with ``retry_in``); a failed
        dial raises ``DialError`` with the failure as its cause. Whatever
        interrupts it, the probe it held is given up and a connection it made
        is closed.
        """
        core, lock = self.core, self.lock
        started = self.clock()
        deadline = None
        limit = self.connector.dial_timeout
        if limit is not None:
            deadline = time.monotonic() + limit
            if by is not None:  # past ``by`` already: a last, near-instant try
                deadline = min(deadline, max(by, time.monotonic() + 0.001))
        wait: float | None = None
        conn: Any = None
        done = False
        try:
            with lock:
                wait = core.dial_begin(started)
                if wait:
                    raise core.backoff_error(wait)
            try:
                conn = self.connector.connect(deadline)
            except Exception as exc:
                with lock:
                    error = core.dial_failed(self.clock(), started, exc)
                    done = True
                    attempt = core.backoff.failures
                    self.ready.notify_all()  # callers waiting out this probe look again
                self.report(
                    "warning",
                    "dial_failed",
                    member=slot.index,
                    error=describe(exc),
                    attempt=attempt,
                    retry_in=round(error.retry_in, 3),
                )
                raise error from exc
            with lock:
                failures, refused = core.dial_made(slot, conn, self.clock(), started)
                done = True
                self.ready.notify_all()
                if refused is not None:
                    conn = None  # not ours to close: another slot holds it
                    raise refused
            if failures:
                self.report("info", "reconnected", failures=failures)
            return conn
        finally:
            if not done and wait == 0.0:  # interrupted: no outcome was recorded
                with lock:
                    core.dial_abandoned(started)
                    self.ready.notify_all()
                if conn is not None and slot.conn is not conn:
                    self.close_conn(conn)

    # -- checking and closing -------------------------------------------------------

    def check(self, slot: Slot) -> bool:
        """Run the check on a lent or busy slot's connection; a failed one is closed."""
        ok, failed = False, False
        try:
            with self.lock:
                self.core.check_begins(slot)
            ok = self.connector.check(slot)
        except Exception as exc:  # noqa: BLE001 - a user hook: any failure means dead
            failed = not isinstance(exc, ConnectionBroken)  # the socket's own I/O failed
            self.report("warning", "check_failed", member=slot.index, error=describe(exc))
        finally:
            with self.lock:
                self.core.checked(slot, self.clock(), ok, hook_failed=failed)
        if not ok:
            self.drain()
        return ok

    def drain(self) -> None:
        """Close the connections the core doomed (any thread, outside the lock).

        A connection is taken off ``doomed`` and held in a local with no call in
        between, so neither another thread nor an interrupt can come between them; an
        interrupted close is tried once more (so a close hook should be idempotent,
        as ``socket.close`` and most clients' ``close()`` are)."""
        doomed = self.core.doomed
        while doomed:
            try:
                conn = doomed[0]
            except IndexError:  # another thread took the last one
                return
            del doomed[0]
            try:
                self.close_conn(conn)
            except BaseException:
                self.close_conn(conn)
                raise
        if self.worker is not None and self.core.min_idle:
            self.worker.wake(self)

    def close_conn(self, conn: Any) -> None:
        """Close one connection; a close that fails is reported, never raised."""
        try:
            self.connector.close(conn)
        except Exception as exc:  # noqa: BLE001 - a user hook or close(): report, go on
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

    def wake(self, waiter: Waiter | None) -> None:
        """Wake a waiter the core served (``DRAIN`` or ``None``: nobody). Call under the lock."""
        if waiter is not None and waiter is not DRAIN:
            waiter.lock.release()

    # -- the background pass --------------------------------------------------------

    def maintain(self) -> float:
        """One background pass (checks, expiry, min_idle, leaks); seconds until the next."""
        core, lock = self.core, self.lock
        self._sweep()
        with lock:
            now = self.clock()
            tasks, due = core.maintain(now)
            for kind, waiter in tasks:
                if kind == WAKE:  # served under the lock: woken before letting go of it
                    waiter.lock.release()
        self.drain()
        for kind, slot in tasks:
            if kind == CHECK:
                try:
                    self.check(slot)
                finally:
                    self._restore(slot, dialled=False)
            elif kind == DIAL:
                try:
                    self.dial(slot)
                except (DialError, PoolClosed):
                    pass  # reported by dial; the backoff decides when to try again
                finally:
                    self._restore(slot, dialled=True)
            elif kind == LEAK:  # (WAKE tasks were done above)
                self.report(
                    "warning",
                    "leak",
                    member=slot.index,
                    held_for=round(now - slot.lent_at, 3),
                    taken_at=format_stack(slot.stack),
                )
        return due - now

    def _sweep(self) -> None:
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

    def _restore(self, slot: Slot, *, dialled: bool) -> None:
        with self.lock:
            self.wake(self.core.restore(slot, self.clock(), dialled=dialled))
        self.drain()
        on_idle = self.on_idle
        if on_idle is not None:
            on_idle()

    # -- closing, forking -------------------------------------------------------------

    def close(self) -> None:
        """Close the pool: idle connections now, lent ones when put back; wake waiters.

        Running it again finishes an interrupted close. Never waits on the
        network; the background thread stops after its current task.
        """
        with self.lock:
            for waiter in self.core.close():
                waiter.closed = True  # then the release: no call in between
                waiter.lock.release()
            self.ready.notify_all()
            for slot in self.core.checking:  # a check blocked on a dead peer ends now
                if slot.state is BUSY and slot.conn is not None:
                    self.connector.interrupt(slot.conn)
        self.closing.set()
        if self.worker is not None:
            self.worker.remove(self)
        self.drain()
        if self.log is not None:
            self.log.close(self.clock())  # write the counts of repeats still held back

    def after_fork(self) -> None:
        """In a forked child: a fresh lock, inherited connections dropped without I/O."""
        self.lock._at_fork_reinit()  # type: ignore[attr-defined]
        self.ready = threading.Condition(self.lock)
        self.closing = threading.Event()
        if self.core.closed:
            self.closing.set()
        core, connector = self.core, self.connector
        core.after_fork(release_lent=connector.release_lent)
        for slot in (*core.members, *core.extra):
            connector.forget(slot)
        kept = [conn for conn in core.released if connector.release(conn)]
        core.released[:] = kept
        if self.worker is not None:
            self.worker.after_fork()

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
