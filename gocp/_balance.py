"""A cluster's decisions, free of I/O: round robin, health, rate limits and why a get failed.

``Balancer`` keeps the servers of a cluster, each with its pool (a
single-address pool: the cluster composes them), its weight and its token
bucket. Every method takes ``now``; none waits, locks or dials. The shell
(threads: ``gocp._cluster``) walks the order ``schedule`` gives for a get's
ticket, asks ``admit`` for each server, and tries the server's pool outside
any lock.

- Round robin: ``schedule`` is a smooth weighted round robin (nginx's), laid
  out once per change of servers: each server appears ``weight`` times per
  cycle, spread out. Each get takes the next ticket (``itertools.count``,
  atomic) and starts there; a server it skips passes its turn on.
- Health is the server's pool's own dial backoff (``gocp._backoff``): a
  server whose dial failed is down for the jittered backoff, then one get may
  try it (the backoff's probe: one trial at a time); its first good dial
  brings it back at once.
- Rate: a token bucket per server (``rate`` tokens a second, at most
  ``burst``, full at the start); a get takes one token and gives it back if
  the server cannot lend after all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping
from typing import Generic, Protocol, TypeVar

from ._backoff import Backoff

__all__ = ["BUSY", "DIALLING", "DOWN", "RATE", "REMOVED", "Balancer", "Dials", "Server"]

P = TypeVar("P")

# Why a server could not serve a get (the kinds of ``reasons``).
DOWN = "down"
BUSY = "busy"
RATE = "rate limited"
DIALLING = "dialling"
REMOVED = "removed"

MAX_WEIGHT = 1000


class Dials(Protocol):
    """A server's pool core, as the balancer sees it: its dials in flight."""

    @property
    def dialling(self) -> int: ...


class Server(Generic[P]):
    """One server of a cluster: its pool and its share of the traffic."""

    __slots__ = (
        "address",
        "backoff",
        "core",
        "pool",
        "removed",
        "stamp",
        "tokens",
        "weight",
    )

    def __init__(
        self, address: Hashable, weight: int, pool: P, backoff: Backoff, core: Dials
    ) -> None:
        self.address = address
        self.weight = weight
        self.pool = pool
        self.backoff = backoff  # its pool's dial backoff: its health
        self.core = core
        self.tokens = math.inf  # the token bucket (inf: no rate limit)
        self.stamp = 0.0  # when tokens were last topped up
        self.removed = False

    def state(self, now: float) -> str:
        """``"up"``, ``"down"`` (backing off, or a trial dial in flight), ``"trial"`` (the
        next get tries it), ``"removed"``."""
        if self.removed:
            return REMOVED
        if not self.backoff.failures:
            return "up"
        return DOWN if self.backoff.blocked(now) > 0 else "trial"


