"""The faults a FaultProxy can inject, and the table of the faults in force.

A fault *kind* (``Latency``, ``Slicer``, ``ResetPeer``...) says what to do; a
table *entry* adds where and how often: its name, its direction, which
connections (all, new ones, one id) and a seeded probability per connection
or per chunk. The table is immutable: a control call builds a new one and
swaps it in whole, so the proxy thread always sees a consistent set.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Literal, TypeAlias

import attrs

from . import _checks
from ._checks import Direction, Side

__all__ = [
    "KINDS_BY_NAME",
    "ActiveFault",
    "Bandwidth",
    "Blackhole",
    "Entry",
    "FaultKind",
    "FaultTable",
    "Latency",
    "LimitData",
    "Per",
    "ResetPeer",
    "Slicer",
    "SlowClose",
    "Stall",
    "Switchboard",
    "Target",
    "Timeout",
]

Per: TypeAlias = Literal["connection", "chunk"]
Target: TypeAlias = Literal["all", "new"] | int


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _checks.seconds(attribute.name, value)


def _rate(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _checks.rate(attribute.name, value)


def _size(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    _checks.count(attribute.name, value, minimum=1)


def _budget(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    _checks.count(attribute.name, value, minimum=0)


class _Kind:
    """What every fault kind declares (class attributes, not fields)."""

    kind: ClassVar[str]  # its name in the command line's control API
    per_chunk: ClassVar[bool] = False  # may be drawn per chunk (``per="chunk"``)
    whole_connection: ClassVar[bool] = False  # acts on the connection, not a direction


@attrs.frozen
class Latency(_Kind):
    """Hold each chunk ``seconds`` plus or minus ``jitter`` (uniform, never below 0).

    The jitter draw is seeded per connection, direction and fault. Order is
    kept: a chunk is never forwarded before the one read before it, so a
    long delay also holds the chunks behind it. Stacked latencies add up.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "latency"
    per_chunk: ClassVar[bool] = True

    seconds: float = attrs.field(validator=_seconds)
    jitter: float = attrs.field(default=0.0, kw_only=True, validator=_seconds)


