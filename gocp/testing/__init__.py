"""gocp.testing: loopback servers and fault injection for tests of code that uses gocp.

``FaultProxy`` breaks the traffic between a client and a server on command;
the fault kinds (``Latency``, ``Slicer``, ``ResetPeer``...) go to its
``add_fault``. ``python -m gocp.testing proxy --listen ... --upstream ...``
runs one in its own process, controlled over HTTP on loopback.
"""

from ._clock import FakeClock
from ._events import ProxyEvent
from ._faults import (
    ActiveFault,
    Bandwidth,
    Blackhole,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Timeout,
)
from ._no_backoff import no_backoff
from ._proxy import FaultProxy
from ._servers import EchoServer, RequestReplyServer

__all__ = [
    "ActiveFault",
    "Bandwidth",
    "Blackhole",
    "EchoServer",
    "FakeClock",
    "FaultProxy",
    "Latency",
    "LimitData",
    "ProxyEvent",
    "RequestReplyServer",
    "ResetPeer",
    "Slicer",
    "SlowClose",
    "Stall",
    "Timeout",
    "no_backoff",
]
