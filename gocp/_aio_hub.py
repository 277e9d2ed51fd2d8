"""The asyncio shell's hub: the steps of ``HubBase`` with awaitable I/O and futures.

One event loop runs everything of a pool (its gets, puts, members' I/O and its upkeep
task), so the core needs no lock here: ``lock`` is a context manager that does
nothing. Waiters are futures; the upkeep is a task that stops on close; a close hook
that returns an awaitable is awaited by a task the pool's ``close`` waits for.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ._core import CHECK, DRAIN, PoolCore, Slot
from ._errors import DialError, PoolClosed
from ._log import EventLog
from ._steps import Attempt, HubBase

__all__ = ["NO_LOCK", "AioHub", "AioWaiter"]


class _NoLock:
    """The lock of a pool that lives in one event loop: nothing to take."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NO_LOCK = _NoLock()


class AioWaiter:
    """A task queued in ``get``: the core hands it a slot, the hub resolves its future."""

    __slots__ = ("closed", "future", "since", "slot")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.slot: Any = None
        self.closed = False
        self.since = 0.0


class AioHub(HubBase):
    """The hub of a ``gocp.aio`` pool (see the module docstring)."""

    __slots__ = ("_changed", "_closes", "_upkeep_due", "closing", "upkeep")

    core: PoolCore[Any, AioWaiter]

    def __init__(self, connector: Any, *, clock: Callable[[], float], log: EventLog | None) -> None:
        super().__init__(connector, clock=clock, log=log)
        self.lock = NO_LOCK
        self.closing = False
        self.upkeep: asyncio.Task[None] | None = None  # the background task, once started
        self._upkeep_due: asyncio.Event | None = None  # wakes the upkeep task
        self._changed: asyncio.Event | None = None  # a dial's outcome, or the close
        self._closes: set[asyncio.Task[None]] = set()  # close hooks being awaited

    # -- waking ----------------------------------------------------------------------

    def wake(self, waiter: AioWaiter | None) -> None:
        if waiter is not None and waiter is not DRAIN and not waiter.future.done():
            waiter.future.set_result(None)

    def wake_closed(self, waiter: AioWaiter) -> None:
        waiter.closed = True
        if not waiter.future.done():
            waiter.future.set_result(None)

    def dial_reported(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def upkeep_wake(self) -> None:
        if self._upkeep_due is not None:
            self._upkeep_due.set()

    async def changed(self, timeout: float | None) -> None:
        """Wait (at most ``timeout``) for the next dial outcome or the close."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    # -- I/O ---------------------------------------------------------------------------

    async def dial(self, slot: Slot, by: float | None = None) -> Any:
        """``Hub.dial``, awaited: cancelled, it gives up its probe and closes what it made."""
        attempt = Attempt(self.clock())
        deadline = self.deadline(by)
        try:
            self.dial_begin(attempt)
            try:
                attempt.conn = await self.connector.connect(deadline)
            except Exception as exc:
                raise self.dial_failed(attempt, slot, exc) from exc
            return self.dial_made(attempt, slot)
        finally:
            self.dial_ended(attempt, slot)

    async def check(self, slot: Slot) -> bool:
        """``Hub.check``, awaited (a cancelled check counts as failed, not as the hook's)."""
        ok, failed = False, False
        try:
            self.check_begins(slot)
            ok = await self.connector.check(slot)
        except Exception as exc:  # noqa: BLE001 - a user hook: any failure means dead
            failed = self.check_failed(slot, exc)
        finally:
            self.check_ended(slot, ok, failed)
        return ok

    def close_conn(self, conn: Any) -> None:
        """Close one connection; a close hook's awaitable is awaited by a task (``close``
        waits for it); a failure is reported, never raised."""
        try:
            result = self.connector.close(conn)
        except Exception as exc:  # noqa: BLE001 - a user hook: report, go on
            self.close_failed(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await_close(result))
            self._closes.add(task)
            task.add_done_callback(self._closes.discard)

    async def _await_close(self, result: Any) -> None:
        try:
            await result
        except Exception as exc:  # noqa: BLE001 - a user hook: report, go on
            self.close_failed(exc)

    # -- upkeep ------------------------------------------------------------------------

    def start_upkeep(self, cap: float) -> None:
        """Start the background task (in the running loop), unless started or closed."""
        if self.upkeep is None and not self.core.closed:
            self._upkeep_due = asyncio.Event()
            self.upkeep = asyncio.get_running_loop().create_task(self._run_upkeep(cap))

    async def _run_upkeep(self, cap: float) -> None:
        due = self._upkeep_due
        assert due is not None
        while not self.core.closed:
            due.clear()  # before the pass: a wake-up during it is not lost
            try:
                delay = await self.maintain()
            except Exception as exc:  # noqa: BLE001 - a bug must not end the upkeep silently
                self.report("error", "maintenance_failed", error=f"{type(exc).__name__}: {exc}")
                delay = cap
            try:
                async with asyncio.timeout(max(0.0, min(delay, cap))):
                    await due.wait()
            except TimeoutError:
                pass

    async def maintain(self) -> float:
        """One background pass (see ``Hub.maintain``); seconds until the next."""
        now, tasks, due = self.plan()
        try:
            while tasks:
                kind, slot = tasks[0]
                if kind == CHECK:
                    try:
                        await self.check(slot)
                    finally:
                        del tasks[0]
                        self.restore(slot, dialled=False)
                else:
                    try:
                        await self.dial(slot)
                    except (DialError, PoolClosed):
                        pass  # reported by dial; the backoff decides when to try again
                    finally:
                        del tasks[0]
                        self.restore(slot, dialled=True)
        finally:  # cancelled (the pool closing): the members this pass took go back
            for kind, slot in tasks:
                self.restore(slot, dialled=kind != CHECK)
        return due - now

    # -- closing -----------------------------------------------------------------------

    def abandon(self) -> None:
        """The pool was dropped without ``close()`` (its finalizer): close the core, end
        the upkeep task and close the connections, in the loop that runs them."""
        if self.core.closed:
            return
        self.close_core()
        self.closing = True
        task = self.upkeep
        if task is None or task.done():
            self.closed_down()
            return
        try:
            loop = task.get_loop()
            loop.call_soon_threadsafe(task.cancel)
            loop.call_soon_threadsafe(self.closed_down)
        except RuntimeError:  # the loop is closed: nothing runs there any more
            pass

    async def close(self) -> None:
        """Close the pool: idle connections now, lent ones when put back; wake waiters;
        stop the upkeep task; wait for close hooks still running."""
        self.close_core()
        self.closing = True
        task = self.upkeep
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # its end, not its CancelledError
        self.closed_down()
        while self._closes:  # asyncio.wait: a cancelled close leaves the hooks running
            await asyncio.wait(list(self._closes))
