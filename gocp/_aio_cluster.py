"""Clusters for asyncio: ``gocp.cluster`` with an ``AioPool`` per server, awaited.

The servers, the pass over them, the balancer's decisions, what a get that found
nothing does next, ``put`` and the stats are ``gocp._clusterbase.ClusterBase`` (the
same as the threaded cluster's); this shell tries each server with ``await`` and waits
for a put, a token or a backoff's end on an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Self, TypeVar

from ._aio_hub import NO_LOCK
from ._aio_pool import AioLend
from ._balance import Server
from ._clusterbase import TOOK, ClusterBase, Reasons, cluster_factory
from ._clusterbase import send_step as _send
from ._compose import Factory
from ._config import check_bool, check_timeout
from ._errors import DialError, PoolClosed
from ._make import Shell

__all__ = ["AioCluster", "build_cluster"]

T = TypeVar("T")


class AioCluster(ClusterBase[T]):
    """``gocp.Cluster`` for asyncio (see ``gocp.aio.cluster``): ``await get()``, ``put``
    (plain), ``async with connection()``, ``add`` (plain), ``await remove()``,
    ``await close()``. Use it from one loop."""

    __module__ = "gocp.aio"

    def __init__(self, made: Factory, *, max_rps: float | None, burst: float | None) -> None:
        super().__init__(made, max_rps=max_rps, burst=burst, lock=NO_LOCK)
        self._changed: asyncio.Event | None = None  # a member, token or server may be free
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._poker.poke)

    def _wake_waiters(self) -> None:
        self._generation += 1
        if self._changed is not None:
            self._changed.set()

    async def remove(self, address: Any) -> None:
        """Take a server out (while in use): its idle members close now, lent ones when
        they are put back. ``ValueError`` if it is not in the cluster."""
        server = self._take_out(address)
        try:
            await server.pool.close()
        finally:
            self._settle(server)

    # -- lending -------------------------------------------------------------------

    async def get(self, timeout: float | None = None, *, fresh: bool = False) -> T:
        """Lend a connected member of the next server in round robin that can serve, as
        ``gocp.Cluster.get`` does (the same errors), awaited."""
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        ticket, deadline, by = self._bound(timeout)
        registered = False
        seen = 0
        try:
            while True:
                if self._closed:
                    raise PoolClosed(f"cluster {self.name!r} is closed")
                reasons: Reasons = {}
                conn = await self._pass(ticket, reasons, fresh, by, patient=False)
                if conn is None and self._dialling(reasons):
                    conn = await self._pass(ticket, reasons, fresh, by, patient=True)
                if conn is not None:
                    return conn
                bound = self._nothing_lent(reasons, deadline, timeout)
                if not registered:  # from here on a put is heard: look once more
                    registered = True
                    self._waiting += 1
                    seen = self._generation
                    continue
                if seen == self._generation:  # nothing changed since the last pass
                    changed = self._changed = self._changed or asyncio.Event()
                    changed.clear()
                    try:
                        async with asyncio.timeout(bound):
                            await changed.wait()
                    except TimeoutError:
                        pass
                seen = self._generation
        finally:
            if registered:
                self._waiting -= 1

    async def _pass(
        self, ticket: int, reasons: Reasons, fresh: bool, by: float | None, *, patient: bool
    ) -> T | None:
        """One walk over the servers (``ClusterBase._steps``), each tried with ``await``."""
        steps = self._steps(ticket, reasons, patient=patient)
        try:
            server = next(steps, None)
            while server is not None:
                try:
                    conn = await self._take(server, fresh, by)
                except (DialError, PoolClosed) as exc:
                    outcome: Any = exc
                else:
                    if conn is not None:
                        _send(steps, TOOK)
                        return conn
                    outcome = None
                server = _send(steps, outcome)
        finally:
            steps.close()  # ended early (cancelled, interrupted): it gives back the token
        return None

    async def _take(self, server: Server[Any], fresh: bool, by: float | None) -> T | None:
        """An idle member of ``server``'s pool, connected; None if none is idle."""
        pool = server.pool
        try:
            conn: T | None = await pool.get(None, fresh=fresh, _or_none=True)  # never waits
            if conn is not None and self._sockets:
                await pool._connect(conn, by)  # on failure it gives the member back
        except BaseException:
            if server.removed:  # removed meanwhile: its member went back to a closed pool
                self._settle(server)
            raise
        if conn is not None:
            self._members.lent(conn, server)
        return conn

    def connection(self, timeout: float | None = None, *, fresh: bool = False) -> AioLend[T]:
        """``async with cluster.connection() as conn:``: get, and put back after."""
        check_bool("fresh", fresh)
        return AioLend(self, None, timeout, fresh=fresh)

    async def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return await self.get(timeout, fresh=fresh)

    # -- closing -------------------------------------------------------------------

    async def close(self) -> None:
        """Close every server's pool (idle members now, lent ones when put back), wake
        every waiter; idempotent; nothing is left pending."""
        servers = self._stop()
        self._wake_waiters()
        pools = [server.pool for server in [*servers, *self._leaving]] + self._gone
        for pool in pools:  # removed servers' too: their close hooks may still run
            await pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def build_cluster(
    servers: Any,
    *,
    size: int,
    max_rps: float | None,
    burst: float | None,
    dial: Callable[[Any], Any] | None,
    logger: object,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    options: dict[str, Any],
    shell: Shell,
) -> AioCluster[Any]:
    """``gocp.aio.cluster`` once its arguments are known (see ``gocp.cluster``)."""
    made, rate, depth, listed = cluster_factory(
        servers,
        size=size,
        max_rps=max_rps,
        burst=burst,
        dial=dial,
        logger=logger,
        check=check,
        close=close,
        options=options,
        shell=shell,
    )
    built: AioCluster[Any] = AioCluster(made, max_rps=rate, burst=depth)
    for address, weight in listed:
        built.add(address, weight)  # makes pools only: nothing to undo on error but them
    return built
