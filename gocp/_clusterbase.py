"""What a cluster is in either shell: its servers, the pass over them, why a get failed.

``ClusterBase`` holds the ``Balancer`` (the decisions: round robin, health, rate), the
servers' pools, ``add``, the bookkeeping of ``remove``, the pass over the servers as a
generator (it yields each server to try; the shell tries it, with or without ``await``,
and sends back what happened), what a get that found nothing does next, ``put`` (which
never waits in either shell) and the stats. The threaded ``Cluster``
(``gocp._cluster``) and the asyncio one (``gocp._aio_cluster``) add the trying, the
waiting and the closing.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Generator, Hashable, Mapping
from typing import Any, Generic, TypeVar

from ._balance import BUSY, DIALLING, DOWN, MAX_WEIGHT, RATE, REMOVED, Balancer, Server
from ._compose import Factory, Members, factory
from ._errors import ClusterUnavailable, DialError, PoolClosed, PoolTimeout, describe
from ._make import Shell
from ._stats import ClusterStats, ServerStats, retire, total

__all__ = ["TOOK", "ClusterBase", "Reasons", "cluster_factory", "send_step"]

#: What a shell sends ``ClusterBase._steps`` when the server it tried lent a member.
TOOK: Any = object()

T = TypeVar("T")

#: Why each server could not lend: address -> (kind, the dial's error or None).
Reasons = dict[Hashable, tuple[str, BaseException | None]]

_monotonic = time.monotonic


class ClusterBase(Generic[T]):
    """The shell-neutral part of a cluster (see the module docstring). ``lock`` is the
    shell's: a ``threading.Lock``, or a context manager that does nothing."""

    def __init__(
        self, made: Factory, *, max_rps: float | None, burst: float | None, lock: Any
    ) -> None:
        self.name = made.name
        self._factory = made
        self._address_of = made.key_of
        self._show = made.show
        self._sockets = made.sockets
        self._clock: Callable[[], float] = made.clock
        self._dial_timeout = made.dial_timeout
        self._lock = lock
        self._waiting = 0  # gets that will wait if their next pass fails
        self._generation = 0  # bumped (under the lock) whenever a waiter should look again
        self._closed = False
        self._rated = max_rps is not None
        self._balancer: Balancer[Any] = Balancer(rate=max_rps, burst=burst)
        self._members: Members[Server[Any]] = Members(sockets=made.sockets)
        self._leaving: list[Server[Any]] = []  # removed, members still lent
        self._retired: dict[str, float] = {}  # counters of servers gone for good
        self._gone: list[Any] = []  # their pools (close hooks may still run: asyncio)
        self._poker = _Poker(self)

    # -- the shell's part -----------------------------------------------------------

    def _wake_waiters(self) -> None:
        """Something may let a waiting get through: make every waiter look again."""
        raise NotImplementedError

    def _shared_worker(self) -> Any:
        """The background thread the servers' pools share (threads), or None."""
        return None

    # -- servers -----------------------------------------------------------------

    def add(self, address: Any, weight: int = 1) -> None:
        """Add a server (while in use); it takes its share of the gets at once.
        ``ValueError`` if it is there already; ``PoolClosed`` once closed."""
        key = self._address_of(address)
        weight = _check_weight(weight)
        with self._lock:
            if self._closed:
                raise PoolClosed(f"cluster {self.name} is closed")
            if key in self._balancer.servers:
                raise ValueError(f"address: {self._show(key)} is in the cluster already")
            pool = self._factory.make(key, self._shared_worker())
            hub = pool._hub
            hub.pool_ref = weakref.ref(self)  # members' `with`
            hub.on_idle = self._poker.poke
            core = pool._core
            server = self._balancer.add(
                key, weight, pool, backoff=core.backoff, core=core, now=self._clock()
            )
            self._members.register(server)
        self._wake_waiters()

    def _take_out(self, address: Any) -> Server[Any]:
        """``remove``'s bookkeeping: out of the rotation (close its pool next, then
        ``_settle``). ``ValueError`` if it is not in the cluster."""
        key = self._address_of(address)
        with self._lock:
            if key not in self._balancer.servers:
                raise ValueError(f"address: {self._show(key)} is not in the cluster")
            server = self._balancer.remove(key)
            self._leaving.append(server)
        return server

    @property
    def servers(self) -> list[str]:
        """The servers in the rotation, in the order they were added."""
        return [self._show(address) for address in list(self._balancer.servers)]

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    # -- a get ------------------------------------------------------------------------

    def _bound(self, timeout: float | None) -> tuple[int, float | None, float | None]:
        """A get's ticket (its place in the round robin), deadline and dial bound
        (``time.monotonic``: the get's timeout plus one ``dial_timeout``)."""
        ticket = next(self._balancer.tickets)
        deadline = None if timeout is None else _monotonic() + timeout
        by = None
        if deadline is not None and self._dial_timeout is not None:
            by = deadline + self._dial_timeout
        return ticket, deadline, by

    def _steps(
        self, ticket: int, reasons: Reasons, *, patient: bool
    ) -> Generator[Server[Any], Any, None]:
        """One walk over the servers from ``ticket``: yields each server the balancer
        admits; the shell tries it and sends back ``TOOK`` (it lent: the walk ends),
        ``None`` (no idle member) or the ``DialError``/``PoolClosed`` it raised. Closed
        while a server is being tried (the get was cancelled), it gives back the token.
        ``reasons`` says why each server could not lend."""
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
                outcome = yield server
            except GeneratorExit:  # the get ended while trying it (cancelled, interrupted)
                if rated:
                    with self._lock:
                        balancer.refund(server)
                raise
            if outcome is TOOK:  # it lent: the token is spent
                return
            if outcome is None:
                reasons[server.address] = (BUSY, None)
            elif isinstance(outcome, DialError):
                reasons[server.address] = (DOWN, outcome)
                now = self._clock()  # a dial took time: judge the next servers by now
            else:
                reasons[server.address] = (REMOVED, None)
            if rated:
                with self._lock:
                    balancer.refund(server)

    def _nothing_lent(
        self, reasons: Reasons, deadline: float | None, timeout: float | None
    ) -> float | None:
        """Under the lock, after passes that lent nothing: raise ``ClusterUnavailable``
        (every server down) or ``PoolTimeout`` (time is up), else how long to wait at most
        for a put, a token or a backoff's end (``None``: no bound)."""
        now = self._clock()
        down, wait = self._balancer.verdict(reasons, now)
        if down:
            raise self._unavailable(reasons, wait, now)
        left = None if deadline is None else deadline - _monotonic()
        if left is not None and left <= 0:
            texts = self._texts(reasons, now).items()
            detail = "; ".join(f"{address} {text}" for address, text in texts)
            raise PoolTimeout(
                f"no server of cluster {self.name!r} could lend within {timeout}s: {detail}",
                timeout=timeout or 0.0,
            )
        return left if wait is None else wait if left is None else min(left, wait)

    @staticmethod
    def _dialling(reasons: Reasons) -> bool:
        """Whether a server was skipped only because a dial to it was in flight."""
        return any(kind == DIALLING for kind, _ in reasons.values())

    def _texts(self, reasons: Reasons, now: float) -> dict[str, str]:
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
        self, server: Server[Any], why: str, now: float, exc: BaseException | None = None
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
        reasons: Reasons,
        retry_in: float | None,
        now: float,
    ) -> ClusterUnavailable:
        texts = self._texts(
            {address: reasons.get(address, (DOWN, None)) for address in self._balancer.servers},
            now,
        )
        detail = "; ".join(f"{address} {text}" for address, text in texts.items())
        message = (
            f"every server of cluster {self.name!r} is down: {detail}"
            if texts
            else f"cluster {self.name!r} has no server"
        )
        return ClusterUnavailable(
            message, address=self.name, retry_in=retry_in or 0.0, reasons=texts
        )

    # -- putting back (a plain call in both shells) -----------------------------------

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

    def _settle(self, server: Server[Any]) -> None:
        """A removed server whose members are all back is forgotten (its counters kept)."""
        pool = server.pool
        if pool._has_lent():
            return
        final = pool.stats()
        with self._lock:
            if server not in self._leaving:
                return
            self._leaving.remove(server)
            # Kept only while close hooks of theirs still run (asyncio), for close().
            self._gone = [old for old in (*self._gone, pool) if getattr(old._hub, "_closes", ())]
            retire(self._retired, final)
            self._members.unregister(server)

    def _stop(self) -> list[Server[Any]]:
        """At close: closed, every waiter told; the servers whose pools to close."""
        with self._lock:
            self._closed = True
            self._generation += 1
            return list(self._balancer.servers.values())

    # -- observing -------------------------------------------------------------------

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
        kind = f"{type(self).__module__}.{type(self).__name__}"
        return f"<{kind} {self.name} servers={len(self._balancer.servers)}{state}>"


