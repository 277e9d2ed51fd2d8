"""The pool's decisions, free of I/O and of waiting.

``PoolCore`` holds which members are idle, which callers wait and in what
order, and the counters. It never blocks, never touches a socket and never
takes a lock: the threaded shell (``gocp._pool``) calls it under its own lock
and does the waiting and the I/O around it, and an asyncio shell can do the
same with futures as waiters.

Invariants: every member is either idle or lent, never both; while a caller
waits there is no idle member (a member put back goes straight to the first
waiter, first come first served); the number of members never changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ._errors import PoolClosed

__all__ = ["Lendable", "PoolCore", "Waiter"]


class Lendable(Protocol):
    """A pool member: it only needs to carry its lent flag."""

    _lent: bool


class Waiter(Protocol):
    """A caller queued in ``get``: the core hands it a member by setting ``member``."""

    member: Any


M = TypeVar("M", bound=Lendable)
W = TypeVar("W", bound=Waiter)


class PoolCore(Generic[M, W]):
    """Lending decisions for a fixed set of members (see the module docstring)."""

    __slots__ = (
        "broken",
        "closed",
        "dial_failures",
        "dials",
        "idle",
        "lends",
        "members",
        "stale",
        "timeouts",
        "waiters",
        "waits",
    )

    def __init__(self, members: Sequence[M]) -> None:
        self.members: tuple[M, ...] = tuple(members)
        self.idle: deque[M] = deque(self.members)
        self.waiters: deque[W] = deque()
        self.closed = False
        self.lends = self.waits = self.timeouts = 0
        self.dials = self.dial_failures = self.broken = self.stale = 0

    def lend(self) -> M | None:
        """The member to lend now, marked lent; ``None`` when the caller must wait.

        Members are lent in ring order (least recently returned first), as
        the Go original's channel does, so every connection stays exercised.
        Raises ``PoolClosed`` once the pool is closed.
        """
        idle = self.idle
        if idle:
            # No call between taking the member and returning it: CPython runs signal
            # handlers only after calls (and at loop jumps and function entries), so a
            # handler that raises cannot leave a member neither idle nor lent.
            member = idle[0]
            del idle[0]
            member._lent = True
            self.lends += 1
            return member
        if self.closed:
            raise PoolClosed("pool is closed")
        return None

    def enqueue(self, waiter: W) -> None:
        """Queue a caller that found no idle member; it is served after those before it."""
        self.waiters.append(waiter)
        self.waits += 1

    def cancel(self, waiter: W) -> bool:
        """Withdraw a waiter whose time ran out. False if it was already served."""
        if waiter.member is not None:
            return False
        try:
            self.waiters.remove(waiter)
        except ValueError:  # already woken by close()
            return False
        self.timeouts += 1
        return True

    def give_back(self, member: M) -> W | None:
        """Take back a lent member: hand it to the first waiter (returned) or keep it idle.

        When the pool is closed the member is marked not lent and kept out of
        the idle set; the caller closes it.
        """
        waiters = self.waiters
        if waiters:
            waiter = waiters[0]  # no call until it is served (see lend)
            del waiters[0]
            waiter.member = member
            self.lends += 1
            return waiter
        member._lent = False
        if not self.closed:
            self.idle.append(member)
        return None

    def close(self) -> tuple[list[M], list[W]]:
        """Mark closed; return the idle members to close and the waiters to wake."""
        self.closed = True
        idle, waiters = list(self.idle), list(self.waiters)
        self.idle.clear()
        self.waiters.clear()
        return idle, waiters

    def reset_after_fork(self, still_lent: Collection[M]) -> None:
        """In a forked child only the forking thread survives: the members it holds
        (``still_lent``) stay lent, every other member is idle again, nobody waits."""
        self.waiters.clear()
        for member in self.members:
            member._lent = member in still_lent
        idle = [] if self.closed else [m for m in self.members if not m._lent]
        self.idle = deque(idle)
