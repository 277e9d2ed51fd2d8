"""FaultProxy: a fault-injecting loopback TCP proxy for tests.

A ``FaultProxy`` listens on a loopback port and forwards every connection it
accepts to one upstream server. The test points its client (a gocp pool, or
any socket) at ``proxy.address`` and injects faults with control calls:
latency and jitter, a bandwidth limit, sliced writes, a cut after an exact
byte count, resets, a blackhole, a stall, slow closes, a refusing listener.
Everything runs in one background thread with an asyncio loop.

Vocabulary:

- A *direction* is ``"up"`` (client to server), ``"down"`` (server to
  client) or ``"both"``.
- Each connection forwards each direction in order: what one side sends is
  read in *chunks* (one ``recv`` each) and written to the other side. The
  faults are looked up again before every write, so a fault takes effect for
  every byte not yet forwarded, on current connections and new ones alike.
- The end of a side's stream is forwarded in order after its data: a FIN
  (the side closed or shut down writing) becomes a FIN to the other side
  (``shutdown(SHUT_WR)``), a reset or other socket error becomes an RST of
  both sides. A connection ends when both directions have forwarded their
  FIN, or at the first reset, cut or kill.
- Faults are entries of a table, each with a name: ``add_fault`` adds one
  (``Latency``, ``Slicer``, ``ResetPeer``...) aimed at a direction, at all,
  new or one connection, with a seeded probability per connection or per
  chunk; ``remove_fault`` removes one; ``heal`` removes all. The older calls
  (``set_latency``, ``blackhole``...) set one entry per direction under a
  reserved name.

Guarantees:

- Every call is thread-safe. Fault settings never wait for the proxy thread
  (they may be made before ``start`` and persist across ``stop``/``start``);
  actions (``reset``, ``kill_all``, ``refuse``, ``accept``, ``heal``) return
  or raise ``RuntimeError`` within 5 seconds, whatever the traffic: the
  proxy thread forwards one piece per connection per turn of its loop.
- The upstream address is resolved once, by ``start``; the proxy makes no
  DNS lookups while it runs.
- ``stop`` closes the listener and every connection, ends the thread and
  releases every descriptor before it returns.
- All randomness comes from ``random.Random`` streams seeded by ``seed``,
  the connection's place since the last ``start``, the direction and the
  fault's name: the same seed and the same traffic replay the same draws,
  also after a restart.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from types import TracebackType

from .._address import Address, format_address, parse_address
from . import _checks
from ._checks import Direction, Side
from ._engine import Engine
from ._events import KINDS, EventLog, ProxyEvent
from ._faults import (
    KINDS_BY_NAME,
    ActiveFault,
    Bandwidth,
    Blackhole,
    Entry,
    FaultKind,
    Latency,
    LimitData,
    Per,
    Slicer,
    SlowClose,
    Stall,
    Switchboard,
    Target,
)
from ._net import listen, resolve

__all__ = ["FaultProxy"]

_KIND_NAMES = ", ".join(kind.__name__ for kind in KINDS_BY_NAME.values())


def _named(name: str) -> Callable[[Entry], bool]:
    return lambda entry: entry.name == name


class FaultProxy:
    """A fault-injecting TCP proxy on loopback, for tests (see ``gocp.testing``).

    ``FaultProxy(upstream)`` forwards connections made to ``proxy.address``
    to ``upstream`` (``(host, port)`` or ``"host:port"``). ``start()`` (or
    ``with``) binds ``port`` on ``host`` (0, the default: an ephemeral port)
    and starts the proxy's thread; ``stop()`` (or ``close()``) ends it.
    ``seed`` seeds every random choice. ``connect_timeout`` bounds each
    upstream connect. The proxy connects upstream after accepting: when that
    fails, it resets the client's connection and logs ``"upstream_failed"``,
    so a client sees its connect succeed (or even fail, if the RST is quick)
    and then ``ConnectionResetError``, never a hang.

    Faults (``add_fault``, and ``set_latency``, ``set_bandwidth``,
    ``set_slice``, ``cut_after``, ``blackhole``, ``stall``, ``slow_close``)
    apply to current and new connections, to every byte not yet forwarded,
    until removed (``remove_fault``, or the same call with a zero or
    ``None`` value) or cleared by ``heal``. Their ``direction`` defaults to
    ``"both"``. Actions (``reset``, ``kill_all``, ``refuse``, ``accept``) act
    on the listener or on the connections open now, and raise
    ``RuntimeError`` when the proxy is not running.

    Every method is thread-safe; settings never block, actions return
    within 5 seconds (else raise ``RuntimeError``). Invalid arguments raise
    ``TypeError`` or ``ValueError`` naming the argument.
    """

    __module__ = "gocp.testing"

    def __init__(
        self,
        upstream: Address | str,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            self._upstream = parse_address(upstream)
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace("address:", "upstream:", 1)) from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__} {seed!r}")
        if not isinstance(host, str):
            raise TypeError(f"host: expected a str, got {type(host).__name__} {host!r}")
        if not host:
            raise ValueError("host: must not be empty")
        if _checks.count("port", port, minimum=0) > 65535:
            raise ValueError(f"port: must be <= 65535, got {port!r}")
        self._seed = seed
        self._host = host
        self._port = port
        self._connect_timeout = _checks.seconds("connect_timeout", connect_timeout, positive=True)
        self._board = Switchboard()
        self._log = EventLog()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()  # orders start, stop and actions
        self._engine: Engine | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen and start forwarding in a background thread; return ``self``.

        The first start binds ``port`` (an ephemeral one if 0); a start
        after ``stop`` binds the same port again. Does nothing if already
        running. Raises ``OSError`` if the port cannot be bound or
        ``upstream`` not resolved.
        """
        with self._lock:
            if self._engine is not None:
                return self
            upstream_sockaddr = resolve(self._upstream)
            listener = listen(self._host, self._port)
            self._port = listener.getsockname()[1]
            engine = Engine(
                address=(self._host, self._port),
                listener=listener,
                upstream=self._upstream,
                upstream_sockaddr=upstream_sockaddr,
                connect_timeout=self._connect_timeout,
                seed=self._seed,
                board=self._board,
                log=self._log,
                ids=self._ids,
            )
            engine.start()
            self._engine = engine
        return self

    def stop(self, *, reset: bool = False) -> None:
        """Close the listener and every connection (RST if ``reset``, else FIN); end the thread.

        When it returns, no thread and no descriptor of the proxy is left.
        Faults and the event log are kept, and ``start`` may be called
        again. Idempotent.
        """
        rst = _checks.flag("reset", reset)
        with self._lock:
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.stop(reset=rst)

    def close(self, *, reset: bool = False) -> None:
        """The same as ``stop`` (the test servers have ``close`` too)."""
        self.stop(reset=reset)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observing ----------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """``(host, port)`` to connect to; the same across ``refuse``/``accept`` and restarts.

        Raises ``RuntimeError`` before the first ``start`` if ``port`` was 0.
        """
        if self._port == 0:
            raise RuntimeError("FaultProxy: no address before start()")
        return self._host, self._port

    @property
    def address_text(self) -> str:
        """``address`` as ``"host:port"`` (``"[v6]:port"`` for IPv6)."""
        return format_address(self.address)

    @property
    def upstream(self) -> Address:
        """The ``(host, port)`` every connection is forwarded to."""
        return self._upstream

    @property
    def running(self) -> bool:
        """Whether the proxy thread runs (between ``start`` and ``stop``)."""
        return self._engine is not None

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed (both sides)."""
        return self._log.connections

    @property
    def events(self) -> list[ProxyEvent]:
        """A copy of the event log, oldest first (the last 10,000 events; see ``ProxyEvent``)."""
        return self._log.snapshot()

    @property
    def faults(self) -> tuple[ActiveFault, ...]:
        """The faults in force, in the order they were added (see ``ActiveFault``)."""
        return tuple(entry.public for entry in self._board.table.entries)

    def mark(self) -> int:
        """The ``seq`` of the latest event: pass it as ``wait_for_event(..., after=)``
        to wait only for what happens from now on."""
        return self._log.seq

    def wait_for_event(
        self, what: str, *, conn: int | None = None, after: int = 0, timeout: float = 5.0
    ) -> ProxyEvent:
        """The first logged event of kind ``what`` (of connection ``conn`` if given) whose
        ``seq`` is greater than ``after``.

        Looks at the kept log first (by default all of it, which survives
        ``stop``/``start``; ``after=proxy.mark()`` skips what happened
        before), then waits up to ``timeout`` seconds for one to happen.
        Raises ``TimeoutError`` if none does, and ``ValueError`` at once if
        ``what`` is not a kind of event (see ``ProxyEvent``).
        """
        if what not in KINDS:
            raise ValueError(f"what: not a kind of event: {what!r} (kinds: {sorted(KINDS)})")
        if conn is not None:
            _checks.count("conn", conn, minimum=0)
        _checks.count("after", after, minimum=0)
        timeout = _checks.seconds("timeout", timeout)
        found = self._log.wait_for(
            lambda e: e.what == what and (conn is None or e.conn == conn),
            after=after,
            timeout=timeout,
        )
        if found is None:
            recent = ", ".join(f"{e.conn}:{e.what}" for e in self.events[-10:])
            whose = "" if conn is None else f" of connection {conn}"
            raise TimeoutError(
                f"no {what!r} event{whose} after seq {after} within {timeout}s "
                f"(last events: {recent})"
            )
        return found

    def __repr__(self) -> str:
        where = format_address((self._host, self._port)) if self._port else "unbound"
        state = "running" if self.running else "stopped"
        return (
            f"<gocp.testing.FaultProxy {where} -> {format_address(self._upstream)} "
            f"{state} connections={self.connections} faults={len(self._board.table.entries)}>"
        )

    # -- the fault table ------------------------------------------------------------------

    def add_fault(
        self,
        fault: FaultKind,
        *,
        name: str | None = None,
        direction: Direction = "both",
        conn: Target = "all",
        probability: float = 1.0,
        per: Per = "connection",
    ) -> str:
        """Add ``fault`` to the faults in force, on top of the others; return its name.

        - ``name``: to remove it later (``remove_fault``); a fault of the same
          name is replaced. Default: ``"<kind>-<n>"``, e.g. ``"latency-1"``.
        - ``direction``: ``"up"``, ``"down"`` or ``"both"``.
        - ``conn``: ``"all"`` (open and new connections), ``"new"`` (only
          connections accepted after this call, e.g. ``ResetPeer`` for every
          new connection) or a connection id (``ProxyEvent.conn``).
        - ``probability``: the fraction of connections (``per="connection"``,
          one draw per connection) or of chunks (``per="chunk"``, one draw per
          chunk; for ``Latency``, ``Bandwidth``, ``Slicer`` and
          ``Blackhole``) it applies to. Draws are seeded (see the class).

        Stacked faults of one kind combine as if chained: latencies and slow
        closes add up, the lowest bandwidth and the smallest slicer apply,
        each ``LimitData`` counts on its own, any blackhole, stall or
        timeout applies. Never blocks: it applies to every write that starts
        after it returns.
        """
        if not isinstance(fault, tuple(KINDS_BY_NAME.values())):
            raise TypeError(
                f"fault: expected one of {_KIND_NAMES}, got {type(fault).__name__} {fault!r}"
            )
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name: expected a str or None, got {type(name).__name__} {name!r}")
            if not name or name != name.strip():
                raise ValueError(f"name: must be non-empty, without surrounding spaces: {name!r}")
        sides = _checks.sides(direction)
        if conn not in ("all", "new"):
            _checks.count("conn", conn, minimum=1)
        chance = _checks.probability("probability", probability)
        if per not in ("connection", "chunk"):
            raise ValueError(f"per: must be 'connection' or 'chunk', got {per!r}")
        if per == "chunk" and not fault.per_chunk:
            raise ValueError(
                f"per: 'chunk' does not apply to {type(fault).__name__}, which acts on a "
                "whole stream or connection (use per='connection')"
            )
        return self._board.add(
            fault,
            name=name,
            sides=sides,
            direction=direction,
            conn=conn,
            probability=chance,
            per=per,
        )

    def remove_fault(self, name: str) -> None:
        """Remove the fault named ``name``: data it holds is forwarded at once.

        Raises ``ValueError`` if no fault has that name.
        """
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__} {name!r}")
        if not self._board.remove(_named(name)):
            names = [entry.name for entry in self._board.table.entries]
            raise ValueError(f"name: no fault named {name!r} (in force: {names})")

    def _set(self, call: str, fault: FaultKind | None, sides: tuple[Side, ...]) -> None:
        """The ``set_*``-style calls: one entry per side, named ``"<call>:<side>"``."""
        for side in sides:
            name = f"{call}:{side}"
            if fault is None:
                self._board.remove(_named(name))
            else:
                self._board.add(
                    fault,
                    name=name,
                    sides=(side,),
                    direction=side,
                    conn="all",
                    probability=1.0,
                    per="connection",
                )

    def set_latency(
        self, seconds: float, jitter: float = 0.0, direction: Direction = "both"
    ) -> None:
        """Hold each chunk ``seconds + uniform(0, jitter)`` after it was read, then forward it.

        At least ``seconds``, at most ``seconds + jitter``: the same as
        ``add_fault(Latency(seconds + jitter / 2, jitter=jitter / 2))`` (whose
        jitter is around the mean) per direction, named
        ``"set_latency:up"``/``"set_latency:down"``. Order is preserved: a
        chunk is never forwarded before the one read before it.
        ``set_latency(0)`` removes the delay.
        """
        delay = _checks.seconds("seconds", seconds)
        spread = _checks.seconds("jitter", jitter)
        sides = _checks.sides(direction)
        fault = Latency(delay + spread / 2, jitter=spread / 2) if delay or spread else None
        self._set("set_latency", fault, sides)

    def set_bandwidth(self, bytes_per_second: float | None, direction: Direction = "both") -> None:
        """Forward at most ``bytes_per_second`` per connection and direction (``None``: no limit).

        ``Bandwidth(bytes_per_second)`` per direction, named ``"set_bandwidth:<side>"``.
        """
        limit = (
            None if bytes_per_second is None else _checks.rate("bytes_per_second", bytes_per_second)
        )
        sides = _checks.sides(direction)
        self._set("set_bandwidth", None if limit is None else Bandwidth(limit), sides)

    def set_slice(self, max_bytes: int | None, direction: Direction = "both") -> None:
        """Forward each chunk in writes of at most ``max_bytes`` (``None``: whole chunks).

        ``Slicer(max_bytes)`` per direction, named ``"set_slice:<side>"``:
        each write is a separate ``send`` with ``TCP_NODELAY``, so the peer
        sees the stream in small segments (short reads, split messages).
        """
        size = None if max_bytes is None else _checks.count("max_bytes", max_bytes, minimum=1)
        sides = _checks.sides(direction)
        self._set("set_slice", None if size is None else Slicer(size), sides)

    def cut_after(self, nbytes: int | None, direction: Direction = "both") -> None:
        """Close a connection once exactly ``nbytes`` more bytes went through in ``direction``.

        Counted per connection and direction: from now for current
        connections, from the start for new ones. When the count is reached
        the rest of that chunk is discarded and both sides get a FIN
        (nothing more is forwarded either way; a ``"cut"`` event is logged).
        ``nbytes=0`` cuts current connections now and new ones at once;
        ``None`` removes the cut. ``LimitData(nbytes)`` per direction, named
        ``"cut_after:<side>"``. The direction defaults to ``"both"``, as for
        every fault (it used to be ``"up"``).
        """
        budget = None if nbytes is None else _checks.count("nbytes", nbytes, minimum=0)
        sides = _checks.sides(direction)
        self._set("cut_after", None if budget is None else LimitData(budget), sides)

    def blackhole(self, direction: Direction = "both", *, enabled: bool = True) -> None:
        """Read and discard everything in ``direction``; keep both sockets open.

        Data already read but not yet forwarded is discarded too. A side's
        FIN or reset is not passed on while blackholed (it is held, and
        passed on after ``heal``). ``enabled=False`` ends the blackhole.
        ``Blackhole()`` per direction, named ``"blackhole:<side>"``.
        """
        on = _checks.flag("enabled", enabled)
        self._set("blackhole", Blackhole() if on else None, _checks.sides(direction))

    def stall(self, direction: Direction = "both", *, enabled: bool = True) -> None:
        """Stop reading and forwarding in ``direction``; the sender's buffers fill up.

        Nothing is lost: what was read is held, and everything flows again
        after ``heal`` (or ``stall(direction, enabled=False)``). ``Stall()``
        per direction, named ``"stall:<side>"``.
        """
        on = _checks.flag("enabled", enabled)
        self._set("stall", Stall() if on else None, _checks.sides(direction))

    def slow_close(self, seconds: float, direction: Direction = "both") -> None:
        """When a side closes (FIN), wait ``seconds`` before passing the FIN on.

        ``direction`` is the way the FIN goes (``"up"``: the client's FIN to
        the server). ``slow_close(0)`` passes it on at once (the default).
        ``SlowClose(seconds)`` per direction, named ``"slow_close:<side>"``.
        """
        delay = _checks.seconds("seconds", seconds)
        sides = _checks.sides(direction)
        self._set("slow_close", SlowClose(delay) if delay else None, sides)

    def heal(self) -> None:
        """Remove every fault (the ``set_*`` ones and those of ``add_fault``).

        Also cancels ``reset(after=...)`` calls that have not fired yet. Data
        held by a fault is forwarded at once. Does not change the listener:
        after ``refuse``, the port stays closed until ``accept``. Does not
        bring back closed connections.
        """
        self._board.remove(lambda _entry: True)
        with self._lock:
            engine = self._engine
            if engine is not None:
                engine.call(engine.cancel_timers)

    # -- actions --------------------------------------------------------------------------

    def reset(self, after: float = 0.0) -> None:
        """Reset (RST, ``SO_LINGER`` 0) both sides of every open connection.

        With ``after == 0`` it returns once they are closed; otherwise it
        returns at once and resets the connections open ``after`` seconds
        later (``heal`` and ``stop`` cancel it). To reset chosen or future
        connections, use ``add_fault(ResetPeer(...), conn=...)``. Raises
        ``RuntimeError`` when the proxy is not running.
        """
        delay = _checks.seconds("after", after)
        with self._lock:
            engine = self._running_engine("reset")
            engine.call(lambda: engine.reset(delay))

    def kill_all(self, reset: bool = False) -> None:
        """Close every open connection, both sides, with FIN (RST if ``reset``).

        Returns once they are closed; the listener keeps accepting. Raises
        ``RuntimeError`` when the proxy is not running.
        """
        rst = _checks.flag("reset", reset)
        with self._lock:
            engine = self._running_engine("kill_all")
            engine.call(lambda: engine.kill(reset=rst, reason="kill_all()"))

    def refuse(self) -> None:
        """Close the listener: new connections are refused (``ECONNREFUSED``).

        Open connections live on. The port stays closed until ``accept``
        (``heal`` does not reopen it). Raises ``RuntimeError`` when the proxy
        is not running.
        """
        with self._lock:
            engine = self._running_engine("refuse")
            engine.call(engine.refuse)

    def accept(self) -> None:
        """Listen again, on the same port, after ``refuse``; does nothing if listening.

        Raises ``OSError`` if the port was taken meanwhile and ``RuntimeError``
        when the proxy is not running.
        """
        with self._lock:
            engine = self._running_engine("accept")
            engine.call(engine.listen)

    def _running_engine(self, call: str) -> Engine:
        engine = self._engine
        if engine is None:
            raise RuntimeError(f"FaultProxy.{call}(): the proxy is not running (call start())")
        return engine