class Balancer(Generic[P]):
    """The servers of a cluster and the decisions about them (see the module docstring).

    ``rate`` (tokens a second, or ``None``) and ``burst`` are per server.
    ``admit``, ``refund``, ``add`` and ``remove`` run under the shell's lock
    when they change tokens or servers; ``schedule`` is replaced whole, so a
    get reads it without the lock.
    """

    def __init__(self, *, rate: float | None, burst: float | None) -> None:
        self.rate = rate
        self.burst = (rate if burst is None else burst) if rate is not None else None
        self.servers: dict[Hashable, Server[P]] = {}
        self.schedule: tuple[Server[P], ...] = ()
        self.tickets = itertools.count()

    # -- membership ----------------------------------------------------------------

    def add(
        self, address: Hashable, weight: int, pool: P, *, backoff: Backoff, core: Dials, now: float
    ) -> Server[P]:
        """A new server (its bucket full). ``ValueError`` if ``address`` is there already."""
        if address in self.servers:
            raise ValueError(f"address: {address!r} is in the cluster already")
        server = Server(address, weight, pool, backoff, core)
        if self.burst is not None:
            server.tokens = self.burst
            server.stamp = now
        self.servers[address] = server
        self._lay_out()
        return server

    def remove(self, address: Hashable) -> Server[P]:
        """Take a server out of the rotation. ``ValueError`` if it is not there."""
        server = self.servers.pop(address, None)
        if server is None:
            raise ValueError(f"address: {address!r} is not in the cluster")
        server.removed = True
        self._lay_out()
        return server

    def _lay_out(self) -> None:
        """Smooth weighted round robin over one cycle: each step every server gains its
        weight, the richest is chosen and pays the total. Weights ``w`` give a cycle of
        ``sum(w) / gcd(w)`` turns in which each server has ``w / gcd`` turns, spread."""
        servers = list(self.servers.values())
        if not servers:
            self.schedule = ()
            return
        gcd = math.gcd(*(server.weight for server in servers))
        weights = [server.weight // gcd for server in servers]
        total = sum(weights)
        current = [0] * len(servers)
        order: list[Server[P]] = []
        for _ in range(total):
            for index, weight in enumerate(weights):
                current[index] += weight
            best = max(range(len(servers)), key=current.__getitem__)
            current[best] -= total
            order.append(servers[best])
        self.schedule = tuple(order)

    # -- a get's turn ----------------------------------------------------------------

    def admit(self, server: Server[P], now: float, patient: bool) -> str | None:
        """Whether ``server`` may serve a get now: ``None`` (yes; a token was taken) or the
        kind of reason why not (``DOWN``, ``RATE``, ``DIALLING``, ``REMOVED``). An
        impatient get (the first pass over the servers) also skips a server with a dial
        in flight, so a server that hangs delays one get, not one in N."""
        if server.removed:
            return REMOVED
        backoff = server.backoff
        if backoff.failures and backoff.blocked(now) > 0:
            return DOWN
        if not patient and server.core.dialling:
            return DIALLING
        if self.rate is not None:
            self._top_up(server, now)
            if server.tokens < 1.0:
                return RATE
            server.tokens -= 1.0
        return None

    def refund(self, server: Server[P]) -> None:
        """An admitted get did not get a member there: give its token back."""
        if self.burst is not None:
            server.tokens = min(self.burst, server.tokens + 1.0)

    def _top_up(self, server: Server[P], now: float) -> None:
        assert self.rate is not None
        assert self.burst is not None
        if now > server.stamp:
            server.tokens = min(self.burst, server.tokens + (now - server.stamp) * self.rate)
            server.stamp = now

    # -- when nobody could serve -----------------------------------------------------

    def next_token(self, server: Server[P], now: float) -> float:
        """Seconds until ``server`` has a token (0.0: it has one)."""
        if self.rate is None:
            return 0.0
        self._top_up(server, now)
        return max(0.0, (1.0 - server.tokens) / self.rate)

    def verdict(
        self, reasons: Mapping[Hashable, tuple[str, object]], now: float
    ) -> tuple[bool, float | None]:
        """After a pass in which no server lent (``reasons``: address -> (kind, detail)):
        ``(True, retry_in)`` if every server is down (no server at all: retry_in 0), else
        ``(False, wait)`` where ``wait`` is when something may change without a put (a
        token, a backoff ending; ``None``: only a put can help)."""
        servers = [server for server in self.servers.values() if not server.removed]
        down = [
            server
            for server in servers
            if reasons.get(server.address, ("",))[0] == DOWN
            or (server.backoff.failures and server.backoff.blocked(now) > 0)
        ]
        if len(down) == len(servers):
            ends = [server.backoff.blocked(now) for server in down]
            return True, min(ends, default=0.0)
        waits: list[float] = []
        for server in servers:
            kind = reasons.get(server.address, ("",))[0]
            if kind == RATE:
                waits.append(self.next_token(server, now))
            elif kind == DOWN:
                waits.append(server.backoff.blocked(now))
        return False, min(waits) if waits else None
