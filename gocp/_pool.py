"""The threaded pool: a thin shell of waiting and I/O around ``PoolCore``."""

from __future__ import annotations

import os
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from ._address import AddressLike, format_address, parse_address
from ._backoff import Backoff
from ._config import Options, check_timeout
from ._conn import PersistentConn
from ._core import PoolCore
from ._errors import DialError, PoolClosed, PoolTimeout
from ._log import make_log
from ._stats import PoolStats

__all__ = ["Lend", "Pool", "new"]

# Taking the lock on the hot paths (get and put), at about half the cost of ``with``:
#
#     try:
#         lock.acquire()
#         ...
#     finally:
#         try:
#             lock.release()
#         except RuntimeError:
#             pass
#
# It is as safe as ``with`` against a signal handler that raises (KeyboardInterrupt).
# If the handler runs just after ``acquire`` returns, that is inside ``try``, so the
# lock is released; ``acquire(); try:`` would leave it held for good. If it runs while
# ``acquire`` still waits, the lock is not ours and ``release`` raises RuntimeError,
# because the pool's lock is an RLock, which knows its owner (a plain Lock would be
# released from under the thread holding it). Nothing between ``finally`` and the
# release call checks for signals.

_monotonic = time.monotonic
_allocate_lock = threading.Lock
_get_ident = threading.get_ident


class _Waiter:
    """A caller blocked in ``get``: a held lock that the pool releases to wake it.

    Served waiters are reused (``Pool._spare_waiters``): making one costs a lock
    and an ``__init__``, a fifth of a contended get+put.
    """

    __slots__ = ("lock", "member")

    def __init__(self) -> None:
        self.lock = _allocate_lock()
        self.lock.acquire()
        self.member: PersistentConn | None = None


class Lend:
    """What ``Pool.connection`` returns: a one-use context manager around get/put."""

    __module__ = "gocp"
    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: PersistentConn | None = None

    def __enter__(self) -> PersistentConn:
        if self._conn is not None:
            raise RuntimeError("a Pool.connection() context can be entered once")
        conn = self._conn = self._pool.get(self._timeout)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        if exc_type is None:
            self._pool.put(conn)
        else:
            self._pool.put(conn, broken=not conn._fresh)


