"""Pool statistics: an immutable snapshot."""

from __future__ import annotations

import attrs

__all__ = ["PoolStats"]


@attrs.frozen(kw_only=True)
class PoolStats:
    """A consistent snapshot of one pool, taken under its lock.

    Gauges: ``size`` (members, constant), ``idle``, ``in_use`` (lent),
    ``waiting`` (callers blocked in ``get``), ``connected`` (members holding
    a live socket). Counters since the pool was made: ``lends`` (successful
    ``get``), ``waits`` (``get`` calls that had to queue), ``timeouts``
    (``get`` calls that raised ``PoolTimeout``), ``dials`` (connect attempts),
    ``dial_failures``, ``broken`` (connections lost during I/O or put back
    broken), ``stale`` (idle connections found closed by the peer and
    replaced before use).
    """

    __module__ = "gocp"

    address: str
    size: int
    idle: int
    in_use: int
    waiting: int
    connected: int
    lends: int
    waits: int
    timeouts: int
    dials: int
    dial_failures: int
    broken: int
    stale: int
    closed: bool
