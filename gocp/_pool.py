"""The threaded pool: a thin shell of waiting and I/O around ``PoolCore``.

One ``Pool`` class serves both faces of the mechanism: ``gocp.new(address)``
lends ``PersistentConn`` members that dial on first I/O, and
``gocp.pool(dial)`` lends the client objects its hooks make, dialling in
``get``. Lending, waiting, backoff, lifecycle and stats are the same code.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from ._address import AddressLike
from ._config import Options, check_bool, check_timeout
from ._conn import PersistentConn
from ._core import CHECK, DIAL, LENT, SETTLE, SLOW, Slot
from ._errors import DialError, PoolClosed
from ._hooks import HookConnector
from ._hub import Connector, Hub, Waiter, format_stack
from ._make import Shell, build_new, build_pool
from ._poolbase import LendBase, PoolBase
from ._sockets import SocketConnector
from ._steps import caller_stack
from ._worker import Worker

__all__ = ["THREADS", "Closing", "Lend", "Pool", "new", "pool"]

# An uncontended get or put takes no lock at all (see "lending" in gocp._core). Where
# get must queue, it takes the lock at about half the cost of ``with``:
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
#
# Interrupts elsewhere: ``get`` undoes (its handler gives back what it took), ``put``
# and ``close`` finish (their handlers complete the return or the close), and the
# dial path gives up its probe and closes what it made (``Hub.dial``). A slot's
# ``seq`` tells the lend being undone or finished from a later one.

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_monotonic = time.monotonic


class Lender(Protocol[T_co]):
    """What a ``Lend`` lends from: a pool, a keyed pool, a cluster."""

    def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T_co: ...
    def _return(self, conn: Any, exc: BaseException | None) -> None: ...


class Lend(LendBase[T]):
    """What ``connection()`` returns: a one-use context manager around ``get`` and
    ``put`` (of a ``Pool``, a ``KeyedPool`` or a ``Cluster``)."""

    __module__ = "gocp"
    __slots__ = ()

    _owner: Lender[T]

    def __enter__(self) -> T:
        self._entered()
        # One plain call (no *args): an interrupt cannot land between get and the store.
        conn = self._conn = self._owner._lend(self._key, self._timeout, self._fresh, self._connect)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._owner._return(conn, exc)


class Closing:
    """``with`` closes it (a pool, a keyed pool, a cluster)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Pool(Closing, PoolBase[T]):
    """A fixed set of ``size`` self-redialling connections (or clients) to one server.

    Make one with ``gocp.new(address)`` (members are ``PersistentConn``) or
    ``gocp.pool(dial)`` (members are the objects ``dial()`` returns).
    Thread-safe: one pool serves many threads. The pool never waits on the
    network while holding its lock; it starts a background thread only when
    an option needs one (``check_interval``, ``idle_timeout``,
    ``max_lifetime``, ``min_idle``, ``leak_timeout``).
    """

    __module__ = "gocp"

    def __init__(
        self,
        connector: Connector,
        *,
        size: int,
        options: Options,
        logger: object,
        sockets: bool,
        address: str | None,
        worker: Worker | None = None,
    ) -> None:
        super().__init__(
            connector,
            size=size,
            options=options,
            logger=logger,
            sockets=sockets,
            address=address,
            hub_type=Hub,
            member_type=PersistentConn,
        )
        hub: Hub = self._hub
        self._spare_waiters: list[Waiter] = []  # served waiters, their locks held again
        self._leaks = options.leak_timeout is not None
        self._lock = hub.lock
        _live_hubs.add(hub)
        # A pool dropped without close() is closed when it is collected (no cycle holds it).
        self._finalizer = weakref.finalize(self, hub.close)
        cap = self._cap
        if cap is not None:
            if worker is None:
                worker = Worker(cap=cap, name=self.name)
                subscribe = getattr(self._clock, "subscribe", None)
                if callable(subscribe):
                    subscribe(worker.wake)
            hub.worker = worker
            worker.add(hub, cap=cap)

    # -- lending ---------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        *,
        fresh: bool = False,
        connect: bool = False,
        _or_none: bool = False,
    ) -> T:
        """Lend a member, waiting up to ``timeout`` seconds (``None``: no bound) for one.

        Waiters are served first come, first served; ``timeout=0`` takes a
        free member or raises at once. A pool of clients (``gocp.pool``)
        returns the client, dialling it first if the member has none (and
        checking it first if it sat idle longer than ``check_interval``); a
        socket pool returns the ``PersistentConn``, which dials on first I/O,
        or here with ``connect=True`` (waiting out the backoff within
        ``timeout``). ``fresh=True`` closes the member's connection first, so
        the one you get is newly made.

        Raises ``PoolTimeout`` when the time runs out, ``PoolClosed`` when the
        pool is closed (also while waiting), ``DialError`` when a needed dial
        fails or the server is backing off (the member goes back to the pool).
        (``_or_none`` is internal: a cluster's get, which never waits, returns ``None``.)
        """
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        core = self._core
        slot: Any = None
        waiter: Waiter | None = None
        try:
            # An idle member, without the lock (see "lending" in gocp._core). An untimed
            # core decides a lend without the time (see PoolCore.timed).
            slot = core.lend(self._clock() if core.timed else 0.0)
            if slot is None:
                lock = self._lock
                try:  # the hot-path form of ``with self._lock`` (see "Taking the lock" above)
                    lock.acquire()
                    now = self._clock()
                    slot = core.lend_slow(now)
                    if slot is None:
                        if _or_none:  # a cluster asking: not a timeout of this pool
                            return None  # type: ignore[return-value]
                        if timeout == 0:
                            raise core.exhausted(0.0, now, format_stack, count=True)
                        spare = self._spare_waiters
                        waiter = spare.pop() if spare else Waiter()
                        slot = core.enqueue(waiter, now)
                        if slot is not None:  # a member came back meanwhile: no wait
                            spare.append(waiter)
                            waiter = None
                finally:
                    try:
                        lock.release()
                    except RuntimeError:  # interrupted while waiting for it: never held
                        pass
            if slot is None:
                started = _monotonic()
                served = waiter
                assert served is not None
                slot = self._wait(served, timeout)
                waiter = None
                served.slot = None  # its lock is held again: it can serve another wait
                self._spare_waiters.append(served)
                if timeout is not None:
                    timeout = max(0.0, timeout - (_monotonic() - started))
            if slot.pending or fresh or connect:
                self._prepare(slot, timeout, fresh=fresh, connect=connect)
            return slot if self._sockets else slot.conn  # type: ignore[no-any-return]
        except BaseException:
            # Interrupted (a signal handler raised), or a dial or check failed: leave the
            # queue and give back whatever this call took but never handed to its caller.
            # (Once more if that is interrupted too: ``taken`` keeps it to this lend.)
            taken = [slot, -1 if slot is None else slot.seq]
            try:
                self._abandon(taken, waiter)
            except BaseException:
                self._abandon(taken, waiter)
                raise
            raise

    def _wait(self, waiter: Waiter, timeout: float | None) -> Slot:
        """Wait until ``waiter`` is served (its slot) or woken by close, or time runs out."""
        if timeout is None:
            waiter.lock.acquire()
        elif not waiter.lock.acquire(True, timeout):
            with self._lock:
                # Withdrawn: raise. A timed-out waiter is dropped, not kept for reuse: if
                # an interrupt came before the raise, _abandon could withdraw it again
                # after another thread had queued it anew.
                now = self._clock()
                if self._core.cancel(waiter, now):
                    raise self._core.exhausted(timeout, now, format_stack)
            # Served, or woken by close(), between the timeout and the lock: both
            # released its lock under the pool lock, so this takes it back at once.
            waiter.lock.acquire(False)
        slot = waiter.slot
        if slot is None:
            with self._lock:
                self._core.cancel(waiter, self._clock(), timed_out=False)
            raise PoolClosed(f"pool {self.name} was closed while waiting")
        return slot  # type: ignore[no-any-return]

    def _prepare(self, slot: Slot, timeout: float | None, *, fresh: bool, connect: bool) -> None:
        """A lent slot's review: close what expired, check it, dial it (outside the lock)."""
        check_bool("fresh", fresh)
        check_bool("connect", connect)
        hub, core = self._hub, self._core
        if self._leaks:
            slot.stack = caller_stack()
        with self._lock:
            action = core.prepare(slot, self._clock(), fresh=fresh)
        hub.drain()
        if action == CHECK and not hub.check(slot):
            with self._lock:
                action = core.prepare(slot, self._clock())
        if connect and self._sockets and slot.conn is not None and hub.connector.stale(slot.conn):
            hub.stale(slot)  # closed by the peer while idle (a restart): redial it here
        if action == DIAL or (connect and slot.conn is None):
            self._dial(slot, timeout, connect=connect)

    def _dial(self, slot: Slot, timeout: float | None, *, connect: bool) -> None:
        """Dial a lent slot within ``timeout``: up to ``dial_attempts`` attempts (as many as
        the time allows with ``get(connect=True)``), waiting out the backoff between them.
        With one attempt, a backoff in progress fails at once (``DialError``, ``retry_in``)."""
        hub, core = self._hub, self._core
        deadline = None if timeout is None else _monotonic() + timeout
        attempts = math.inf if connect else self.options.dial_attempts
        made = 0
        backoff = core.backoff
        while True:
            dials = core.dials
            try:
                hub.dial(slot, deadline)
                return
            except DialError as exc:
                made += core.dials - dials  # 0: the backoff refused it, nothing was tried
                if made >= attempts or attempts == 1:
                    raise
                wait = exc.retry_in
                if deadline is not None and _monotonic() + wait >= deadline:
                    raise
            with hub.lock:
                # Wait out the backoff; if another caller's probe is what stopped us, only
                # until it reports (its lease is only the longest it may take).
                probing = backoff.probing
                hub.ready.wait_for(
                    lambda: core.closed or (probing and not backoff.probing),  # noqa: B023
                    wait,
                )
                if core.closed:
                    raise PoolClosed(f"pool {self.name} was closed while dialling")

    def _abandon(self, taken: list[Any], waiter: Waiter | None) -> None:
        """Undo an interrupted or failed ``get``: withdraw its waiter, give back the slot
        ``taken`` ([slot, seq], or [None, -1] if it has none yet). Idempotent: the lend's
        ``seq`` keeps a second run from giving back a later lend. The waiter is not
        reused: the state of its lock is unknown."""
        if waiter is not None:
            with self._lock:
                self._core.cancel(waiter, self._clock(), timed_out=False)
                served = waiter.slot  # served before the interrupt: it holds a slot
                if taken[0] is None and served is not None:
                    taken[1] = served.seq
                    taken[0] = served
        slot, seq = taken
        if slot is None:
            return
        self._give_back(slot, seq, broken=False)

    def _give_back(self, slot: Any, seq: int, *, broken: bool) -> None:
        """Give back the lend ``seq`` of ``slot`` if it is still lent (an undone ``get``, an
        interrupted ``put``): idempotent, never another lend's."""
        if slot.state is LENT and slot.seq == seq and self._sockets:
            slot._forget_lend()  # still ours (nobody else changes a lent slot); else not ours
        with self._lock:
            if slot.state is LENT and slot.seq == seq:
                if broken:
                    self._core.broke(slot)
                self._hub.wake(self._core.give_back_slow(slot, self._clock()))
            # A put interrupted after it gave the member back, before it settled (see
            # SETTLE): what it crossed is served here. (Nothing to do on the GIL build.)
            self._settle()
        self._hub.drain()

    def put(self, conn: T, broken: bool = False) -> None:
        """Give back a member lent by ``get``.

        With ``broken=True`` its connection is closed and it redials before
        its next use: do this when the stream is in a state you cannot trust.
        A member of a closed pool is closed here. Raises ``TypeError`` for
        something that is not a member (or a ``broken`` that is not a bool),
        ``ValueError`` for another pool's member or one that is not lent (put
        twice); the pool is unchanged.
        """
        if broken is not False and broken is not True:
            raise TypeError(f"broken: expected True or False, got {broken!r}")
        # Checks with no call in them come first: an interrupt cannot land in them, and a
        # misuse raises with the pool as it was. (Between here and ``try`` no call either.)
        slot: Any = None
        if self._sockets:
            if conn.__class__ is not PersistentConn:
                raise TypeError(f"conn: expected a gocp.PersistentConn, got {type(conn).__name__}")
            slot = conn
            if slot._hub is not self._hub:
                raise ValueError(f"conn: {conn!r} belongs to another pool, not {self!r}")
        seq = -1 if slot is None else slot.seq
        try:
            if slot is None:  # a client: found by identity
                slot = self._core.by_conn.get(id(conn))
                if slot is None or slot.conn is not conn:
                    slot = None
                    raise ValueError(
                        f"conn: {type(conn).__name__} object at {id(conn):#x} was not lent "
                        f"by {self!r} (or was put back already)"
                    )
                seq = slot.seq
            else:
                slot._io = None  # the next lend's first operation probes the socket again
                if slot._dirty and not slot._end_lend():
                    broken = True
            if broken:
                with self._lock:
                    if slot.state is LENT and slot.seq == seq:
                        self._core.broke(slot)
                self._hub.drain()
            # Without the lock (see "lending" in gocp._core): a waiter served here is
            # woken with no call in between, so no thread sees it served and not woken.
            waiter = self._core.give_back(slot, self._clock())
            if waiter is not None:
                if waiter is SLOW:
                    self._give_back(slot, seq, broken=False)
                elif waiter is SETTLE:  # free-threaded: a caller queued meanwhile
                    with self._lock:
                        self._settle()
                    self._hub.drain()
                else:
                    waiter.lock.release()
        except BaseException as exc:
            if slot is None and isinstance(exc, ValueError):
                raise  # not a member of this pool: the pool is as it was
            self._finish_put(conn, slot, seq, broken)
            raise

    def _settle(self) -> None:
        """Serve the callers that queued while a put gave a member back, or close what a
        put crossing ``close`` left idle (``SETTLE``). Under the lock."""
        core = self._core
        now = self._clock()
        while True:  # one at a time (see PoolCore.settle_one)
            waiter = core.settle_one(now)
            if waiter is None:
                break
            waiter.lock.release()

    def _finish_put(self, conn: Any, slot: Any, seq: int, broken: bool) -> None:
        """``put`` was interrupted: give the member back if this lend still has it
        (``slot`` None: ``put`` had not found it yet, so nothing of it had run)."""
        if slot is None:
            slot = self._slot_of(conn)
            if slot is None:
                return
            seq = slot.seq
        self._give_back(slot, seq, broken=broken)

    def _return(self, conn: Any, exc: BaseException | None) -> None:
        """Put back at the end of a ``with`` block: broken if the block raised an
        exception ``broken_on`` accepts (for sockets: after this lend did I/O).
        Interrupted anywhere after its first instruction, it still gives the member
        back (broken: the block's state is unknown)."""
        slot = None
        seq = -1
        try:
            slot = self._slot_of(conn)
            if slot is not None:
                seq = slot.seq  # the lend being returned, before put can end it
            self.put(conn, exc is not None and self._broken_by(conn, exc))
        except BaseException:
            self._finish_put(conn, slot, seq, True)
            raise

    def _connect(self, conn: Any, by: float | None) -> None:
        """Make sure a socket member just lent holds a live socket: replace one the peer
        closed, dial (one attempt, within ``dial_timeout`` and ``by``) one it lacks. On
        failure (``DialError``, or an interrupt) the member is given back and the error
        raised: a cluster then tries another server."""
        slot = conn
        seq = slot.seq
        hub = self._hub
        try:
            sock = slot.conn
            if sock is not None:
                if not hub.connector.stale(sock):
                    return
                hub.stale(slot)
            hub.dial(slot, by)
        except BaseException:
            taken = [slot, seq]
            try:
                self._abandon(taken, None)
            except BaseException:
                self._abandon(taken, None)
                raise
            raise

    def connection(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> Lend[T]:
        """A context manager: ``get`` a member for a ``with`` block, ``put`` it back after.

        If the block raises an exception that ``broken_on`` accepts (by
        default any), the member goes back broken and redials: the stream may
        hold a half-sent request or an unread reply. For socket members this
        applies only once the block used the member (an error before any I/O
        leaves it as it was). ``get``'s errors (``PoolTimeout``,
        ``PoolClosed``, ``DialError``) raise at ``with``.
        """
        return Lend(self, None, timeout, fresh, connect)  # positional: a third less time

    def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return self.get(timeout, fresh=fresh, connect=connect)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``min_idle`` members are connected (at once when ``min_idle`` is 0).

        Raises ``PoolTimeout`` when ``timeout`` seconds pass first, ``PoolClosed``
        if the pool is closed."""
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        hub = self._hub
        with hub.lock:
            ok = hub.ready.wait_for(lambda: self._core.ready, timeout)
            if self._core.closed:
                raise PoolClosed(f"pool {self.name} is closed")
            if not ok:
                raise self._core.not_ready(timeout or 0.0)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Close idle members now and lent ones when they come back; wake waiters.

        Idempotent (a second call finishes an interrupted one); never waits on
        the network; the background thread, if any, ends after its current task.
        Holders of lent members keep using them until they put them back.
        """
        try:
            self._hub.close()
        except BaseException:
            self._hub.close()  # interrupted: finish the job
            raise

    # -- observing ---------------------------------------------------------------


_live_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for hub in list(_live_hubs):
        hub.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new(
    address: AddressLike,
    *,
    size: int = 5,
    logger: object = None,
    check: Callable[[PersistentConn], object] | None = None,
    **options: Any,
) -> Pool[PersistentConn]:
    """Make a ``Pool`` of ``size`` socket members connecting to ``address``.

    Never touches the network: it succeeds while the server is down (unless
    ``min_idle`` asks the background thread to connect some at once).
    ``address`` is ``"host:port"``, ``"[v6addr]:port"`` or ``(host, port)``.
    ``logger`` is ``None`` (silent), any object with ``print()``, a structlog
    logger or a ``logging.Logger``. ``check(conn)``, optional, is a protocol
    check (a ping) run on a member idle longer than ``check_interval``; it
    raises or returns ``False`` when the connection is dead. ``options`` are
    those of ``gocp.Options``.

    Raises ``TypeError`` or ``ValueError`` naming the bad argument.
    """
    made: Pool[PersistentConn] = build_new(
        address, size=size, logger=logger, check=check, options=options, shell=THREADS
    )
    return made


def pool(
    dial: Callable[[], T],
    *,
    size: int = 5,
    check: Callable[[T], object] | None = None,
    close: Callable[[T], object] | None = None,
    logger: object = None,
    **options: Any,
) -> Pool[T]:
    """Make a ``Pool`` of ``size`` clients, each made by ``dial()`` when first needed.

    ``dial()`` takes no argument and returns a new client (a Thrift client,
    a gRPC channel, a DB connection...); ``close(client)`` closes one
    (default: the client's own ``close()``, if it has one); ``check(client)``
    raises or returns ``False`` when a client is dead, and runs on a member
    idle longer than ``check_interval`` (default 30 s with a check) before it
    is lent, and in the background. Hooks run outside the pool's lock; a
    hook that raises is reported and counted and never loses a slot.

    Never calls ``dial`` here (unless ``min_idle`` asks the background thread
    to). Socket options (``dial_timeout``, ``io_timeout``, ``nodelay``,
    ``keepalive``, ``ssl``, ``server_hostname``) are a ``TypeError``: the
    hooks bound their own I/O and make their own TLS connections.
    """
    made: Pool[T] = build_pool(
        dial, size=size, check=check, close=close, logger=logger, options=options, shell=THREADS
    )
    return made


THREADS = Shell(pool=Pool, sockets=SocketConnector, hooks=HookConnector)

new.__module__ = "gocp"
pool.__module__ = "gocp"
