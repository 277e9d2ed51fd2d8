"""gocp: persistent, self-reconnecting connection pools.

``gocp.new(address, size=5)`` makes a pool of ``size`` socket members;
``gocp.pool(dial, size=5)`` a pool of any client ``dial()`` makes;
``gocp.keyed()`` a pool per key (address); ``gocp.cluster(addresses)`` round
robin over servers with rate limits and failover. ``get``
lends one, ``put`` takes it back. A connection that breaks raises
``ConnectionBroken`` for the failed operation (never re-sending it) and is
redialled on next use, with jittered backoff while the server is down.
"""

from ._cluster import Cluster, cluster
from ._config import Options
from ._conn import PersistentConn
from ._errors import (
    ClusterUnavailable,
    ConnectionBroken,
    DialError,
    Error,
    IOTimeout,
    PoolClosed,
    PoolTimeout,
)
from ._keyed import KeyedPool, keyed
from ._pool import Lend, Pool, new, pool
from ._stats import ClusterStats, KeyedStats, MemberStats, PoolStats, ServerStats

__all__ = [
    "Cluster",
    "ClusterStats",
    "ClusterUnavailable",
    "ConnectionBroken",
    "DialError",
    "Error",
    "IOTimeout",
    "KeyedPool",
    "KeyedStats",
    "Lend",
    "MemberStats",
    "Options",
    "PersistentConn",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "ServerStats",
    "cluster",
    "keyed",
    "new",
    "pool",
]
__version__ = "0.1.0"
