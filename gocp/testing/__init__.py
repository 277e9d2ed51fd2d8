"""gocp.testing: loopback servers and fault injection for tests of code that uses gocp."""

from ._clock import FakeClock
from ._proxy import FaultProxy, ProxyEvent, no_backoff
from ._servers import EchoServer, RequestReplyServer

__all__ = [
    "EchoServer",
    "FakeClock",
    "FaultProxy",
    "ProxyEvent",
    "RequestReplyServer",
    "no_backoff",
]
