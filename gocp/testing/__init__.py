"""gocp.testing: loopback servers and fault injection for tests of code that uses gocp."""

from ._servers import EchoServer, RequestReplyServer

__all__ = ["EchoServer", "RequestReplyServer"]
