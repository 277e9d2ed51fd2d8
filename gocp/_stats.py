"""Pool statistics: immutable snapshots."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "COUNTERS",
    "ClusterStats",
    "KeyedStats",
    "MemberStats",
    "PoolStats",
    "ServerStats",
    "retire",
    "total",
]


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

    Counters since the pool was made: ``lends`` (members lent by ``get``,
    also those whose dial then failed), ``waits`` (``get`` calls that had to
    queue), ``timeouts`` (``get`` calls that raised ``PoolTimeout``),
    ``wait_time`` (seconds callers spent queued), ``dials`` (connect
    attempts), ``dial_failures``, ``broken`` (connections that failed during
    I/O or were put back broken), ``stale``
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


#: The fields of ``PoolStats`` that only grow (summed over the pools a total covers,
#: closed ones included); the other numbers are gauges of the pools open now.
COUNTERS = (
    "lends",
    "waits",
    "timeouts",
    "wait_time",
    "dials",
    "dial_failures",
    "broken",
    "stale",
    "leaks",
    "hook_failures",
    "closed_idle",
    "closed_lifetime",
    "closed_check",
    "closed_broken",
    "closed_overflow",
    "closed_fresh",
)
_GAUGES = ("size", "idle", "in_use", "waiting", "connected", "overflow")


def total(
    name: str, parts: Iterable[PoolStats], *, retired: dict[str, float], closed: bool
) -> PoolStats:
    """One ``PoolStats`` summing ``parts`` (the pools open now) and the counters of pools
    already closed (``retired``, see ``retire``); ``address`` None, no ``members``."""
    sums: dict[str, float] = dict.fromkeys(_GAUGES, 0)
    sums.update(retired)
    for part in parts:
        for field in (*_GAUGES, *COUNTERS):
            sums[field] = sums.get(field, 0) + getattr(part, field)
    values: dict[str, Any] = {
        field: (sums.get(field, 0) if field == "wait_time" else int(sums.get(field, 0)))
        for field in (*_GAUGES, *COUNTERS)
    }
    return PoolStats(name=name, address=None, closed=closed, members=(), **values)


def retire(retired: dict[str, float], final: PoolStats) -> None:
    """Keep the counters of a pool being closed and forgotten, for ``total``."""
    for field in COUNTERS:
        retired[field] = retired.get(field, 0) + getattr(final, field)


@attrs.frozen(kw_only=True)
class KeyedStats:
    """A snapshot of a keyed pool (``gocp.keyed``).

    ``keys``: ``{key: PoolStats}`` for each key open now (a socket key is
    shown as ``"host:port"``). ``total``: one ``PoolStats`` adding them up;
    its counters include keys already forgotten, so they never go down.
    ``keys_made``, ``keys_evicted`` (closed to make room under
    ``max_keys``), ``keys_expired`` (closed after ``key_idle_timeout``);
    ``waiting_for_room`` (gets for a new key waiting, under ``max_keys``, for a
    key to become evictable); ``closed``.
    """

    __module__ = "gocp"

    name: str
    keys: dict[Any, PoolStats] = attrs.field(repr=False)
    total: PoolStats
    keys_made: int
    keys_evicted: int
    keys_expired: int
    waiting_for_room: int
    closed: bool


@attrs.frozen(kw_only=True)
class ServerStats:
    """One server of a cluster at the time of the snapshot.

    ``address``, ``weight``, ``state`` (``"up"``; ``"down"``: backing off
    after a failed dial, or its one trial dial is in flight; ``"trial"``: the
    next get tries it; ``"removed"``: taken out, members still lent),
    ``retry_in`` (seconds until a get may try it again; 0.0 when up),
    ``last_error`` (why its last dial failed, or ``None``), ``tokens`` (its
    token bucket now; ``None`` without ``max_rps``), and ``pool``: its
    ``PoolStats`` (``pool.lends`` is its share of the gets).
    """

    __module__ = "gocp"

    address: str
    weight: int
    state: str
    retry_in: float
    last_error: str | None
    tokens: float | None
    pool: PoolStats


@attrs.frozen(kw_only=True)
class ClusterStats:
    """A snapshot of a cluster (``gocp.cluster``): ``servers`` (``{address:
    ServerStats}``, in the order they were added, removed servers that still
    have members lent included), ``total`` (one ``PoolStats`` adding them up;
    its counters include removed servers), ``waiting`` (gets of the cluster
    waiting now for a member, a token or a server), ``closed``. A server removed
    while members were lent and added back since shows twice, the removed one as
    ``"address (removed)"``."""

    __module__ = "gocp"

    name: str
    servers: dict[str, ServerStats] = attrs.field(repr=False)
    total: PoolStats
    waiting: int
    closed: bool
