"""Clusters: weighted round robin over several servers, each a single-address pool.

``Cluster`` composes one ``Pool`` per server; which server serves a get (round
robin, health, rate) is decided by ``gocp._balance.Balancer``. A get walks the
servers from its ticket: it asks the balancer, takes an idle member of that
server's pool without waiting, and makes sure it is connected (dialling
outside every lock). A server whose dial fails is down for its backoff and the
get moves on; when no server can lend, the get waits for a put, a token or a
backoff's end, within its timeout. One background thread serves every
server's pool, when an option needs one.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

from ._balance import BUSY, DIALLING, DOWN, MAX_WEIGHT, RATE, REMOVED, Balancer, Server
from ._compose import Factory, Members, factory
from ._config import check_bool, check_timeout
from ._errors import ClusterUnavailable, DialError, PoolClosed, PoolTimeout, describe
from ._pool import THREADS, Closing, Lend, Pool
from ._stats import ClusterStats, ServerStats, retire, total
from ._worker import Worker

__all__ = ["Cluster", "cluster"]

T = TypeVar("T")

_monotonic = time.monotonic


class Cluster(Closing, Generic[T]):
    """Members of several servers, lent in weighted round robin (see ``gocp.cluster``).

    Thread-safe, also ``add`` and ``remove`` while in use. No lock is held
    while dialling: a server that hangs delays the one get dialling it, and
    the others go elsewhere meanwhile.
    """

    __module__ = "gocp"

    def __init__(self, made: Factory, *, max_rps: float | None, burst: float | None) -> None:
        self.name = made.name
        self._factory = made
        self._address_of = made.key_of
        self._show = made.show
        self._sockets = made.sockets
        self._clock = made.clock
        self._dial_timeout = made.dial_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a member, token or server may be free
        self._waiting = 0  # gets that will wait on _changed if their next pass fails
        self._generation = 0  # bumped (under the lock) whenever a waiter should look again
        self._closed = False
        self._rated = max_rps is not None
        self._balancer: Balancer[Pool[T]] = Balancer(rate=max_rps, burst=burst)
        self._members: Members[Server[Pool[T]]] = Members(sockets=made.sockets)
        self._leaving: list[Server[Pool[T]]] = []  # removed, members still lent
        self._retired: dict[str, float] = {}  # counters of servers gone for good
        self._worker = Worker(cap=1.0, name=self.name, shared=True)
        self._poker = _Poker(self)
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._worker.wake)
            subscribe(self._poker.poke)
        self._finalizer = weakref.finalize(self, _close_all, self._balancer, self._worker)

    # -- servers -----------------------------------------------------------------

    def add(self, address: Any, weight: int = 1) -> None:
        """Add a server (from any thread, while in use); it takes its share of the gets
        at once. ``ValueError`` if it is there already (or the cluster is closed)."""
        key = self._address_of(address)
        weight = _check_weight(weight)
        with self._lock:
            if self._closed:
                raise PoolClosed(f"cluster {self.name} is closed")
            if key in self._balancer.servers:
                raise ValueError(f"address: {self._show(key)} is in the cluster already")
            pool: Pool[T] = self._factory.make(key, self._worker)
            hub = pool._hub
            hub.pool_ref = weakref.ref(self)  # members' `with`
            hub.on_idle = self._poker.poke
            core = pool._core
            server = self._balancer.add(
                key, weight, pool, backoff=core.backoff, core=core, now=self._clock()
            )
            self._members.register(server)
            self._generation += 1
            self._changed.notify_all()

    def remove(self, address: Any) -> None:
        """Take a server out (from any thread, while in use): its idle members close now,
        lent ones when they are put back (never under their holders). ``ValueError``
        if it is not in the cluster."""
        key = self._address_of(address)
        with self._lock:
            if key not in self._balancer.servers:
                raise ValueError(f"address: {self._show(key)} is not in the cluster")
            server = self._balancer.remove(key)
            self._leaving.append(server)
        server.pool.close()
        self._settle(server)

    @property
    def servers(self) -> list[str]:
        """The servers in the rotation, in the order they were added."""
        return [self._show(address) for address in list(self._balancer.servers)]

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
        ticket = next(self._balancer.tickets)
        deadline = None if timeout is None else _monotonic() + timeout
        by = None
        if deadline is not None and self._dial_timeout is not None:
            by = deadline + self._dial_timeout
        registered = False  # counted in _waiting: every put now bumps _generation
        seen = 0
        try:
            while True:
                if self._closed:
                    raise PoolClosed(f"cluster {self.name} is closed")
                reasons: dict[Hashable, tuple[str, BaseException | None]] = {}
                conn = self._pass(ticket, reasons, fresh, by, patient=False)
                if conn is None and any(kind == DIALLING for kind, _ in reasons.values()):
                    conn = self._pass(ticket, reasons, fresh, by, patient=True)
                if conn is not None:
                    return conn
                now = self._clock()
                with self._lock:
                    down, wait = self._balancer.verdict(reasons, now)
                    if down:
                        raise self._unavailable(reasons, wait, now)
                    left = None if deadline is None else deadline - _monotonic()
                    if left is not None and left <= 0:
                        detail = "; ".join(
                            f"{address} {text}"
                            for address, text in self._texts(reasons, now).items()
                        )
                        raise PoolTimeout(
                            f"no server of cluster {self.name} could lend within {timeout}s: "
                            f"{detail}",
                            timeout=timeout or 0.0,
                        )
                    if not registered:
                        # Look once more before sleeping: from here on a put is heard, and
                        # one that came between the pass and here is seen by the next pass.
                        registered = True
                        self._waiting += 1
                        seen = self._generation
                        continue
                    if seen == self._generation:  # nothing changed since the last pass
                        bound = left if wait is None else wait if left is None else min(left, wait)
                        self._changed.wait(bound)
                    seen = self._generation
        finally:
            if registered:
                with self._lock:
                    self._waiting -= 1

    def _pass(
        self,
        ticket: int,
        reasons: dict[Hashable, tuple[str, BaseException | None]],
        fresh: bool,
        by: float | None,
        *,
        patient: bool,
    ) -> T | None:
        """One walk over the servers from ``ticket``: a connected member, or None with
        ``reasons`` (address -> (kind, the dial's error)) saying why each server could
        not lend."""
        balancer = self._balancer
        schedule = balancer.schedule
        count = len(schedule)
        now = self._clock()
        rated = self._rated
        for step in range(count):
            server = schedule[(ticket + step) % count]
            known = reasons.get(server.address)
            if known is not None and not (patient and known[0] == DIALLING):
                continue
            if rated:
                with self._lock:
                    why = balancer.admit(server, now, patient)
            else:
                why = balancer.admit(server, now, patient)
            if why is not None:
                reasons[server.address] = (why, None)
                continue
            try:
                pool = server.pool
                conn = pool.get(None, fresh=fresh, _or_none=True)  # never waits
                if conn is not None:
                    if self._sockets:
                        pool._connect(conn, by)  # on failure it gives the member back
                    else:
                        self._members.lent(conn, server)
                    return conn
                reasons[server.address] = (BUSY, None)
            except DialError as exc:
                reasons[server.address] = (DOWN, exc)
                now = self._clock()  # a dial took time: judge the next servers by now
            except PoolClosed:
                reasons[server.address] = (REMOVED, None)
            if rated:
                with self._lock:
                    balancer.refund(server)
        return None

    def _texts(
        self, reasons: dict[Hashable, tuple[str, BaseException | None]], now: float
    ) -> dict[str, str]:
        """Why each server could not lend, in words (for errors)."""
        servers = self._balancer.servers
        texts = {}
        for address, (kind, exc) in reasons.items():
            server = servers.get(address)
            texts[self._show(address)] = (
                kind if server is None else self._explain(server, kind, now, exc)
            )
        return texts

    def _explain(
        self, server: Server[Pool[T]], why: str, now: float, exc: BaseException | None = None
    ) -> str:
        core = server.pool._core
        backoff = server.backoff
        if why == BUSY:
            lent = len(core.members) - len(core.idle)
            return f"busy ({lent} of {len(core.members)} members lent or being dialled)"
        if why == RATE:
            wait = self._balancer.next_token(server, now)
            return f"rate limited (next token in {wait:.3f}s)"
        if why == DIALLING:
            return "dialling (a dial is in flight)"
        if why == DOWN:
            cause = backoff.last_error if exc is None else exc.__cause__ or exc
            return f"down ({describe(cause)}; retry in {backoff.blocked(now):.3f}s)"
        return why

    def _unavailable(
        self,
        reasons: dict[Hashable, tuple[str, BaseException | None]],
        retry_in: float | None,
        now: float,
    ) -> ClusterUnavailable:
        texts = self._texts(
            {address: reasons.get(address, (DOWN, None)) for address in self._balancer.servers},
            now,
        )
        detail = "; ".join(f"{address} {text}" for address, text in texts.items())
        message = (
            f"every server of cluster {self.name} is down: {detail}"
            if texts
            else f"cluster {self.name} has no server"
        )
        return ClusterUnavailable(
            message, address=self.name, retry_in=retry_in or 0.0, reasons=texts
        )

    def put(self, conn: T, broken: bool = False) -> None:
        """Give back a member lent by ``get``; ``broken=True`` closes its connection.

        A member of a removed server is closed here. Raises ``TypeError`` or
        ``ValueError`` (not lent by this cluster, or put twice), leaving
        everything as it was.
        """
        server = self._members.put(conn, broken, self)
        if server.removed:
            self._settle(server)
        if self._waiting:
            self._wake_waiters()

    def _return(self, conn: Any, exc: BaseException | None) -> None:
        """Put back at the end of a ``with`` block, by ``Pool.connection``'s rule."""
        self.put(conn, self._members.broken_by(conn, exc))

    def connection(self, timeout: float | None = None, *, fresh: bool = False) -> Lend[T]:
        """A context manager: ``get`` for a ``with`` block, ``put`` after (broken if the
        block raised, as ``Pool.connection`` decides)."""
        check_bool("fresh", fresh)
        return Lend(self, None, timeout, fresh=fresh)

    def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return self.get(timeout, fresh=fresh)

    def _wake_waiters(self) -> None:
        """Something may let a waiting get through: make every waiter look again."""
        with self._lock:
            self._generation += 1
            self._changed.notify_all()

    def _settle(self, server: Server[Pool[T]]) -> None:
        """A removed server whose members are all back is forgotten (its counters kept)."""
        pool = server.pool
        if pool._has_lent():
            return
        final = pool.stats()
        with self._lock:
            if server not in self._leaving:
                return
            self._leaving.remove(server)
            retire(self._retired, final)
            self._members.unregister(server)

    # -- closing and observing ---------------------------------------------------

    def close(self) -> None:
        """Close every server's pool (idle members now, lent ones when put back) and wake
        every waiter; idempotent; never waits on the network."""
        with self._lock:
            self._closed = True
            servers = list(self._balancer.servers.values())
            self._generation += 1
            self._changed.notify_all()
        self._worker.stop()
        for server in servers:
            server.pool.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def stats(self) -> ClusterStats:
        """A snapshot of every server (see ``ClusterStats``); each server's own part is
        consistent (taken under its pool's lock)."""
        with self._lock:
            live = list(self._balancer.servers.values())
            servers = [*live, *self._leaving]
            retired = dict(self._retired)
            waiting = self._waiting
            now = self._clock()
            tokens = {}
            for server in servers:
                if self._rated:
                    self._balancer.next_token(server, now)  # tops the bucket up
                    tokens[id(server)] = server.tokens
        shown: dict[str, ServerStats] = {}
        parts = []
        for server in servers:
            backoff = server.backoff
            state = server.state(now)
            name = self._show(server.address)
            if server.removed and name in shown:  # removed, and added back since
                name += " (removed)"
            part = server.pool.stats()
            parts.append(part)
            shown[name] = ServerStats(
                address=self._show(server.address),
                weight=server.weight,
                state=state,
                retry_in=backoff.blocked(now) if backoff.failures else 0.0,
                last_error=None if backoff.last_error is None else describe(backoff.last_error),
                tokens=tokens.get(id(server)),
                pool=part,
            )
        return ClusterStats(
            name=self.name,
            servers=shown,
            waiting=waiting,
            total=total(self.name, parts, retired=retired, closed=self._closed),
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<gocp.Cluster {self.name} servers={len(self._balancer.servers)}{state}>"


class _Poker:
    """Wakes the cluster's waiting gets without keeping the cluster alive: its ``poke``
    is what the pools' hubs call when their own work frees a member, and what a fake
    clock calls when it moves (a bound method, which ``FakeClock`` holds weakly)."""

    __slots__ = ("__weakref__", "ref")

    def __init__(self, cluster: Cluster[Any]) -> None:
        self.ref = weakref.ref(cluster)

    def poke(self, *_: object) -> None:
        owner = self.ref()
        if owner is not None and owner._waiting:
            owner._wake_waiters()


def _close_all(balancer: Balancer[Pool[Any]], worker: Worker) -> None:
    """A cluster dropped without ``close()``: close its pools and its thread."""
    worker.stop()
    for server in list(balancer.servers.values()):
        server.pool.close()


def _check_weight(weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"weight: expected an int, got {type(weight).__name__} {weight!r}")
    if not 1 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight: must be within 1..{MAX_WEIGHT}, got {weight}")
    return weight


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
    rate = _check_rate("max_rps", max_rps)
    depth = _check_rate("burst", burst)
    if depth is not None and rate is None:
        raise ValueError("burst: needs max_rps")
    if depth is not None and depth < 1:
        raise ValueError(f"burst: must be >= 1 (one get takes one token), got {burst!r}")
    if options.get("dial_attempts", 1) != 1:
        raise ValueError(
            "dial_attempts: a cluster makes one attempt per server and moves on to the next "
            f"(its failover is the retry), got {options['dial_attempts']!r}"
        )
    if isinstance(servers, Mapping):
        listed = list(servers.items())
    elif isinstance(servers, (str, bytes)) or not hasattr(servers, "__iter__"):
        raise TypeError(
            "servers: expected a list of addresses or a dict {address: weight}, "
            f"got {type(servers).__name__}"
        )
    else:
        listed = [(address, 1) for address in servers]
    made = factory(
        "address",
        size=size,
        dial=dial,
        logger=logger,
        check=check,
        close=close,
        options=options,
        default_name="cluster",
        shell=THREADS,
    )
    built: Cluster[Any] = Cluster(made, max_rps=rate, burst=depth)
    seen: set[Hashable] = set()
    try:
        for address, weight in listed:
            key = made.key_of(address)
            if key in seen:
                raise ValueError(f"servers: {made.show(key)} is listed twice")
            seen.add(key)
            built.add(address, weight)
    except BaseException:
        built.close()
        raise
    return built


def _check_rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number or None, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: must be > 0 and finite, or None, got {value!r}")
    return float(value)


cluster.__module__ = "gocp"
