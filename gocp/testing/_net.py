"""Socket helpers of the fault proxy: listen, resolve once, close with FIN or RST."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Final

from .._address import Address, format_address
from ._servers import close_socket

__all__ = ["close_gently", "close_socket", "describe", "listen", "nodelay", "peer_text", "resolve"]

_DRAIN_READS: Final = 64  # reads of unread input before a gentle close (avoids an RST)
_DRAIN_CHUNK: Final = 65536


def describe(exc: BaseException) -> str:
    """``"ConnectionResetError: [Errno 104] ..."``, or the bare type name."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listener on ``(host, port)``, re-bindable while old connections live."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def resolve(address: Address) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address to connect to, resolved once (no lookups in the loop)."""
    host, port = address
    family, _kind, _proto, _name, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )[0]
    return family, sockaddr


def nodelay(sock: socket.socket) -> None:
    """Turn on ``TCP_NODELAY`` (each write goes out as its own segment)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def finish_gently(sock: socket.socket) -> None:
    """Send a FIN and read what is unread, so that the coming close sends no RST.

    Closing a socket with unread input would send an RST instead of the FIN.
    ``sock`` must be non-blocking.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    for _ in range(_DRAIN_READS):
        try:
            if not sock.recv(_DRAIN_CHUNK):
                break
        except OSError:  # BlockingIOError: drained; others: nothing more to read
            break


def close_gently(sock: socket.socket) -> None:
    """Close a non-blocking socket so that the peer gets a FIN (``finish_gently``, close)."""
    finish_gently(sock)
    sock.close()


def peer_text(sock: socket.socket) -> str:
    """The peer's address as ``"host:port"``, or ``"?"``."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return format_address((host, port))
