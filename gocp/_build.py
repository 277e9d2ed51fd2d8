"""What both shells (threads, asyncio) do the same way around a pool's core, without I/O:
make the core, decide whether the pool needs background upkeep, take its snapshot.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ._config import Options, check_size
from ._core import FREE_THREADED, IDLE, LENT, PoolCore, SharedCore, Slot
from ._stats import MemberStats, PoolStats

__all__ = ["broken_by", "build_core", "has_lent", "snapshot", "upkeep_cap"]


def build_core(
    make: Callable[..., Slot],
    *,
    size: int,
    options: Options,
    label: str,
    sockets: bool,
    can_check: bool,
    probe_lease: float,
    threads: bool = False,
) -> PoolCore[Any, Any]:
    """The core of a pool of ``size`` members made by ``make(index, overflow=False)``.
    ``sockets``: members dial at first I/O (else in ``get``); ``threads``: the thread
    shell's, a ``SharedCore`` on a free-threaded build. Raises ``ValueError`` for a
    ``min_idle`` above ``size``."""
    size = check_size(size)
    if options.min_idle > size:
        raise ValueError(f"min_idle: must be <= size ({size}), got {options.min_idle}")
    kind = SharedCore if threads and FREE_THREADED else PoolCore
    return kind(
        [make(index) for index in range(size)],
        options,
        label=label,
        make_overflow=lambda index: make(index, overflow=True),
        dial_in_lend=not sockets,
        can_check=can_check,
        random=random.random,
        probe_lease=probe_lease,
    )


def broken_by(
    options: Options, conn: Any, exc: BaseException | None, *, sockets: bool, hub: Any
) -> bool:
    """Whether a ``with`` block that raised ``exc`` leaves ``conn`` broken: not if the
    block raised nothing, nor (sockets) if it did no I/O (the stream is as it was); else
    as ``broken_on`` says (a predicate that raises: broken, and reported)."""
    if exc is None:
        return False
    if sockets and not conn._used():
        return False
    try:
        return options.is_broken(exc)
    except Exception as error:  # noqa: BLE001 - a failing predicate
        hub.report("warning", "broken_on_failed", error=repr(error))
        return True


def has_lent(core: PoolCore[Any, Any]) -> bool:
    """Whether a member of the pool is lent or a caller waits (read without a lock)."""
    if core.waiters:
        return True
    return any(slot.state is LENT for slot in (*core.members, *core.extra))


def upkeep_cap(options: Options, *, can_check: bool) -> float | None:
    """The longest the pool's background upkeep may sleep (a quarter of its shortest
    interval), or ``None`` when no option needs upkeep at all."""
    intervals = [
        value
        for value in (
            options.check_interval if can_check else None,
            options.idle_timeout,
            options.max_lifetime,
            options.leak_timeout,
        )
        if value is not None
    ]
    if not intervals and not options.min_idle:
        return None
    return max(0.001, min(intervals, default=1.0) / 4)


def snapshot(
    core: PoolCore[Any, Any],
    *,
    name: str,
    address: str | None,
    epoch: float,
    stale: Callable[[Any], bool],
) -> PoolStats:
    """The pool's ``PoolStats`` (the shell holds its lock, if it has one). ``epoch`` is
    the wall time of the pool clock's zero; ``stale(conn)`` says whether an idle
    connection was closed by the peer (it then does not count as connected)."""

    def when(at: float | None) -> float | None:
        return None if at is None or at == float("-inf") else epoch + at

    connected = lent = idle = 0
    members = []
    for slot in core.members:
        # Each slot's state read once: the gauges add up even while lends and puts without
        # the lock move slots (on a free-threaded build they run during this loop).
        state = slot.state
        lent += state is LENT
        idle += state is IDLE
        live = slot.conn is not None
        if live and state is not LENT:
            live = not stale(slot.conn)
        connected += live
        members.append(
            MemberStats(
                index=slot.index,
                lent=state is LENT,
                connected=live,
                connected_at=when(slot.connected_at) if slot.conn is not None else None,
                last_used_at=when(slot.idle_since),
                uses=core.uses(slot),
            )
        )
    extra_lent = sum(1 for slot in core.extra if slot.state is LENT)
    closed_by = core.closed_by
    return PoolStats(
        name=name,
        address=address,
        size=len(core.members),
        idle=len(core.idle) if core.closed else idle,  # closed: its idle ones are closing
        in_use=lent + extra_lent,
        waiting=sum(1 for waiter in list(core.waiters) if not waiter.closed),
        connected=connected,
        overflow=len(core.extra),
        lends=core.lends,
        waits=core.waits,
        timeouts=core.timeouts,
        wait_time=core.wait_time,
        dials=core.dials,
        dial_failures=core.dial_failures,
        broken=core.broken,
        stale=core.stale,
        leaks=core.leaks,
        hook_failures=core.hook_failures,
        closed_idle=closed_by["idle"],
        closed_lifetime=closed_by["lifetime"],
        closed_check=closed_by["check"],
        closed_broken=closed_by["broken"],
        closed_overflow=closed_by["overflow"],
        closed_fresh=closed_by["fresh"],
        closed=core.closed,
        members=tuple(members),
    )
