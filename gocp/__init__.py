"""gocp: persistent, self-reconnecting connection pools.

``gocp.new(address, size=5)`` makes a pool of ``size`` members; ``get`` lends
one, ``put`` takes it back. A member whose connection breaks raises
``ConnectionBroken`` for the failed operation (never re-sending it) and
redials on its next use, with jittered backoff while the server is down.
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
from ._pool import Lend, Pool, new
from ._stats import PoolStats

__all__ = [
    "ConnectionBroken",
    "DialError",
    "Error",
    "IOTimeout",
    "Lend",
    "Options",
    "PersistentConn",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "new",
]
__version__ = "0.1.0"
