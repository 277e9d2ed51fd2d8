"""The exception hierarchy: one root, each error also the built-in a caller would catch."""

from __future__ import annotations

__all__ = [
    "ClusterUnavailable",
    "ConnectionBroken",
    "DialError",
    "Error",
    "IOTimeout",
    "PoolClosed",
    "PoolTimeout",
    "describe",
]


def describe(exc: BaseException | None) -> str:
    """``"Type: message"`` (or ``"Type"``) for errors and log lines; ``"none"`` for None."""
    if exc is None:
        return "none"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Error(Exception):
    """Root of every error gocp raises on purpose."""

    __module__ = "gocp"


class ConnectionBroken(Error, ConnectionError):
    """The connection failed during I/O, or the peer closed it.

    The operation that raised it is never re-sent by gocp: bytes may have
    reached the server. The member has dropped its socket and redials before
    its next operation. ``__cause__`` is the original ``OSError`` where there
    is one; ``address`` names the server.
    """

    __module__ = "gocp"

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class IOTimeout(ConnectionBroken, TimeoutError):
    """An I/O wait ran past ``io_timeout``: the stream is in an unknown state, so it was dropped."""

    __module__ = "gocp"


class DialError(Error, ConnectionError):
    """Connecting to the server failed, or the server is in its backoff window.

    ``retry_in`` is the number of seconds before the next attempt will be
    made (0.0 when the next operation dials at once). Nothing was sent.
    """

    __module__ = "gocp"

    def __init__(self, message: str, *, address: str, retry_in: float) -> None:
        super().__init__(message)
        self.address = address
        self.retry_in = retry_in


class ClusterUnavailable(DialError):
    """Every server of a cluster is down (or it has none): raised by ``get`` at once.

    ``reasons`` maps each server's address to why it is down; ``retry_in``
    is the seconds until the first server's backoff ends (a get then tries
    it). Nothing was sent.
    """

    __module__ = "gocp"

    def __init__(
        self, message: str, *, address: str, retry_in: float, reasons: dict[str, str]
    ) -> None:
        super().__init__(message, address=address, retry_in=retry_in)
        self.reasons = reasons


class PoolTimeout(Error, TimeoutError):
    """``Pool.get`` waited ``timeout`` seconds and no member became free."""

    __module__ = "gocp"

    def __init__(self, message: str, *, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


class PoolClosed(Error):
    """The pool was closed (by the application, not by the peer)."""

    __module__ = "gocp"
