"""The connector of a socket pool: connect, configure, probe and close TCP (and TLS) sockets."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._address import Address, format_address
from ._config import Options
from ._dial import connect, handshake

if TYPE_CHECKING:
    from ._core import Slot

__all__ = ["SocketConnector"]

Socket = socket.socket

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_ESTABLISHED = b"\x01"  # tcpi_state, the first byte of Linux's struct tcp_info
_IPPROTO_TCP = socket.IPPROTO_TCP
_KEEPALIVE_OPTS = [
    name for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT") if hasattr(socket, name)
]
_NO_LINGER = b"\x00" * 8  # struct linger {l_onoff = 0, l_linger = 0}

# The plain socket's own methods, which act on the descriptor under a TLS socket: a peek at
# the raw TLS records, and a shutdown that leaves the TLS session in place (SSLSocket's own
# shutdown drops it first, so a racing send would go out unencrypted until the shutdown).
_raw_recv = socket.socket.recv
_raw_shutdown = socket.socket.shutdown
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_TLS_HANDSHAKE_RECORD = 22  # TLS record content type (RFC 8446 B.1): handshake


def _stale_by_poll(sock: Socket) -> bool:
    """True if the peer closed or reset ``sock`` (or it failed) while it sat idle,
    where Linux's TCP_INFO is missing: poll without waiting (any readable event means
    EOF, an error, or unsolicited bytes: all unsafe to send after). Over TLS, bytes waiting
    are TLS records, and not every record is data: see ``_tls_records_stale``."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        readable = bool(poller.poll(0))
    else:  # pragma: no cover - Windows
        ready, _, errored = select.select([sock], [], [sock], 0)
        readable = bool(ready or errored)
    if readable and isinstance(sock, ssl.SSLSocket):
        return _tls_records_stale(sock)
    return readable


def _tls_records_stale(sock: ssl.SSLSocket) -> bool:
    """Whether the records waiting on an idle TLS socket make it unsafe to send on.

    A peek (no byte is consumed, the TLS session is untouched, nothing waits) at the raw
    records: end of stream or an error is stale. A TLS 1.2 handshake record (a renegotiation
    request) is not. Anything else is taken as stale: in TLS 1.2 an alert (``close_notify``)
    or unsolicited data; in TLS 1.3 every record after the handshake looks the same from
    outside (``application_data``), whether it is a session ticket, a ``close_notify`` or
    data, and a ``close_notify`` followed by the peer's FIN cannot be told from a ticket
    without decrypting. A wrong guess costs one redial, never a request.
    """
    try:
        head = _raw_recv(sock, 1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return False  # readable a moment ago, nothing now: nothing happened
    except OSError:
        return True
    if not head:
        return True
    return not (head[0] == _TLS_HANDSHAKE_RECORD and sock.version() != "TLSv1.3")


def stale(sock: Socket) -> bool:
    """Whether an idle socket is no longer usable: the peer closed or reset it (a server
    restart) or it failed. On Linux this reads the TCP state (``getsockopt(TCP_INFO)``,
    which keeps the interpreter lock, unlike ``poll``); elsewhere it polls without
    waiting. It does not see unread bytes on Linux (see the README).

    The same holds over TLS: a server that ends a TLS connection sends ``close_notify``
    and closes, and the TCP state shows the close. The probe never reads through the TLS
    layer (another thread may be about to use the socket), so unread TLS 1.3 session
    tickets are no reason to redial.
    """
    if _TCP_INFO is not None:
        try:
            return sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, 1) != _ESTABLISHED
        except OSError:
            return True
    return _stale_by_poll(sock)


