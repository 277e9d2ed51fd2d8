"""The asyncio pool: the same core as the threaded ``Pool``, waiting with futures.

Everything of a pool runs in one event loop (the loop of its first use): the core
needs no lock, a queued ``get`` waits on a future the core's decisions resolve, and the
background upkeep is a task that ends on close. Cancellation never loses a slot: a
``get`` cancelled while queued leaves the queue; one served and cancelled before it
resumed gives its member back; a cancelled dial ends its probe (``AioHub.dial``).
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from types import TracebackType
from typing import Any, Self, TypeVar

from ._aio_conn import AioConn
from ._aio_hub import AioHub, AioWaiter
from ._config import Options, check_bool, check_timeout
from ._core import CHECK, DIAL, LENT, SLOW, Slot
from ._errors import DialError, PoolClosed
from ._poolbase import LendBase, PoolBase
from ._steps import caller_stack, format_stack

__all__ = ["AioLend", "AioPool"]

T = TypeVar("T")

_monotonic = time.monotonic


class AioLend(LendBase[T]):
    """What ``connection()`` returns in ``gocp.aio``: ``async with`` gets a member and puts
    it back (of an ``AioPool`` or an asyncio keyed pool or cluster)."""

    __module__ = "gocp.aio"
    __slots__ = ()

    async def __aenter__(self) -> T:
        self._entered()
        conn: T = await self._owner._lend(self._key, self._timeout, self._fresh, self._connect)
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._owner._return(conn, exc)


class AioPool(PoolBase[T]):
    """``gocp.Pool`` for asyncio: ``size`` self-redialling connections (or clients).

    Make one with ``gocp.aio.new(address)`` (members are ``gocp.aio.AioConn``)
    or ``gocp.aio.pool(dial)`` (members are what ``dial()`` makes; coroutine
    hooks are awaited). It may be made outside a running loop and belongs to
    the loop of its first use; use it from that loop only. ``put`` never awaits.
    """

    __module__ = "gocp.aio"

    def __init__(
        self,
        connector: Any,
        *,
        size: int,
        options: Options,
        logger: object,
        sockets: bool,
        address: str | None,
        worker: object = None,
    ) -> None:
        super().__init__(
            connector,
            size=size,
            options=options,
            logger=logger,
            sockets=sockets,
            address=address,
            hub_type=AioHub,
            member_type=AioConn,
        )
        hub: AioHub = self._hub
        # A pool dropped without close(): its upkeep ends, its connections close.
        self._finalizer = weakref.finalize(self, hub.abandon)
        subscribe = getattr(self._clock, "subscribe", None)
        if callable(subscribe):
            subscribe(hub.upkeep_wake)  # a fake clock moved: the upkeep looks at once

    # -- lending ---------------------------------------------------------------

    async def get(
        self,
        timeout: float | None = None,
        *,
        fresh: bool = False,
        connect: bool = False,
        _or_none: bool = False,
    ) -> T:
        """Lend a member, waiting up to ``timeout`` seconds (``None``: no bound); as
        ``gocp.Pool.get`` (the same errors), awaited. ``asyncio.timeout()`` around it
        leaves the pool as this call's own timeout would. (``_or_none`` is internal: a
        cluster's get, which never waits, returns ``None``.)"""
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        core = self._core
        if self._cap is not None and self._hub.upkeep is None:
            self._hub.start_upkeep(self._cap)
        slot: Any = core.lend(self._clock() if core.timed else 0.0)
        if slot is None:
            now = self._clock()
            slot = core.lend_slow(now)
            if slot is None:
                if _or_none:
                    return None  # type: ignore[return-value]
                if timeout == 0:
                    raise core.exhausted(0.0, now, format_stack, count=True)
                started = _monotonic()
                slot = await self._wait(timeout, now)
                if timeout is not None:
                    timeout = max(0.0, timeout - (_monotonic() - started))
        if slot.pending or fresh or connect:
            seq = slot.seq
            try:
                await self._prepare(slot, timeout, fresh=fresh, connect=connect)
            except BaseException:  # failed or cancelled: the member goes back
                self._give_back(slot, seq)
                raise
        return slot if self._sockets else slot.conn  # type: ignore[no-any-return]

    async def _wait(self, timeout: float | None, now: float) -> Slot:
        """Queue for a member; leave the queue (or give back what was served) however the
        wait ends."""
        core = self._core
        waiter = AioWaiter(asyncio.get_running_loop().create_future())
        slot = core.enqueue(waiter, now)
        if slot is not None:  # one came back meanwhile
            return slot  # type: ignore[no-any-return]
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except TimeoutError:
            if core.cancel(waiter, self._clock()):
                raise core.exhausted(timeout or 0.0, self._clock(), format_stack) from None
            # Served (or closed) as the time ran out: take it.
        except BaseException:  # cancelled from outside (or asyncio.timeout around us)
            core.cancel(waiter, self._clock(), timed_out=False)
            served = waiter.slot
            if served is not None:  # served, then cancelled before it resumed
                self._give_back(served, served.seq)
            raise
        slot = waiter.slot
        if slot is None:
            core.cancel(waiter, self._clock(), timed_out=False)
            raise PoolClosed(f"pool {self.name} was closed while waiting")
        return slot  # type: ignore[no-any-return]

    async def _prepare(
        self, slot: Slot, timeout: float | None, *, fresh: bool, connect: bool
    ) -> None:
        """A lent slot's review (as ``Pool._prepare``): close what expired, check, dial."""
        check_bool("fresh", fresh)
        check_bool("connect", connect)
        hub, core = self._hub, self._core
        if self.options.leak_timeout is not None:
            slot.stack = caller_stack()
        action = core.prepare(slot, self._clock(), fresh=fresh)
        hub.drain()
        if action == CHECK and not await hub.check(slot):
            action = core.prepare(slot, self._clock())
        if connect and self._sockets and slot.conn is not None and hub.connector.stale(slot.conn):
            hub.stale(slot)
        if action == DIAL or (connect and slot.conn is None):
            await self._dial(slot, timeout, connect=connect)

    async def _dial(self, slot: Slot, timeout: float | None, *, connect: bool) -> None:
        """Dial a lent slot within ``timeout`` (see ``Pool._dial``)."""
        hub, core = self._hub, self._core
        deadline = None if timeout is None else _monotonic() + timeout
        attempts = math.inf if connect else self.options.dial_attempts
        made = 0
        while True:
            dials = core.dials
            try:
                await hub.dial(slot, deadline)
                return
            except DialError as exc:
                made += core.dials - dials
                if made >= attempts or attempts == 1:
                    raise
                wait = exc.retry_in
                if deadline is not None and _monotonic() + wait >= deadline:
                    raise
            await hub.changed(wait)  # the backoff's end, or a probe's outcome, or the close
            if core.closed:
                raise PoolClosed(f"pool {self.name} was closed while dialling")

    async def _connect(self, conn: Any, by: float | None) -> None:
        """As ``Pool._connect``: a socket member just lent holds a live connection when
        this returns; on failure (``DialError``, or a cancel) it is given back."""
        seq = conn.seq
        hub = self._hub
        try:
            link = conn.conn
            if link is not None:
                if not hub.connector.stale(link):
                    return
                hub.stale(conn)
            await hub.dial(conn, by)
        except BaseException:
            self._give_back(conn, seq)
            raise

    def _give_back(self, slot: Any, seq: int, *, broken: bool = False) -> None:
        """Give back the lend ``seq`` of ``slot`` if it is still lent (idempotent)."""
        if slot.state is LENT and slot.seq == seq:
            if self._sockets:
                slot._forget_lend()
            if broken:
                self._core.broke(slot)
            self._hub.wake(self._core.give_back_slow(slot, self._clock()))
        self._hub.drain()

    def put(self, conn: T, broken: bool = False) -> None:
        """Give back a member lent by ``get`` (a plain method: it never awaits).

        As ``gocp.Pool.put``: ``broken=True`` closes its connection; misuse raises
        ``TypeError`` or ``ValueError`` and leaves the pool as it was."""
        if broken is not False and broken is not True:
            raise TypeError(f"broken: expected True or False, got {broken!r}")
        slot = self._slot_of(conn)
        if slot is None:
            if self._sockets and conn.__class__ is not AioConn:
                raise TypeError(f"conn: expected a gocp.aio.AioConn, got {type(conn).__name__}")
            raise ValueError(f"conn: {conn!r} was not lent by {self!r} (or was put back already)")
        if self._sockets:
            slot._io = None
            if slot._dirty and not slot._end_lend():
                broken = True
        core = self._core
        if broken and slot.state is LENT:
            core.broke(slot)
            self._hub.drain()
        now = self._clock()
        waiter = core.give_back(slot, now)
        if waiter is not None:
            if waiter is SLOW:
                waiter = core.give_back_slow(slot, now)
                self._hub.drain()
            self._hub.wake(waiter)

    def _return(self, conn: Any, exc: BaseException | None) -> None:
        """Put back at the end of an ``async with`` block, by ``Pool.connection``'s rule."""
        self.put(conn, exc is not None and self._broken_by(conn, exc))

    def connection(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> AioLend[T]:
        """``async with pool.connection() as conn:``: get, and put back after (broken if
        the block raised what ``broken_on`` accepts, after I/O for sockets)."""
        return AioLend(self, None, timeout, fresh, connect)

    async def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return await self.get(timeout, fresh=fresh, connect=connect)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``min_idle`` members are connected; ``PoolTimeout``, ``PoolClosed``."""
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        if self._cap is not None and self._hub.upkeep is None:
            self._hub.start_upkeep(self._cap)
        deadline = None if timeout is None else _monotonic() + timeout
        core = self._core
        while not core.ready and not core.closed:
            left = None if deadline is None else deadline - _monotonic()
            if left is not None and left <= 0:
                raise core.not_ready(timeout or 0.0)
            await self._hub.changed(left)
        if core.closed:
            raise PoolClosed(f"pool {self.name} is closed")

    # -- closing and observing -------------------------------------------------------

    async def close(self) -> None:
        """Close idle members now and lent ones when they come back; wake waiters; stop
        the upkeep task and wait for close hooks. Idempotent; nothing is left pending."""
        await self._hub.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
