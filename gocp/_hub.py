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
from collections.abc import Callable
from typing import Any

from ._core import CHECK, DRAIN, PoolCore, Slot
from ._errors import DialError, PoolClosed
from ._log import EventLog
from ._steps import Attempt, Connector, HubBase, format_stack

__all__ = ["Connector", "Hub", "Waiter", "format_stack"]

_allocate_lock = threading.Lock


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


class Hub(HubBase):
    """The threaded shell's hub: a lock, a condition for ``wait_ready``, the background
    thread, and the blocking dial and check (see the module docstring)."""

    __slots__ = ("closing", "ready", "worker")

    core: PoolCore[Any, Waiter]
    threads = True

    def __init__(
        self,
        connector: Connector,
        *,
        clock: Callable[[], float],
        log: EventLog | None,
    ) -> None:
        super().__init__(connector, clock=clock, log=log)
        # An RLock, for its owner (see "Taking the lock" in gocp._pool); never taken twice
        # by one thread.
        self.lock = threading.RLock()
        self.ready = threading.Condition(self.lock)  # min_idle connected, or closed
        self.closing = threading.Event()  # set by close: ends waits between dial attempts
        self.worker: Any = None  # the background thread, when an option needs one

    def wake(self, waiter: Waiter | None) -> None:
        if waiter is not None and waiter is not DRAIN:
            waiter.lock.release()

    def wake_closed(self, waiter: Waiter) -> None:
        waiter.closed = True  # then the release: no call in between
        waiter.lock.release()

    def dial_reported(self) -> None:
        self.ready.notify_all()

    def upkeep_wake(self) -> None:
        if self.worker is not None:
            self.worker.wake(self)

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
        attempt = Attempt(self.clock())
        deadline = self.deadline(by)
        try:
            self.dial_begin(attempt)
            try:
                attempt.conn = self.connector.connect(deadline)
            except Exception as exc:
                raise self.dial_failed(attempt, slot, exc) from exc
            return self.dial_made(attempt, slot)
        finally:
            self.dial_ended(attempt, slot)

    def check(self, slot: Slot) -> bool:
        """Run the check on a lent or busy slot's connection; a failed one is closed."""
        ok, failed = False, False
        try:
            self.check_begins(slot)
            ok = self.connector.check(slot)
        except Exception as exc:  # noqa: BLE001 - a user hook: any failure means dead
            failed = self.check_failed(slot, exc)
        finally:
            self.check_ended(slot, ok, failed)
        return ok

    def maintain(self) -> float:
        """One background pass (checks, expiry, min_idle, leaks); seconds until the next."""
        now, tasks, due = self.plan()
        for kind, slot in tasks:
            if kind == CHECK:
                try:
                    self.check(slot)
                finally:
                    self.restore(slot, dialled=False)
            else:
                try:
                    self.dial(slot)
                except (DialError, PoolClosed):
                    pass  # reported by dial; the backoff decides when to try again
                finally:
                    self.restore(slot, dialled=True)
        return due - now

    # -- closing, forking -------------------------------------------------------------

    def close(self) -> None:
        """Close the pool: idle connections now, lent ones when put back; wake waiters.

        Running it again finishes an interrupted close. Never waits on the
        network; the background thread stops after its current task.
        """
        self.close_core()
        self.closing.set()
        if self.worker is not None:
            self.worker.remove(self)
        self.closed_down()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock, inherited connections dropped without I/O."""
        self.lock._at_fork_reinit()
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
