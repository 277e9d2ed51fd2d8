"""A keyed pool's decisions, free of I/O: which key's pool to use, make, evict or forget.

``KeyTable`` maps each key to a ``KeyEntry`` holding that key's pool (a
single-address pool: the keyed pool composes them). Every method takes
``now``; none waits, locks or closes anything: the shell (threads:
``gocp._keyed``) calls the mutating ones under its lock and closes the pools
they return outside it.

A key is *busy* while a member of its pool is lent or a ``get`` is on its way
into it (``entering``). A busy key is never evicted nor forgotten. ``get``
finds a known key without the shell's lock: it announces itself in
``entering`` (``list.append``, atomic) and then reads ``evicted``; an
eviction sets ``evicted`` and then reads ``entering``. Whichever comes second
sees the other, so either the eviction backs off or the ``get`` takes the
locked path and makes the key anew.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["KeyEntry", "KeyTable"]

P = TypeVar("P")

_INF = float("inf")


class KeyEntry(Generic[P]):
    """One key: its pool, when it was last used, and the gets entering it."""

    __slots__ = ("entering", "evicted", "key", "pool", "used_at")

    def __init__(self, key: Hashable, pool: P, now: float) -> None:
        self.key = key
        self.pool = pool
        self.used_at = now  # last get or put (the shell writes it; a float store is atomic)
        self.entering: list[None] = []  # one item per get between the table and the pool
        self.evicted = False  # set while an eviction decides; stays set once it is gone


class KeyTable(Generic[P]):
    """The keys of a keyed pool (see the module docstring).

    ``lent(pool)`` says whether a pool has a member lent; ``max_keys`` (or
    ``None``) bounds the keys; ``idle_timeout`` (or ``None``) forgets a key
    unused that long.
    """

    def __init__(
        self,
        *,
        lent: Callable[[P], bool],
        max_keys: int | None,
        idle_timeout: float | None,
    ) -> None:
        self._lent = lent
        self.max_keys = max_keys
        self.idle_timeout = idle_timeout
        self.entries: dict[Hashable, KeyEntry[P]] = {}
        self.made = 0  # keys made
        self.evictions = 0  # keys closed to make room (max_keys)
        self.expired = 0  # keys closed after idle_timeout

    def find(self, key: Hashable) -> KeyEntry[P] | None:
        """The entry of a known key, entered (``leave`` it if unused), or None: take the
        locked path (``admit``). Safe without the lock."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        entry.entering.append(None)
        if entry.evicted:  # an eviction is deciding, or took it
            entry.entering.pop()
            return None
        return entry

    @staticmethod
    def leave(entry: KeyEntry[P], now: float) -> None:
        """A get that entered ``entry`` is done with the table (it holds a member, or failed)."""
        entry.used_at = now
        entry.entering.pop()

    def admit(
        self, key: Hashable, now: float, make: Callable[[Hashable], P]
    ) -> tuple[KeyEntry[P] | None, list[KeyEntry[P]]]:
        """Under the lock: the entry of ``key``, entered, made with ``make(key)`` if new,
        and the entries evicted to make room (close their pools). ``(None, [])``: the
        table is full and every key is busy (wait for a put, then ask again)."""
        entry = self.entries.get(key)
        if entry is not None and not entry.evicted:
            entry.entering.append(None)
            return entry, []
        evicted: list[KeyEntry[P]] = []
        if self.max_keys is not None and len(self.entries) >= self.max_keys:
            victim = self._least_recent_idle()
            if victim is None:
                return None, []
            self.evictions += 1
            evicted.append(victim)
        entry = KeyEntry(key, make(key), now)
        entry.entering.append(None)
        self.entries[key] = entry
        self.made += 1
        return entry, evicted

    def _least_recent_idle(self) -> KeyEntry[P] | None:
        """Evict the least recently used key that is not busy; None if all are busy."""
        for entry in sorted(self.entries.values(), key=lambda entry: entry.used_at):
            if self._evict(entry):
                return entry
        return None

    def _evict(self, entry: KeyEntry[P]) -> bool:
        """Take ``entry`` out unless it is busy (see the module docstring)."""
        entry.evicted = True
        if entry.entering or self._lent(entry.pool):
            entry.evicted = False
            return False
        del self.entries[entry.key]
        return True

    def sweep(self, now: float) -> tuple[list[KeyEntry[P]], float]:
        """Under the lock: the keys unused for ``idle_timeout`` and not busy, taken out (close
        their pools), and when to sweep again (``inf``: no key can expire)."""
        if self.idle_timeout is None:
            return [], _INF
        gone: list[KeyEntry[P]] = []
        due = _INF
        for entry in list(self.entries.values()):
            expires = entry.used_at + self.idle_timeout
            if expires <= now and self._evict(entry):
                gone.append(entry)
            else:
                # A busy key is looked at again one interval on (it was in use: its
                # used_at moves when the use ends).
                due = min(due, expires if expires > now else now + self.idle_timeout)
        self.expired += len(gone)
        return gone, due

    def clear(self) -> list[KeyEntry[P]]:
        """Under the lock, at close: every entry, taken out."""
        gone = list(self.entries.values())
        for entry in gone:
            entry.evicted = True
        self.entries.clear()
        return gone
