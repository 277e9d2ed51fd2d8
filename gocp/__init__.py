"""gocp: persistent, self-reconnecting connection pools.

``gocp.new(address, size=5)`` makes a pool of ``size`` socket members;
``gocp.pool(dial, size=5)`` a pool of any client ``dial()`` makes. ``get``
lends one, ``put`` takes it back. A connection that breaks raises
``ConnectionBroken`` for the failed operation (never re-sending it) and is
redialled on next use, with jittered backoff while the server is down.
"""

from ._config import Options
from ._conn import PersistentConn
from ._errors import (
    ConnectionBroken,
    DialError,
    Error,
    IOTimeout,
    PoolClosed,
    PoolTimeout,
)
from ._pool import Lend, Pool, new, pool
from ._stats import MemberStats, PoolStats

__all__ = [
    "ConnectionBroken",
    "DialError",
    "Error",
    "IOTimeout",
    "Lend",
    "MemberStats",
    "Options",
    "PersistentConn",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "new",
    "pool",
]
__version__ = "0.1.0"