def send_step(steps: Generator[Server[Any], Any, None], outcome: Any) -> Server[Any] | None:
    """Tell a walk (``ClusterBase._steps``) what trying its server gave; the next server
    to try, or None when the walk is over."""
    try:
        return steps.send(outcome)
    except StopIteration:
        return None


class _Poker:
    """Wakes the cluster's waiting gets without keeping the cluster alive: its ``poke``
    is what the pools' hubs call when their own work frees a member, and what a fake
    clock calls when it moves (a bound method, which ``FakeClock`` holds weakly)."""

    __slots__ = ("__weakref__", "ref")

    def __init__(self, cluster: ClusterBase[Any]) -> None:
        self.ref = weakref.ref(cluster)

    def poke(self, *_: object) -> None:
        owner = self.ref()
        if owner is not None and owner._waiting:
            owner._wake_waiters()


def _check_weight(weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"weight: expected an int, got {type(weight).__name__} {weight!r}")
    if not 1 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight: must be within 1..{MAX_WEIGHT}, got {weight}")
    return weight


def cluster_factory(
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
) -> tuple[Factory, float | None, float | None, list[tuple[Any, Any]]]:
    """Check the arguments of ``gocp.cluster`` (and ``gocp.aio.cluster``): how to make
    each server's pool, ``max_rps``, ``burst``, and the ``(address, weight)`` pairs."""
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
        shell=shell,
    )
    seen: set[Hashable] = set()
    for address, _weight in listed:
        key = made.key_of(address)
        if key in seen:
            raise ValueError(f"servers: {made.show(key)} is listed twice")
        seen.add(key)
    return made, rate, depth, listed


def _check_rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number or None, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: must be > 0 and finite, or None, got {value!r}")
    return float(value)
