"""Keyed pools: one single-address pool per key (an address, or whatever ``dial`` takes).

``KeyedPool`` composes ``Pool`` objects, one per key, made on first use with
the shared settings; the decisions about keys (make, evict, forget) come from
``gocp._keys.KeyTable``. A ``get`` for a known key takes no lock of the keyed
pool's own: it finds the key's pool and calls its ``get``, so keys never wait
for each other (a slow dial to one key delays nobody else). One background
thread serves every key's pool and the sweep of idle keys.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from ._compose import Factory, Members, factory
from ._config import check_bool, check_size, check_timeout
from ._errors import PoolClosed, PoolTimeout
from ._keys import KeyEntry, KeyTable
from ._log import make_log
from ._pool import Closing, Lend, Pool
from ._stats import KeyedStats, retire, total
from ._worker import Worker

__all__ = ["KeyedPool", "keyed"]

T = TypeVar("T")

_monotonic = time.monotonic


class _Sweep:
    """The keyed pool's job for the background thread: forget idle keys. It holds the
    keyed pool weakly, so a dropped keyed pool is collected (and closed)."""

    __slots__ = ("owner",)

    def __init__(self, owner: KeyedPool[Any]) -> None:
        self.owner = weakref.ref(owner)

    def maintain(self) -> float:
        owner = self.owner()
        return float("inf") if owner is None else owner._sweep()

    def report(self, level: str, event: str, **fields: object) -> None:
        owner = self.owner()
        if owner is not None:
            owner._report(level, event, **fields)


class KeyedPool(Closing, Generic[T]):
    """A pool per key, each of ``size`` members, made on first use (see ``gocp.keyed``).

    Thread-safe. ``get(key)`` lends a member of that key's pool, ``put``
    gives it back (the member knows its key). A key with nothing lent and no
    use for ``key_idle_timeout`` is closed and forgotten; with ``max_keys``,
    making a new key first closes the least recently used key with nothing
    lent.
    """

    __module__ = "gocp"

    def __init__(
        self,
        made: Factory,
        *,
        max_keys: int | None,
        key_idle_timeout: float | None,
        logger: object,
    ) -> None:
        self.name = made.name
        self._factory = made
        self._key_of = made.key_of
        self._show = made.show
        self._clock = made.clock
        self._log = make_log(logger)
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a key may have become evictable
        self._waiting = 0  # gets waiting in _admit for a key to become evictable
        self._closed = False
        self._retired: dict[str, float] = {}  # counters of forgotten keys
        self._table: KeyTable[Pool[T]] = KeyTable(
            lent=_has_lent, max_keys=max_keys, idle_timeout=key_idle_timeout
        )
        self._members: Members[KeyEntry[Pool[T]]] = Members(sockets=made.sockets)
        cap = 1.0 if key_idle_timeout is None else max(0.001, key_idle_timeout / 4)
        self._worker = Worker(cap=cap, name=self.name, shared=True)
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._worker.wake)
        self._sweeper = _Sweep(self)
        if key_idle_timeout is not None:
            self._worker.add(self._sweeper)
        self._finalizer = weakref.finalize(self, _close_all, self._table, self._worker)

    # -- lending ---------------------------------------------------------------

    def get(
        self,
        key: Any,
        timeout: float | None = None,
        *,
        fresh: bool = False,
        connect: bool = False,
    ) -> T:
        """Lend a member of ``key``'s pool (made now if new), as ``Pool.get`` does.

        Socket keys are addresses (``"host:port"`` or ``(host, port)``, one
        key either way); with ``dial`` any hashable key. When ``max_keys``
        keys exist, all with a member lent, a new key waits within
        ``timeout`` for one to become evictable, then raises ``PoolTimeout``.
        Raises ``PoolClosed`` once closed, and what ``Pool.get`` raises.
        """
        key = self._key_of(key)
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        table = self._table
        entry = table.find(key)
        if entry is None:
            if self._closed:
                raise PoolClosed(f"keyed pool {self.name} is closed")
            started = _monotonic()
            entry = self._admit(key, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            conn = entry.pool.get(timeout, fresh=fresh, connect=connect)
            self._members.lent(conn, entry)
        except BaseException:
            table.leave(entry, self._clock())
            if self._waiting:  # the key may be evictable now: a get waiting for room looks
                self._wake_waiters()
            raise
        table.leave(entry, self._clock())
        return conn

    def _admit(self, key: Hashable, timeout: float | None) -> KeyEntry[Pool[T]]:
        """The locked path of ``get``: make the key, evicting to make room, or wait for a
        key to become evictable."""
        deadline = None if timeout is None else _monotonic() + timeout
        made = self._table.made
        with self._lock:
            # Counted as waiting before the first look: a put from then on notifies, and
            # cannot land between a look that found no room and the wait (the lock).
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise PoolClosed(f"keyed pool {self.name} is closed")
                    entry, evicted = self._table.admit(key, self._clock(), self._new_pool)
                    if entry is not None:
                        break
                    left = None if deadline is None else deadline - _monotonic()
                    if left is not None and left <= 0:
                        raise PoolTimeout(
                            f"keyed pool {self.name}: no room for key {self._show(key)!r} "
                            f"within {timeout}s: max_keys={self._table.max_keys} keys, each "
                            "with a member lent",
                            timeout=timeout or 0.0,
                        )
                    self._freed.wait(left)
            finally:
                self._waiting -= 1
            self._members.register(entry)
        for gone in evicted:
            self._forget(gone, "evicted")
        if self._table.made != made:
            self._worker.wake(self._sweeper)  # a new key: its expiry may come first
        return entry

    def _new_pool(self, key: Hashable) -> Pool[T]:
        pool: Pool[T] = self._factory.make(key, self._worker)
        pool._hub.pool_ref = weakref.ref(self)  # members' `with`
        return pool

    def put(self, conn: T, broken: bool = False) -> None:
        """Give back a member lent by ``get``; ``broken=True`` closes its connection.

        Raises ``TypeError`` or ``ValueError`` (not a member of this keyed
        pool, or not lent: put twice), leaving everything as it was.
        """
        entry = self._members.put(conn, broken, self)
        entry.used_at = self._clock()
        if self._waiting:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """A key may have become evictable: gets waiting for room look again."""
        with self._lock:
            self._freed.notify_all()

    def _return(self, conn: Any, exc: BaseException | None) -> None:
        """Put back at the end of a ``with`` block, by ``Pool.connection``'s rule."""
        self.put(conn, self._members.broken_by(conn, exc))

    def connection(
        self,
        key: Any,
        timeout: float | None = None,
        *,
        fresh: bool = False,
        connect: bool = False,
    ) -> Lend[T]:
        """A context manager: ``get(key)`` for a ``with`` block, ``put`` after (broken if
        the block raised, as ``Pool.connection`` decides)."""
        check_bool("fresh", fresh)
        check_bool("connect", connect)
        return Lend(self, key, timeout, fresh=fresh, connect=connect)

    def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return self.get(key, timeout, fresh=fresh, connect=connect)

    # -- keys ----------------------------------------------------------------------

    @property
    def keys(self) -> list[Any]:
        """The keys open now (socket keys as ``"host:port"``)."""
        return [self._show(key) for key in list(self._table.entries)]

    def _sweep(self) -> float:
        """The background pass: forget keys idle for ``key_idle_timeout``."""
        with self._lock:
            now = self._clock()
            gone, due = self._table.sweep(now)
        for entry in gone:
            self._forget(entry, "idle")
        return due - now

    def _forget(self, entry: KeyEntry[Pool[T]], why: str) -> None:
        """Close a key's pool (nothing of it is lent) and keep its counters for totals."""
        pool = entry.pool
        pool.close()
        final = pool.stats()
        with self._lock:
            retire(self._retired, final)
            self._members.unregister(entry)
        self._report("info", "key_closed", key=self._show(entry.key), reason=why)

    # -- closing and observing ---------------------------------------------------

    def close(self) -> None:
        """Close every key's pool (idle members now, lent ones when put back) and wake
        every waiter; idempotent; never waits on the network."""
        with self._lock:
            self._closed = True
            gone = self._table.clear()
            self._freed.notify_all()
        self._worker.stop()
        for entry in gone:
            entry.pool.close()
            final = entry.pool.stats()
            with self._lock:
                retire(self._retired, final)  # totals keep what closed keys counted

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def stats(self) -> KeyedStats:
        """A snapshot: each open key's ``PoolStats`` and their total (see ``KeyedStats``).

        Each key's snapshot is consistent on its own (taken under its lock);
        the total adds them up."""
        entries = list(self._table.entries.values())
        keys = {self._show(entry.key): entry.pool.stats() for entry in entries}
        with self._lock:
            retired = dict(self._retired)
            table = self._table
            made, evicted, expired = table.made, table.evictions, table.expired
            waiting = self._waiting
        return KeyedStats(
            name=self.name,
            keys=keys,
            total=total(self.name, keys.values(), retired=retired, closed=self._closed),
            keys_made=made,
            keys_evicted=evicted,
            keys_expired=expired,
            waiting_for_room=waiting,
            closed=self._closed,
        )

    def _report(self, level: str, event: str, **fields: object) -> None:
        if self._log is not None:
            self._log(level, event, self._clock(), pool=self.name, **fields)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<gocp.KeyedPool {self.name} keys={len(self._table.entries)}{state}>"


