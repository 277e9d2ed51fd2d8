"""Clusters: weighted round robin over several servers, each a single-address pool.

``Cluster`` composes one ``Pool`` per server; which server serves a get (round robin,
health, rate) is decided by ``gocp._balance.Balancer`` through
``gocp._clusterbase.ClusterBase``. A get walks the servers from its ticket: it takes an
idle member of each admitted server's pool without waiting and makes sure it is
connected (dialling outside every lock). A server whose dial fails is down for its
backoff and the get moves on; when no server can lend, the get waits for a put, a token
or a backoff's end, within its timeout. One background thread serves every server's
pool, when an option needs one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ._balance import Balancer, Server
from ._clusterbase import TOOK, ClusterBase, Reasons, cluster_factory
from ._clusterbase import send_step as _send
from ._compose import Factory
from ._config import check_bool, check_timeout
from ._errors import DialError, PoolClosed
from ._pool import THREADS, Closing, Lend
from ._worker import Worker

__all__ = ["Cluster", "cluster"]

T = TypeVar("T")


class Cluster(Closing, ClusterBase[T]):
    """Members of several servers, lent in weighted round robin (see ``gocp.cluster``).

    Thread-safe, also ``add`` and ``remove`` while in use. No lock is held
    while dialling: a server that hangs delays the one get dialling it, and
    the others go elsewhere meanwhile.
    """

    __module__ = "gocp"

    def __init__(self, made: Factory, *, max_rps: float | None, burst: float | None) -> None:
        lock = threading.Lock()
        super().__init__(made, max_rps=max_rps, burst=burst, lock=lock)
        self._changed = threading.Condition(lock)  # a member, token or server may be free
        self._worker = Worker(cap=1.0, name=self.name, shared=True)
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._worker.wake)
            subscribe(self._poker.poke)
        self._finalizer = weakref.finalize(self, _close_all, self._balancer, self._worker)

    def _shared_worker(self) -> Worker:
        return self._worker

    def _wake_waiters(self) -> None:
        with self._lock:
            self._generation += 1
            self._changed.notify_all()

    def remove(self, address: Any) -> None:
        """Take a server out (from any thread, while in use): its idle members close now,
        lent ones when they are put back (never under their holders). ``ValueError``
        if it is not in the cluster."""
        server = self._take_out(address)
        server.pool.close()
        self._settle(server)

    # -- lending -------------------------------------------------------------------

    def get(self, timeout: float | None = None, *, fresh: bool = False) -> T:
        """Lend a connected member of the next server in round robin that can serve.

        Servers that are down (backing off after a failed dial), over their
        rate or with no idle member are skipped; a failed dial marks its
        server down and the get moves on, all within ``timeout`` (``None``:
        no bound; ``0``: never wait) plus one ``dial_timeout``. Raises
        ``ClusterUnavailable`` at once when every server is down,
        ``PoolTimeout`` (saying why, per server) when the time runs out,
        ``PoolClosed`` once closed.
        """
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        ticket, deadline, by = self._bound(timeout)
        registered = False  # counted in _waiting: every put now bumps _generation
        seen = 0
        try:
            while True:
                if self._closed:
                    raise PoolClosed(f"cluster {self.name!r} is closed")
                reasons: Reasons = {}
                conn = self._pass(ticket, reasons, fresh, by, patient=False)
                if conn is None and self._dialling(reasons):
                    conn = self._pass(ticket, reasons, fresh, by, patient=True)
                if conn is not None:
                    return conn
                with self._lock:
                    bound = self._nothing_lent(reasons, deadline, timeout)
                    if not registered:
                        # Look once more before sleeping: from here on a put is heard, and
                        # one that came between the pass and here is seen by the next pass.
                        registered = True
                        self._waiting += 1
                        seen = self._generation
                        continue
                    if seen == self._generation:  # nothing changed since the last pass
                        self._changed.wait(bound)
                    seen = self._generation
        finally:
            if registered:
                with self._lock:
                    self._waiting -= 1

    def _pass(
        self, ticket: int, reasons: Reasons, fresh: bool, by: float | None, *, patient: bool
    ) -> T | None:
        """One walk over the servers (``ClusterBase._steps``): a connected member, or
        None with ``reasons`` filled in."""
        steps = self._steps(ticket, reasons, patient=patient)
        try:
            server = next(steps, None)
            while server is not None:
                try:
                    conn = self._take(server, fresh, by)
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

    def _take(self, server: Server[Any], fresh: bool, by: float | None) -> T | None:
        """An idle member of ``server``'s pool, connected; None if none is idle."""
        pool = server.pool
        try:
            conn: T | None = pool.get(None, fresh=fresh, _or_none=True)  # never waits
            if conn is not None and self._sockets:
                pool._connect(conn, by)  # on failure it gives the member back
        except BaseException:
            if server.removed:  # removed meanwhile: its member went back to a closed pool
                self._settle(server)
            raise
        if conn is not None:
            self._members.lent(conn, server)
        return conn

    def connection(self, timeout: float | None = None, *, fresh: bool = False) -> Lend[T]:
        """A context manager: ``get`` for a ``with`` block, ``put`` after (broken if the
        block raised, as ``Pool.connection`` decides)."""
        check_bool("fresh", fresh)
        return Lend(self, None, timeout, fresh=fresh)

    def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return self.get(timeout, fresh=fresh)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close every server's pool (idle members now, lent ones when put back) and wake
        every waiter; idempotent; never waits on the network."""
        servers = self._stop()
        self._wake_waiters()
        self._worker.stop()
        for server in servers:
            server.pool.close()


def _close_all(balancer: Balancer[Any], worker: Worker) -> None:
    """A cluster dropped without ``close()``: close its pools and its thread."""
    worker.stop()
    for server in list(balancer.servers.values()):
        server.pool.close()


def cluster(
    servers: Any,
    *,
    size: int = 4,
    max_rps: float | None = None,
    burst: float | None = None,
    dial: Callable[[Any], T] | None = None,
    logger: object = None,
    check: Callable[[Any], object] | None = None,
    close: Callable[[Any], object] | None = None,
    **options: Any,
) -> Cluster[Any]:
    """Make a ``Cluster`` of ``size`` members per server, lent in weighted round robin.

    ``servers``: a list of addresses, or a dict ``{address: weight}``
    (weights are ints 1..1000; default 1); it may be empty (``add`` later).
    With ``dial=None`` members are ``PersistentConn`` (as ``gocp.new``
    makes; ``conn.address`` says which server); otherwise ``dial(address)``
    makes a client for that server (with ``check`` and ``close`` hooks, as
    ``gocp.pool``). ``max_rps``: a token bucket per server, one token per
    get, ``burst`` (default ``max_rps``) tokens at most, full at the start.
    Every option of ``gocp.Options`` applies to each server's pool; a
    server's backoff (``retry_min``..``retry_max``) is how long it stays down
    after a failed dial. Never touches the network here.
    """
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
        shell=THREADS,
    )
    built: Cluster[Any] = Cluster(made, max_rps=rate, burst=depth)
    try:
        for address, weight in listed:
            built.add(address, weight)
    except BaseException:
        built.close()
        raise
    return built


cluster.__module__ = "gocp"
