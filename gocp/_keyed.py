"""Keyed pools: one single-address pool per key (an address, or whatever ``dial`` takes).

``KeyedPool`` composes ``Pool`` objects, one per key, made on first use with
the shared settings; the decisions about keys (make, evict, forget) come from
``gocp._keys.KeyTable`` through ``gocp._keyedbase.KeyedBase``. A ``get`` for a
known key takes no lock of the keyed pool's own: it finds the key's pool and
calls its ``get``, so keys never wait for each other (a slow dial to one key
delays nobody else). One background thread serves every key's pool and the
sweep of idle keys.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ._config import check_bool, check_timeout
from ._keyedbase import KeyedBase, keyed_factory
from ._keys import KeyEntry, KeyTable
from ._pool import THREADS, Closing, Lend
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


class KeyedPool(Closing, KeyedBase[T]):
    """A pool per key, each of ``size`` members, made on first use (see ``gocp.keyed``).

    Thread-safe. ``get(key)`` lends a member of that key's pool, ``put``
    gives it back (the member knows its key). A key with nothing lent and no
    use for ``key_idle_timeout`` is closed and forgotten; with ``max_keys``,
    making a new key first closes the least recently used key with nothing
    lent.
    """

    __module__ = "gocp"

    def __init__(
        self, made: Any, *, max_keys: int | None, key_idle_timeout: float | None, logger: object
    ) -> None:
        lock = threading.Lock()
        super().__init__(
            made, max_keys=max_keys, key_idle_timeout=key_idle_timeout, logger=logger, lock=lock
        )
        self._freed = threading.Condition(lock)  # a key may have become evictable
        cap = 1.0 if key_idle_timeout is None else max(0.001, key_idle_timeout / 4)
        self._worker = Worker(cap=cap, name=self.name, shared=True)
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._worker.wake)
        self._sweeper = _Sweep(self)
        if key_idle_timeout is not None:
            self._worker.add(self._sweeper)
        self._finalizer = weakref.finalize(self, _close_all, self._table, self._worker)

    def _shared_worker(self) -> Worker:
        return self._worker

    def _wake_waiters(self) -> None:
        with self._lock:
            self._freed.notify_all()

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
        entry = self._known(key)
        if entry is None:
            started = _monotonic()
            entry = self._admit(key, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            conn: T = entry.pool.get(timeout, fresh=fresh, connect=connect)
        except BaseException:
            self._failed(entry)
            raise
        self._lent(entry, conn)
        return conn

    def _admit(self, key: Hashable, timeout: float | None) -> KeyEntry[Any]:
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
                    entry, evicted = self._try_admit(key)
                    if entry is not None:
                        break
                    left = None if deadline is None else deadline - _monotonic()
                    if left is not None and left <= 0:
                        raise self._no_room(key, timeout)
                    self._freed.wait(left)
            finally:
                self._waiting -= 1
        for gone in evicted:
            gone.pool.close()
            self._retire(gone, "evicted")
        if self._table.made != made:
            self._worker.wake(self._sweeper)  # a new key: its expiry may come first
        return entry

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

    # -- keys and closing -----------------------------------------------------------

    def _sweep(self) -> float:
        """The background pass: forget keys idle for ``key_idle_timeout``."""
        gone, due = self._expired()
        for entry in gone:
            entry.pool.close()
            self._retire(entry, "idle")
        return due

    def close(self) -> None:
        """Close every key's pool (idle members now, lent ones when put back) and wake
        every waiter; idempotent; never waits on the network."""
        gone = self._clear()
        self._wake_waiters()
        self._worker.stop()
        for entry in gone:
            entry.pool.close()
            self._retire(entry, None)


def _close_all(table: KeyTable[Any], worker: Worker) -> None:
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
    made, max_keys, idle = keyed_factory(
        size=size,
        dial=dial,
        max_keys=max_keys,
        key_idle_timeout=key_idle_timeout,
        logger=logger,
        check=check,
        close=close,
        options=options,
        shell=THREADS,
    )
    return KeyedPool(made, max_keys=max_keys, key_idle_timeout=idle, logger=logger)


keyed.__module__ = "gocp"
