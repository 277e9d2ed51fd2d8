"""Pool statistics: immutable snapshots."""

from __future__ import annotations

import attrs

__all__ = ["MemberStats", "PoolStats"]


@attrs.frozen(kw_only=True)
class MemberStats:
    """One member of a pool at the time of the snapshot.

    ``index`` (0..size-1), ``lent``, ``connected`` (holds a connection; an
    idle socket the peer closed does not count),
    ``connected_at`` and ``last_used_at`` (``time.time()`` seconds, or
    ``None``: never connected, never put back), ``uses`` (lends of its
    current connection).
    """

    __module__ = "gocp"

    index: int
    lent: bool
    connected: bool
    connected_at: float | None
    last_used_at: float | None
    uses: int


@attrs.frozen(kw_only=True)
class PoolStats:
    """A consistent snapshot of one pool, taken under its lock.

    Gauges: ``size`` (members, constant), ``idle``, ``in_use`` (lent,
    overflow connections included), ``waiting`` (callers queued in ``get``),
    ``connected`` (members holding a connection; an idle socket the peer has
    closed does not count), ``overflow`` (overflow connections open now).

    Counters since the pool was made: ``lends`` (successful ``get``),
    ``waits`` (``get`` calls that had to queue), ``timeouts`` (``get`` calls
    that raised ``PoolTimeout``), ``wait_time`` (seconds callers spent
    queued), ``dials`` (connect attempts), ``dial_failures``, ``broken``
    (connections that failed during I/O or were put back broken), ``stale``
    (idle connections found closed by the peer and replaced before use),
    ``leaks`` (lends held past ``leak_timeout``), ``hook_failures`` (check and
    close hooks that raised), and connections closed by reason:
    ``closed_idle``, ``closed_lifetime``, ``closed_check``, ``closed_broken``,
    ``closed_overflow``, ``closed_fresh`` (by ``get(fresh=True)``).

    ``members``: one ``MemberStats`` per member, by index. ``address`` is the
    server (``None`` for a pool of clients); ``name`` labels the pool.
    """

    __module__ = "gocp"

    name: str
    address: str | None
    size: int
    idle: int
    in_use: int
    waiting: int
    connected: int
    overflow: int
    lends: int
    waits: int
    timeouts: int
    wait_time: float
    dials: int
    dial_failures: int
    broken: int
    stale: int
    leaks: int
    hook_failures: int
    closed_idle: int
    closed_lifetime: int
    closed_check: int
    closed_broken: int
    closed_overflow: int
    closed_fresh: int
    closed: bool
    members: tuple[MemberStats, ...] = attrs.field(repr=False)
