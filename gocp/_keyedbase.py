"""What a keyed pool is in either shell: its keys, their pools, their counters.

``KeyedBase`` holds the ``KeyTable`` (the decisions), the part of ``get`` that takes
no wait (find a known key; make one under the lock, evicting to make room), ``put``
(which never waits in either shell), the sweep's decision, and the stats. The threaded
``KeyedPool`` (``gocp._keyed``) and the asyncio one (``gocp._aio_keyed``) add the
waiting, the closing of pools and the background sweep.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from ._build import has_lent
from ._compose import Factory, Members, factory
from ._config import check_size, check_timeout
from ._errors import PoolClosed, PoolTimeout
from ._keys import KeyEntry, KeyTable
from ._log import make_log
from ._make import Shell
from ._stats import KeyedStats, retire, total

__all__ = ["KeyedBase", "keyed_factory"]

T = TypeVar("T")


class KeyedBase(Generic[T]):
    """The shell-neutral part of a keyed pool (see the module docstring). ``lock`` is
    the shell's: a ``threading.Lock``, or a context manager that does nothing."""

    def __init__(
        self,
        made: Factory,
        *,
        max_keys: int | None,
        key_idle_timeout: float | None,
        logger: object,
        lock: Any,
    ) -> None:
        self.name = made.name
        self._factory = made
        self._key_of = made.key_of
        self._show = made.show
        self._clock: Callable[[], float] = made.clock
        self._log = make_log(logger)
        self._lock = lock
        self._waiting = 0  # gets waiting for a key to become evictable
        self._closed = False
        self._retired: dict[str, float] = {}  # counters of forgotten keys
        self._table: KeyTable[Any] = KeyTable(
            lent=_pool_has_lent, max_keys=max_keys, idle_timeout=key_idle_timeout
        )
        self._members: Members[KeyEntry[Any]] = Members(sockets=made.sockets)
        # Out of the table, their pools being closed: still counted in the totals.
        self._closing: list[KeyEntry[Any]] = []

    # -- the shell's part -----------------------------------------------------------

    def _wake_waiters(self) -> None:
        """A key may have become evictable: gets waiting for room look again."""
        raise NotImplementedError

    def _shared_worker(self) -> Any:
        """The background thread the keys' pools share (threads), or None."""
        return None

    # -- getting -----------------------------------------------------------------

    def _known(self, key: Any) -> KeyEntry[Any] | None:
        """The entry of a known key, entered (``_left`` it after), without the lock; None:
        take the locked path. Raises ``PoolClosed`` once closed."""
        entry = self._table.find(key)
        if entry is None and self._closed:
            raise PoolClosed(f"keyed pool {self.name} is closed")
        return entry

    def _try_admit(self, key: Hashable) -> tuple[KeyEntry[Any] | None, list[KeyEntry[Any]]]:
        """Under the lock: ``key``'s entry, entered, made if new (and the entries evicted
        to make room: close their pools); ``(None, [])`` if every key is busy."""
        if self._closed:
            raise PoolClosed(f"keyed pool {self.name} is closed")
        entry, evicted = self._table.admit(key, self._clock(), self._new_pool)
        if entry is not None:
            self._members.register(entry)
        self._closing += evicted
        return entry, evicted

    def _no_room(self, key: Hashable, timeout: float | None) -> PoolTimeout:
        return PoolTimeout(
            f"keyed pool {self.name}: no room for key {self._show(key)!r} within {timeout}s: "
            f"max_keys={self._table.max_keys} keys, each with a member lent",
            timeout=timeout or 0.0,
        )

    def _new_pool(self, key: Hashable) -> Any:
        pool = self._factory.make(key, self._shared_worker())
        pool._hub.pool_ref = weakref.ref(self)  # members' `with`
        return pool

    def _lent(self, entry: KeyEntry[Any], conn: Any) -> None:
        """A get took ``conn`` from ``entry``'s pool: it is done with the table."""
        self._members.lent(conn, entry)
        self._table.leave(entry, self._clock())

    def _failed(self, entry: KeyEntry[Any]) -> None:
        """A get on ``entry`` failed: done with the table; the key may be evictable."""
        self._table.leave(entry, self._clock())
        if self._waiting:
            self._wake_waiters()

    # -- putting back (a plain call in both shells) ----------------------------------

    def put(self, conn: T, broken: bool = False) -> None:
        """Give back a member lent by ``get``; ``broken=True`` closes its connection.

        Raises ``TypeError`` or ``ValueError`` (not a member of this keyed
        pool, or not lent: put twice), leaving everything as it was.
        """
        entry = self._members.put(conn, broken, self)
        entry.used_at = self._clock()
        if self._waiting:
            self._wake_waiters()

    def _return(self, conn: Any, exc: BaseException | None) -> None:
        """Put back at the end of a ``with`` block, by ``Pool.connection``'s rule."""
        self.put(conn, self._members.broken_by(conn, exc))

    # -- keys ----------------------------------------------------------------------

    @property
    def keys(self) -> list[Any]:
        """The keys open now (socket keys as ``"host:port"``)."""
        return [self._show(key) for key in list(self._table.entries)]

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def _expired(self) -> tuple[list[KeyEntry[Any]], float]:
        """The sweep's decision: the keys to forget now (close their pools, then
        ``_retire`` them), and the seconds until the next sweep."""
        with self._lock:
            now = self._clock()
            gone, due = self._table.sweep(now)
            self._closing += gone
        return gone, due - now

    def _retire(self, entry: KeyEntry[Any], why: str | None) -> None:
        """A key's pool is closed: keep its counters for the totals; forget its members,
        unless the keyed pool is closing (``why`` None: lent ones still come back)."""
        final = entry.pool.stats()
        with self._lock:
            if entry not in self._closing:
                return  # retired already
            self._closing.remove(entry)
            retire(self._retired, final)
            if why is not None:
                self._members.unregister(entry)
        if why is not None:
            self._report("info", "key_closed", key=self._show(entry.key), reason=why)

    def _clear(self) -> list[KeyEntry[Any]]:
        """At close: every key, taken out (close their pools, then ``_retire`` them)."""
        with self._lock:
            self._closed = True
            gone = self._table.clear()
            self._closing += gone
            return gone

    # -- observing -------------------------------------------------------------------

    def stats(self) -> KeyedStats:
        """A snapshot: each open key's ``PoolStats`` and their total (see ``KeyedStats``).

        Each key's snapshot is consistent on its own (taken under its lock);
        the total adds them up."""
        entries = list(self._table.entries.values())
        keys = {self._show(entry.key): entry.pool.stats() for entry in entries}
        with self._lock:
            retired = dict(self._retired)
            for entry in self._closing:  # being closed: their counters, not their gauges
                retire(retired, entry.pool.stats())
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
        kind = type(self).__name__
        return (
            f"<{type(self).__module__}.{kind} {self.name} keys={len(self._table.entries)}{state}>"
        )


def _pool_has_lent(pool: Any) -> bool:
    """Whether a member of ``pool`` is lent (or a caller waits in its ``get``)."""
    return has_lent(pool._core)


def keyed_factory(
    *,
    size: int,
    dial: Callable[[Any], Any] | None,
    max_keys: int | None,
    key_idle_timeout: float | None,
    logger: object,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    options: dict[str, Any],
    shell: Shell,
) -> tuple[Factory, int | None, float | None]:
    """Check the arguments of ``gocp.keyed`` (and ``gocp.aio.keyed``): how to make each
    key's pool, ``max_keys``, ``key_idle_timeout``."""
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
        shell=shell,
    )
    return made, max_keys, idle
