"""The event log of a FaultProxy: what it did, in order, and a way to wait for it."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = ["KINDS", "EventLog", "ProxyEvent"]

EVENTS_KEPT: Final = 10_000

KINDS: Final = frozenset(
    {
        "listen",
        "refuse",
        "stop",
        "error",
        "accept",
        "connect",
        "upstream_failed",
        "delay",
        "slice",
        "drop",
        "cut",
        "eof",
        "close",
        "reset",
    }
)
"""Every kind of ``ProxyEvent.what``."""


@attrs.frozen
class ProxyEvent:
    """One thing a ``FaultProxy`` did, as listed by ``FaultProxy.events``.

    - ``time``: ``time.monotonic()`` when it happened.
    - ``conn``: the connection's id (1, 2, ... in accept order, never reused
      by one proxy, also across ``stop``/``start``), or 0 for the proxy itself.
    - ``what``: the kind of event (below); ``detail``: a readable sentence.
    - ``direction``: ``"up"`` or ``"down"`` for events of one direction, else ``""``.
    - ``nbytes``, ``seconds``, ``pieces``: numbers for the events that have them.
    - ``seq``: the event's place in the proxy's log (1, 2, ..., never reused);
      ``FaultProxy.mark()`` returns the latest, and
      ``wait_for_event(..., after=mark)`` looks only at later events.

    Kinds, for the proxy (``conn == 0``): ``"listen"`` (listening on
    ``address``), ``"refuse"`` (listener closed by ``refuse``), ``"stop"``,
    ``"error"`` (an unexpected failure inside the proxy, such as running out
    of descriptors, or a bug; a test should see none).
    For a connection: ``"accept"``; ``"connect"`` (upstream connected);
    ``"upstream_failed"`` (connecting upstream failed; a ``"reset"`` follows);
    ``"delay"`` (a chunk of ``nbytes`` was held ``seconds`` by latency and
    jitter); ``"slice"`` (a chunk of ``nbytes`` was written in ``pieces``
    writes, by a slicer or a bandwidth limit); ``"drop"`` (``nbytes``
    discarded by a blackhole or a ``Timeout``); ``"cut"`` (``cut_after`` or
    ``LimitData`` fired; ``nbytes`` were forwarded since the count began);
    ``"eof"`` (a FIN was forwarded in ``direction``). Every connection's last
    event is exactly one ``"close"`` (both sides closed with FIN) or
    ``"reset"`` (both sides closed with RST), logged once its sockets are closed
    and ``connections`` no longer counts it; its ``detail`` says why. An event
    is logged once the thing is done: ``"delay"`` when the chunk is released,
    ``"slice"`` after its last write, ``"cut"`` before the sockets close.
    """

    __module__ = "gocp.testing"

    time: float
    conn: int
    what: str
    detail: str = ""
    direction: str = ""
    nbytes: int = 0
    seconds: float = 0.0
    pieces: int = 0
    seq: int = 0


class EventLog:
    """The last ``EVENTS_KEPT`` events and the connection count; shared by all threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[ProxyEvent] = deque(maxlen=EVENTS_KEPT)
        self._seq = 0  # the seq of the latest event
        self.connections = 0

    def add(
        self, conn: int, what: str, detail: str = "", *, opened: int = 0, **numbers: Any
    ) -> None:
        """Log an event; ``opened`` (+1, -1) changes the connection count in the same step."""
        with self._cond:
            self._seq += 1
            self.connections += opened
            self._events.append(
                ProxyEvent(time.monotonic(), conn, what, detail, seq=self._seq, **numbers)
            )
            self._cond.notify_all()

    @property
    def seq(self) -> int:
        """The seq of the latest event (0 before the first)."""
        with self._cond:
            return self._seq

    def snapshot(self) -> list[ProxyEvent]:
        """The events kept, oldest first."""
        with self._cond:
            return list(self._events)

    def wait_for(
        self, predicate: Callable[[ProxyEvent], bool], *, after: int, timeout: float
    ) -> ProxyEvent | None:
        """The first kept event with ``seq > after`` that ``predicate`` accepts, waiting up
        to ``timeout`` seconds for one to be logged; ``None`` if none is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                # The log only grows at its end: look at what is new since the last look,
                # by seq (the deque's length stops growing at its cap, the seqs never stop).
                new = max(0, min(len(self._events), self._seq - after))
                for event in reversed(list(itertools.islice(reversed(self._events), new))):
                    if predicate(event):
                        return event
                after = max(after, self._seq)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