@attrs.frozen
class Bandwidth(_Kind):
    """Forward at most ``bytes_per_second``, per connection and direction.

    Writes are paced in pieces of at most 20 ms' worth of bytes; a write
    that starts late is made up for (up to 20 ms' worth), so the average
    rate holds at high rates too. Stacked limits: the lowest applies.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "bandwidth"
    per_chunk: ClassVar[bool] = True

    bytes_per_second: float = attrs.field(validator=_rate)


@attrs.frozen
class Slicer(_Kind):
    """Forward each chunk in separate writes of ``average_size`` bytes, each size drawn
    uniformly within ``size_variation`` of it, with ``delay`` seconds between writes.

    Each write is one ``send`` with ``TCP_NODELAY`` made once the previous one
    is in the kernel, so the peer sees short reads and split messages.
    Stacked slicers: the smallest ``average_size`` applies.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "slicer"
    per_chunk: ClassVar[bool] = True

    average_size: int = attrs.field(validator=_size)
    size_variation: int = attrs.field(default=0, kw_only=True, validator=_budget)
    delay: float = attrs.field(default=0.0, kw_only=True, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        if self.size_variation >= self.average_size:
            raise ValueError(
                f"size_variation: must be < average_size ({self.average_size}), "
                f"got {self.size_variation!r}"
            )


@attrs.frozen
class LimitData(_Kind):
    """Close a connection once exactly ``nbytes`` went through in the fault's direction.

    Counted per connection and direction, from when the fault applies: from
    the call for open connections, from the start for new ones. Then the
    rest of that chunk is discarded and both sides get a FIN (a ``"cut"``
    event is logged). ``nbytes=0`` cuts at once. Stacked limits count apart.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "limit_data"

    nbytes: int = attrs.field(validator=_budget)


@attrs.frozen
class Blackhole(_Kind):
    """Read and discard everything in the fault's direction; keep both sockets open.

    Data already read but not yet forwarded is discarded too (``"drop"``
    events). A side's FIN or reset is held, not passed on, until the fault
    is removed.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "blackhole"
    per_chunk: ClassVar[bool] = True


@attrs.frozen
class Stall(_Kind):
    """Stop reading and forwarding in the fault's direction: the sender's buffers fill up.

    Nothing is lost: what was read is held, and everything flows again once
    the fault is removed.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "stall"


@attrs.frozen
class SlowClose(_Kind):
    """When a side closes (FIN), wait ``seconds`` before passing the FIN on.

    Applies to the FIN going in the fault's direction. Stacked delays add up.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "slow_close"

    seconds: float = attrs.field(validator=_seconds)


@attrs.frozen
class ResetPeer(_Kind):
    """Reset (RST) both sides of a connection ``after`` seconds after the fault applies to it.

    From the call for open connections, from the accept for new ones; with
    ``after=0`` a new connection is reset right after its accept, before
    the upstream is dialled. Acts on whole connections (its direction does
    not matter).
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "reset_peer"
    whole_connection: ClassVar[bool] = True

    after: float = attrs.field(default=0.0, validator=_seconds)


@attrs.frozen
class Timeout(_Kind):
    """Discard everything in the fault's direction, then close the connection (FIN on both
    sides) ``after`` seconds after the fault applies to it (``after=0``: never close).

    Like toxiproxy's ``timeout``: a peer that goes silent, then hangs up.
    """

    __module__ = "gocp.testing"
    kind: ClassVar[str] = "timeout"

    after: float = attrs.field(default=0.0, validator=_seconds)


FaultKind: TypeAlias = (
    Latency | Bandwidth | Slicer | LimitData | Blackhole | Stall | SlowClose | ResetPeer | Timeout
)
"""Any fault kind ``FaultProxy.add_fault`` takes."""

KINDS_BY_NAME: dict[str, type[FaultKind]] = {
    kind.kind: kind
    for kind in (
        Latency,
        Bandwidth,
        Slicer,
        LimitData,
        Blackhole,
        Stall,
        SlowClose,
        ResetPeer,
        Timeout,
    )
}


@attrs.frozen
class ActiveFault:
    """A fault in force on a ``FaultProxy``, as listed by ``FaultProxy.faults``.

    - ``name``: how ``remove_fault`` finds it; the ``set_*``-style calls
      (``set_latency``, ``blackhole``...) keep theirs under reserved names
      such as ``"set_latency:up"``.
    - ``fault``: the kind and its parameters (``Latency(0.1)``...).
    - ``direction``: ``"up"``, ``"down"`` or ``"both"``.
    - ``conn``: the connections it applies to: ``"all"`` (open and new),
      ``"new"`` (accepted after it was added) or one connection id.
    - ``probability`` and ``per``: it applies to that fraction of the
      connections (``per="connection"``) or of the chunks (``per="chunk"``),
      by seeded draws.
    - ``added``: ``time.monotonic()`` when it was added.
    """

    __module__ = "gocp.testing"

    name: str
    fault: FaultKind
    direction: Direction
    conn: Target
    probability: float
    per: Per
    added: float


@attrs.frozen(eq=False)
class Entry:
    """An ``ActiveFault`` as the proxy thread uses it (compared by identity: a fault
    replaced under the same name is a new entry with new counters)."""

    public: ActiveFault
    sides: tuple[Side, ...]
    first_id: int  # the lowest connection id it applies to (for conn="new")

    @property
    def name(self) -> str:
        return self.public.name

    @property
    def fault(self) -> FaultKind:
        return self.public.fault

    def targets(self, conn_id: int) -> bool:
        """Whether this entry aims at connection ``conn_id`` (before any probability)."""
        target = self.public.conn
        if target == "all":
            return True
        if target == "new":
            return conn_id >= self.first_id
        return conn_id == target


@attrs.frozen
class FaultTable:
    """The faults in force, in the order they were added; immutable."""

    entries: tuple[Entry, ...] = ()

    def find(self, name: str) -> Entry | None:
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None

    def put(self, entry: Entry) -> FaultTable:
        """A table with ``entry`` added, replacing (in place) an entry of the same name."""
        names = [e.name for e in self.entries]
        if entry.name in names:
            index = names.index(entry.name)
            return FaultTable((*self.entries[:index], entry, *self.entries[index + 1 :]))
        return FaultTable((*self.entries, entry))

    def without(self, drop: Callable[[Entry], bool]) -> FaultTable:
        return FaultTable(tuple(e for e in self.entries if not drop(e)))


EMPTY = FaultTable()


class Switchboard:
    """The fault table of one proxy, shared by the caller's threads and the proxy thread.

    Writers hold the lock and swap ``table`` whole; the proxy thread reads
    ``table`` without the lock (one attribute read) and is told of changes
    through ``on_change`` (set while the proxy runs).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.table = EMPTY
        self.on_change: Callable[[], None] | None = None
        self.last_id = 0  # the latest connection id given out (written by the proxy thread)
        self._numbers: dict[str, itertools.count[int]] = {}  # per kind, for default names

    def add(
        self,
        fault: FaultKind,
        *,
        name: str | None,
        sides: tuple[Side, ...],
        direction: Direction,
        conn: Target,
        probability: float,
        per: Per,
    ) -> str:
        """Put a fault in the table (replacing one of the same name); return its name."""
        with self._lock:
            if name is None:
                numbers = self._numbers.setdefault(fault.kind, itertools.count(1))
                name = f"{fault.kind}-{next(numbers)}"
                while self.table.find(name) is not None:
                    name = f"{fault.kind}-{next(numbers)}"
            public = ActiveFault(name, fault, direction, conn, probability, per, time.monotonic())
            self.table = self.table.put(Entry(public, sides, self.last_id + 1))
        self._changed()
        return name

    def remove(self, drop: Callable[[Entry], bool]) -> int:
        """Remove the entries ``drop`` accepts; return how many."""
        with self._lock:
            before = len(self.table.entries)
            self.table = self.table.without(drop)
            removed = before - len(self.table.entries)
        if removed:
            self._changed()
        return removed

    def _changed(self) -> None:
        notify = self.on_change
        if notify is not None:
            notify()
