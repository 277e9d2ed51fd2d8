"""gocp for asyncio: the same pools, errors, options and stats, awaited.

``gocp.aio.new(address)`` makes a pool of socket members (``AioConn``, with
awaitable ``sendall``/``recv``/``recv_into``); ``gocp.aio.pool(dial)`` a pool of
any client ``dial()`` makes (hooks may be coroutine functions). ``await
pool.get()``, ``pool.put(conn)`` (a plain method), ``async with
pool.connection() as conn``, ``await pool.close()`` or ``async with pool``.
Decisions (who gets which member, expiry, checks, backoff, stats) come from the
same core as the threaded pools; waiting is futures, upkeep is a task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._address import AddressLike
from ._aio_cluster import AioCluster, build_cluster
from ._aio_conn import AioConn
from ._aio_connect import AioHookConnector, AioSocketConnector
from ._aio_keyed import AioKeyedPool, build_keyed
from ._aio_pool import AioLend, AioPool
from ._make import Shell, build_new, build_pool

__all__ = [
    "AioCluster",
    "AioConn",
    "AioKeyedPool",
    "AioLend",
    "AioPool",
    "cluster",
    "keyed",
    "new",
    "pool",
]

T = TypeVar("T")

_AIO = Shell(pool=AioPool, sockets=AioSocketConnector, hooks=AioHookConnector)


def new(
    address: AddressLike,
    *,
    size: int = 5,
    logger: object = None,
    check: Callable[[AioConn], object] | None = None,
    **options: Any,
) -> AioPool[AioConn]:
    """Make an ``AioPool`` of ``size`` socket members connecting to ``address``.

    As ``gocp.new`` (the same options and errors; ``check`` may be a
    coroutine function). Never touches the network and needs no running
    loop: the pool belongs to the loop of its first use. ``ssl=`` is not
    available here yet.
    """
    made: AioPool[AioConn] = build_new(
        address, size=size, logger=logger, check=check, options=options, shell=_AIO
    )
    return made


def pool(
    dial: Callable[[], Any],
    *,
    size: int = 5,
    check: Callable[[Any], object] | None = None,
    close: Callable[[Any], object] | None = None,
    logger: object = None,
    **options: Any,
) -> AioPool[Any]:
    """Make an ``AioPool`` of ``size`` clients, each made by ``dial()`` when first needed.

    As ``gocp.pool``; ``dial``, ``check`` and ``close`` may be coroutine
    functions (awaited) or plain ones. ``await pool.close()`` waits for close
    hooks still running.
    """
    made: AioPool[Any] = build_pool(
        dial, size=size, check=check, close=close, logger=logger, options=options, shell=_AIO
    )
    return made


def keyed(
    *,
    size: int = 4,
    dial: Callable[[Any], Any] | None = None,
    max_keys: int | None = None,
    key_idle_timeout: float | None = 300.0,
    logger: object = None,
    check: Callable[[Any], object] | None = None,
    close: Callable[[Any], object] | None = None,
    **options: Any,
) -> AioKeyedPool[Any]:
    """Make an ``AioKeyedPool``: a pool of ``size`` members per key, made on first use.

    As ``gocp.keyed`` (the same arguments, options and errors); ``dial(key)``
    and the hooks may be coroutine functions. ``await keyed.get(key)``,
    ``keyed.put(conn)``, ``async with keyed.connection(key)``, ``await
    keyed.close()``; idle keys are swept by one task that stops on close.
    """
    return build_keyed(
        size=size,
        dial=dial,
        max_keys=max_keys,
        key_idle_timeout=key_idle_timeout,
        logger=logger,
        check=check,
        close=close,
        options=options,
        shell=_AIO,
    )


def cluster(
    servers: Any,
    *,
    size: int = 4,
    max_rps: float | None = None,
    burst: float | None = None,
    dial: Callable[[Any], Any] | None = None,
    logger: object = None,
    check: Callable[[Any], object] | None = None,
    close: Callable[[Any], object] | None = None,
    **options: Any,
) -> AioCluster[Any]:
    """Make an ``AioCluster`` of ``size`` members per server, lent in weighted round robin.

    As ``gocp.cluster`` (the same arguments, options, errors and decisions);
    ``dial(address)`` and the hooks may be coroutine functions. ``await
    cluster.get()``, ``cluster.put(conn)``, ``async with
    cluster.connection()``, ``cluster.add(address)``, ``await
    cluster.remove(address)``, ``await cluster.close()``.
    """
    return build_cluster(
        servers,
        size=size,
        max_rps=max_rps,
        burst=burst,
        dial=dial,
        logger=logger,
        check=check,
        close=close,
        options=options,
        shell=_AIO,
    )