def set_options(sock: Any, *, nodelay: bool, keepalive: float | None) -> None:
    """``TCP_NODELAY`` when ``nodelay``; TCP keepalive after ``keepalive`` seconds of
    silence (then 3 probes ``keepalive // 3`` apart), or none. (Either shell's socket.)"""
    if nodelay:
        sock.setsockopt(_IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = int(keepalive)
        values = {"TCP_KEEPIDLE": idle, "TCP_KEEPINTVL": max(1, idle // 3), "TCP_KEEPCNT": 3}
        for name in _KEEPALIVE_OPTS:
            sock.setsockopt(_IPPROTO_TCP, getattr(socket, name), values[name])


class SocketConnector:
    """Makes, configures, probes and closes the TCP sockets of one address.

    Every socket gets ``TCP_NODELAY`` (``nodelay``), TCP keepalive
    (``keepalive`` seconds of silence, then 3 probes ``keepalive // 3`` apart)
    and ``io_timeout`` as an ordinary Python socket timeout. With ``ssl`` (an
    ``ssl.SSLContext``) each socket is an ``ssl.SSLSocket``, its handshake done
    within the dial's deadline, for ``server_hostname`` (``Options.tls_hostname``).
    A ``check`` hook (a protocol ping) receives the member (``PersistentConn``);
    without one, a check is the stale probe.
    """

    __slots__ = (
        "_hook",
        "address",
        "dial_timeout",
        "io_timeout",
        "keepalive",
        "label",
        "nodelay",
        "probe_lease",
        "server_hostname",
        "tls",
    )

    #: A lent member's inherited socket is dropped at fork: its next I/O redials.
    release_lent = True
    can_check = True

    def __init__(
        self, address: Address, options: Options, *, check: Callable[[Any], object] | None
    ) -> None:
        self.address = address
        self.label = format_address(address)
        self.dial_timeout = options.dial_timeout
        self.io_timeout = options.io_timeout
        self.nodelay = options.nodelay
        self.keepalive = options.keepalive
        self.probe_lease = options.dial_timeout
        self.tls = options.ssl
        self.server_hostname = options.tls_hostname(address[0])
        self._hook = check

    def connect(self, deadline: float | None) -> Socket:
        """A new socket, connected, configured and (with ``ssl``) past its TLS handshake,
        within ``deadline`` (``time.monotonic``)."""
        assert deadline is not None
        host, port = self.address
        sock = connect(host, port, deadline)
        try:
            self.configure(sock)  # before the handshake: no Nagle delay on its last flight
            if self.tls is not None:
                sock = handshake(sock, self.tls, self.server_hostname, deadline, label=self.label)
                sock.settimeout(self.io_timeout)  # the handshake left it blocking
        except BaseException:
            sock.close()
            raise
        return sock

    def configure(self, sock: Socket) -> None:
        """Apply the pool's socket options and ``io_timeout`` to ``sock``."""
        set_options(sock, nodelay=self.nodelay, keepalive=self.keepalive)
        sock.settimeout(self.io_timeout)

    def restore(self, sock: Socket) -> None:
        """Undo what a holder may have set through ``conn.socket``: the options the pool
        sets (``TCP_NODELAY``, keepalive, the timeout) and ``SO_LINGER`` (off)."""
        if not self.nodelay:
            sock.setsockopt(_IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if self.keepalive is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        self.configure(sock)

    stale = staticmethod(stale)

    def settle(self, sock: Socket, timeout: float | None) -> None:
        """At put: the socket's timeout back to ``io_timeout`` (a lend may have set its
        own)."""
        sock.settimeout(timeout)

    def check(self, slot: Slot) -> bool:
        """The ``check`` hook on the member, or the stale probe on its idle socket."""
        if self._hook is None:
            return not stale(slot.conn)
        try:
            return self._hook(slot) is not False
        finally:
            slot._end_io()  # type: ignore[attr-defined]  # a PersistentConn: next I/O re-probes

    def close(self, sock: Socket) -> None:
        """Close a socket (never waits: no SO_LINGER is left set by the pool)."""
        sock.close()

    def release(self, sock: Socket) -> bool:
        """After a fork: close the child's descriptor. The parent still holds the socket,
        so no FIN or RST is sent. Returns False: nothing to keep."""
        sock.close()
        return False

    def interrupt(self, sock: Socket) -> None:
        """Wake a thread blocked on ``sock`` (a background check, an ``abort``): shut it
        down, no wait. A TLS socket keeps its session: the blocked reader sees the end of
        the stream, a later send fails, and nothing is ever sent unencrypted."""
        try:
            _raw_shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def forget(self, slot: Slot) -> None:
        """After a fork: a member's own view of its socket is gone too."""
        slot._end_io()  # type: ignore[attr-defined]