class Pool:
    """A fixed set of ``size`` self-redialling connections to one server.

    Make one with ``gocp.new``. Thread-safe: one pool serves many threads.
    The pool never waits on the network while holding its lock, and never
    starts a thread.
    """

    __module__ = "gocp"

    def __init__(
        self,
        address: AddressLike,
        *,
        size: int = 5,
        logger: object = None,
        **options: Any,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size: expected an int, got {type(size).__name__} {size!r}")
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        self.address = parse_address(address)
        self.address_text = format_address(self.address)
        self.options = Options.build(options)
        self._io_timeout = self.options.io_timeout  # read on every put
        self._log = make_log(logger)
        # An RLock, for its owner (see "Taking the lock" above); never taken twice by a thread.
        self._lock = threading.RLock()
        self._backoff = Backoff(self.options.retry_min, self.options.retry_max)
        self._members = tuple(PersistentConn(self, index) for index in range(size))
        self._core: PoolCore[PersistentConn, _Waiter] = PoolCore(self._members)
        self._spare_waiters: list[_Waiter] = []  # served waiters, their locks held again
        _live_pools.add(self)

    # -- lending ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of members; constant for the pool's life."""
        return len(self._members)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._core.closed

    def get(self, timeout: float | None = None) -> PersistentConn:
        """Lend a member, waiting up to ``timeout`` seconds (``None``: no bound) for one.

        Waiters are served first come, first served. ``timeout=0`` takes a
        free member or raises at once. The member is lent whatever the state
        of its connection: it dials on first use, not here, so ``get`` never
        waits on the network.

        Raises ``PoolTimeout`` when the time runs out and ``PoolClosed`` when
        the pool is closed, also while waiting.
        """
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        lock = self._lock
        member: PersistentConn | None = None
        waiter: _Waiter | None = None
        try:
            try:  # the hot-path form of ``with self._lock`` (see "Taking the lock" above)
                lock.acquire()
                member = self._core.lend()
                if member is None:
                    if timeout == 0:
                        self._core.timeouts += 1
                        raise PoolTimeout("no idle member (timeout=0)", timeout=0.0)
                    spare = self._spare_waiters
                    waiter = spare.pop() if spare else _Waiter()
                    self._core.enqueue(waiter)
            finally:
                try:
                    lock.release()
                except RuntimeError:  # interrupted while waiting for it: never held
                    pass
            if member is None:
                # In this order, an interrupt at any point leaves _abandon what it needs.
                served = waiter
                assert served is not None
                member = self._wait(served, timeout)
                waiter = None
                served.member = None  # its lock is held again: it can serve another wait
                self._spare_waiters.append(served)
            member._fresh = True
            member._holder = _get_ident()
            return member
        except (PoolTimeout, PoolClosed):
            raise
        except BaseException:
            # Interrupted (a signal handler raised): leave the queue and give back
            # whatever this call took but never handed to its caller.
            self._abandon(member, waiter)
            raise

    def _wait(self, waiter: _Waiter, timeout: float | None) -> PersistentConn:
        """Wait until ``waiter`` is served (its member) or closed, or time runs out."""
        if timeout is None:
            waiter.lock.acquire()
        elif not waiter.lock.acquire(True, timeout):
            with self._lock:
                # Withdrawn: raise. A timed-out waiter is dropped, not kept for reuse: if
                # an interrupt came before the raise, _abandon could withdraw it again
                # after another thread had queued it anew.
                if self._core.cancel(waiter):
                    raise PoolTimeout(
                        f"no member of {self.address_text} became free within {timeout}s",
                        timeout=timeout,
                    )
            # Served, or woken by close(), between the timeout and the lock: both
            # released its lock under the pool lock, so this takes it back at once.
            waiter.lock.acquire(False)
        member = waiter.member
        if member is None:
            raise PoolClosed("pool was closed while waiting")
        return member

    def _abandon(self, member: PersistentConn | None, waiter: _Waiter | None) -> None:
        """Undo an interrupted ``get``: withdraw its waiter, return what it was lent.

        The waiter is not reused: the state of its lock is unknown."""
        if waiter is not None:
            with self._lock:
                self._core.cancel(waiter)  # False if it was served: then it holds a member
            if member is None:
                member = waiter.member
        if member is not None and member._lent:
            self.put(member)

    def put(self, conn: PersistentConn, broken: bool = False) -> None:
        """Give back a member lent by ``get``.

        With ``broken=True`` its socket is closed and it redials before its
        next use: do this when the stream is in a state you cannot trust.
        A member of a closed pool is closed here. Raises ``TypeError`` for
        something that is not a member and ``ValueError`` for another pool's
        member or one that is not lent (put twice); the pool is unchanged.
        """
        if conn.__class__ is not PersistentConn:
            raise TypeError(f"conn: expected a gocp.PersistentConn, got {type(conn).__name__}")
        if conn._pool is not self:
            raise ValueError(f"conn: {conn!r} belongs to another pool, not {self!r}")
        if conn._dirty and not broken:  # this lend changed the timeout or took the socket
            try:
                conn._restore(self._io_timeout)  # socket options only: outside the lock
            except OSError:  # e.g. the holder closed the socket it took with conn.socket
                broken = True
        if broken:
            self._put_broken(conn)
            return
        lock = self._lock
        try:  # the hot-path form of ``with self._lock`` (see "Taking the lock" above)
            lock.acquire()
            if not conn._lent:
                raise ValueError(f"conn: {conn!r} is not lent (put twice?)")
            waiter = self._core.give_back(conn)
            if waiter is not None:
                waiter.lock.release()
                return
            closed = self._core.closed
        finally:
            try:
                lock.release()
            except RuntimeError:  # interrupted while waiting for it: never held
                pass
        if closed:
            conn._drop()

    def _put_broken(self, conn: PersistentConn) -> None:
        if not conn._lent:  # checked again under the lock; this spares an idle member
            raise ValueError(f"conn: {conn!r} is not lent (put twice?)")
        had_socket = conn._sock is not None  # a break during I/O was counted when it happened
        try:
            conn._drop()  # outside the lock, as closing is I/O; the member is still lent
            conn._restore(self._io_timeout)
        finally:  # even if interrupted: the slot must come back
            with self._lock:
                if not conn._lent:
                    raise ValueError(f"conn: {conn!r} is not lent (put twice?)")
                if had_socket:
                    self._core.broken += 1
                waiter = self._core.give_back(conn)
                if waiter is not None:
                    waiter.lock.release()

    def connection(self, timeout: float | None = None) -> Lend:
        """A context manager: ``get`` a member for a ``with`` block, ``put`` it back after.

        If the block raises after using the member, the stream may hold a
        half-sent request or an unread reply, so the member goes back broken
        and redials; if it raises before any I/O, it goes back as it was.
        ``get``'s errors (``PoolTimeout``, ``PoolClosed``) raise at ``with``.
        """
        return Lend(self, timeout)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Close idle members now and lent ones when they come back; wake waiters.

        Idempotent; never waits on the network; leaves no thread behind.
        Holders of lent members keep using them until they put them back.
        """
        with self._lock:
            idle, waiters = self._core.close()
            for waiter in waiters:
                waiter.lock.release()
        for member in idle:
            member._drop()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- observing ---------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A consistent, immutable snapshot of gauges and counters (see ``PoolStats``)."""
        core = self._core
        with self._lock:
            in_use = sum(1 for member in self._members if member._lent)
            return PoolStats(
                address=self.address_text,
                size=len(self._members),
                idle=len(core.idle),
                in_use=in_use,
                waiting=len(core.waiters),
                connected=sum(1 for member in self._members if member._sock is not None),
                lends=core.lends,
                waits=core.waits,
                timeouts=core.timeouts,
                dials=core.dials,
                dial_failures=core.dial_failures,
                broken=core.broken,
                stale=core.stale,
                closed=core.closed,
            )

    def __repr__(self) -> str:
        s = self.stats()
        state = " closed" if s.closed else ""
        return (
            f"<gocp.Pool {s.address} size={s.size} idle={s.idle} in_use={s.in_use} "
            f"waiting={s.waiting} connected={s.connected}{state}>"
        )

    # -- called by members (never with the lock held by the caller) ------------

    def _dial_permit(self, member: PersistentConn) -> float:
        """Allow a dial now (return its start time) or raise ``DialError``/``PoolClosed``."""
        now = _monotonic()
        with self._lock:
            if self._core.closed:
                raise PoolClosed("pool is closed: not redialling")
            backoff = self._backoff
            wait = backoff.begin(now)
            if wait > 0:
                why = "another member is probing it" if backoff.probing else "backing off"
                raise DialError(
                    f"dial {self.address_text}: {why} after {backoff.failures} failed "
                    f"attempts (last: {backoff.last_error}); next attempt in {wait:.3f}s",
                    address=self.address_text,
                    retry_in=wait,
                ) from backoff.last_error
            self._core.dials += 1
        return now

    def _dial_abandoned(self, member: PersistentConn) -> None:
        with self._lock:
            self._backoff.abandoned()

    def _dial_failed(self, member: PersistentConn, started: float, exc: OSError) -> DialError:
        now = _monotonic()
        with self._lock:
            retry_in = self._backoff.failed(now, started, exc)
            self._core.dial_failures += 1
            attempt = self._backoff.failures
        if self._log is not None:
            self._log(
                "warning",
                "dial_failed",
                address=self.address_text,
                error=_describe(exc),
                attempt=attempt,
                retry_in=round(retry_in, 3),
            )
        return DialError(
            f"dial {self.address_text} failed: {_describe(exc)}; next attempt in {retry_in:.3f}s",
            address=self.address_text,
            retry_in=retry_in,
        )

    def _dial_succeeded(self, member: PersistentConn) -> None:
        with self._lock:
            self._backoff.succeeded()

    def _event_broken(self, member: PersistentConn, op: str, exc: BaseException) -> None:
        with self._lock:
            self._core.broken += 1
        if self._log is not None:
            self._log(
                "warning",
                "connection_broken",
                address=self.address_text,
                error=_describe(exc),
                op=op,
                member=member.index,
            )

    def _event_stale(self, member: PersistentConn) -> None:
        with self._lock:
            self._core.stale += 1
        if self._log is not None:
            self._log("info", "stale_dropped", address=self.address_text, member=member.index)

    def _event_close_failed(self, member: PersistentConn, exc: OSError) -> None:
        if self._log is not None:
            self._log("warning", "close_failed", address=self.address_text, error=_describe(exc))

    def _after_fork_in_child(self) -> None:
        """In a forked child only the forking thread exists: what it holds stays lent to it,
        everything else is idle again; every inherited socket is released without I/O."""
        self._lock = threading.RLock()
        self._spare_waiters = []  # their locks belong to the parent's threads' history
        me = _get_ident()
        self._core.reset_after_fork([m for m in self._members if m._lent and m._holder == me])
        self._backoff.abandoned()  # a probe in flight belonged to a thread that is gone
        for member in self._members:
            member._forget_after_fork()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new(
    address: AddressLike,
    *,
    size: int = 5,
    logger: object = None,
    **options: Any,
) -> Pool:
    """Make a ``Pool`` of ``size`` members connecting to ``address``. Never touches the network.

    ``address`` is ``"host:port"``, ``"[v6addr]:port"`` or ``(host, port)``.
    ``logger`` is ``None`` (silent), any object with ``print()``, a structlog
    logger or a ``logging.Logger``. ``options`` are those of ``gocp.Options``:
    ``dial_timeout=5.0``, ``io_timeout=30.0``, ``retry_min=0.1``,
    ``retry_max=3.0``, ``nodelay=True``, ``keepalive=30.0``.

    Raises ``TypeError`` or ``ValueError`` naming the bad argument.
    """
    return Pool(address, size=size, logger=logger, **options)


new.__module__ = "gocp"