def _has_lent(pool: Pool[Any]) -> bool:
    """Whether a member of ``pool`` is lent (or a caller waits in its ``get``)."""
    return pool._has_lent()


def _close_all(table: KeyTable[Pool[Any]], worker: Worker) -> None:
    """A keyed pool dropped without ``close()``: close its pools and its thread."""
    worker.stop()
    for entry in table.clear():
        entry.pool.close()


def keyed(
    *,
    size: int = 4,
    dial: Callable[[Any], T] | None = None,
    max_keys: int | None = None,
    key_idle_timeout: float | None = 300.0,
    logger: object = None,
    check: Callable[[Any], object] | None = None,
    close: Callable[[Any], object] | None = None,
    **options: Any,
) -> KeyedPool[Any]:
    """Make a ``KeyedPool``: a pool of ``size`` members per key, made on first use.

    With ``dial=None`` keys are addresses and members are
    ``PersistentConn`` (as ``gocp.new`` makes); otherwise ``dial(key)``
    makes a client for ``key`` (as ``gocp.pool``, with ``check`` and
    ``close`` hooks). Every option of ``gocp.Options`` applies to each key's
    pool. ``max_keys`` bounds the keys (``None``: no bound);
    ``key_idle_timeout`` (300 s; ``None``: never) forgets a key with nothing
    lent and no use for that long. Never touches the network here.
    """
    if max_keys is not None:
        max_keys = check_size(max_keys, "max_keys")
    idle = check_timeout("key_idle_timeout", key_idle_timeout, zero=False)
    default = "keyed" if dial is None else getattr(dial, "__qualname__", "keyed")
    made = factory(
        "key",
        size=size,
        dial=dial,
        logger=logger,
        check=check,
        close=close,
        options=options,
        default_name=default,
    )
    return KeyedPool(made, max_keys=max_keys, key_idle_timeout=idle, logger=logger)


keyed.__module__ = "gocp"
