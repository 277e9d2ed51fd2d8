"""PersistentConn: a socket pool's member, a connected-socket look-alike that redials."""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import TYPE_CHECKING

from ._config import check_timeout
from ._core import LENT
from ._member import SOCKET_TAKEN, TIMEOUT_CHANGED, SocketMember

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ._hub import Hub

__all__ = ["PersistentConn"]

Socket = socket.socket
_write = os.write
#: Whether a plain socket's file descriptor can be written with ``os.write`` (POSIX).
_WRITE_FD = os.name == "posix"


class PersistentConn(SocketMember):
    """One member of a ``gocp.Pool`` of sockets: it survives breaks and redials.

    It is lent by ``Pool.get`` and must be given back with ``Pool.put`` (or
    by leaving ``with pool.get() as conn:``). Its methods behave like a
    connected socket's, with these differences:

    - The socket is made on first use, and again after a break: an I/O
      error or the peer closing raises ``gocp.ConnectionBroken`` (the
      ``OSError`` as ``__cause__``; a timeout raises ``gocp.IOTimeout``, both
      ``ConnectionBroken`` and ``TimeoutError``), the socket is dropped, and
      the next operation dials a new one. The failed operation is never
      re-sent: the caller decides whether its request is safe to repeat.
    - Dialling failures raise ``gocp.DialError``; until the pool's backoff
      delay has passed, operations raise ``DialError`` at once (with
      ``retry_in``) instead of dialling.
    - Before the first operation of each lend, a connection that the peer
      closed while it sat idle (a server restart) is replaced by a new one.
      Nothing had been sent on it, so this is safe; the caller never sees it.
    - ``recv`` never returns ``b""`` for a closed peer: it raises.
    - ``settimeout`` lasts until the member is put back; the pool then
      restores its ``io_timeout``, which bounds each wait for progress (a
      large ``sendall`` that keeps moving may take longer in all).
    - An operation on a member that is not lent (used after ``put``) raises
      ``ValueError`` and never dials. A stale holder of a member that was
      lent again to someone else cannot be told apart from its new holder:
      do not keep a member after putting it back.
    """

    __module__ = "gocp"
    __slots__ = ()

    _hub: Hub
    _io: Socket | None

    # -- what the caller sees -------------------------------------------------

    @property
    def socket(self) -> Socket:
        """The live socket (Go's ``OriginalConn``), dialled if need be.

        Taking it counts as this lend's first operation: a socket the peer
        closed while idle is replaced first, as before a send. Use it for
        options or for I/O the member does not wrap; do not close it (put the
        member back with ``broken=True``), and set its timeout with
        ``conn.settimeout``. At ``put`` the pool restores the options it
        manages (``TCP_NODELAY``, keepalive, the timeout) and turns
        ``SO_LINGER`` off; other options you set stay for later holders.
        Touching it counts as using the member: a ``with pool.connection()``
        block that then raises puts the member back broken. Raises
        ``DialError`` when it cannot connect, ``ValueError`` when not lent.
        """
        sock = self._io
        if sock is None:
            sock = self._start()
        self._dirty |= SOCKET_TAKEN
        return sock

    def __repr__(self) -> str:
        link = "connected" if self.conn is not None else "disconnected"
        kind = " overflow" if self.overflow else ""
        return (
            f"<gocp.PersistentConn{kind} #{self.index} {self._connector.label} "
            f"{self.state.value} {link}>"
        )

    def settimeout(self, timeout: float | None) -> None:
        """Bound each wait of this lend's I/O (seconds > 0, or ``None`` for no bound)."""
        seconds = check_timeout("timeout", timeout, zero=False)
        self._timeout = seconds
        self._dirty |= TIMEOUT_CHANGED
        sock = self.conn
        if sock is not None and self.state is LENT:
            sock.settimeout(seconds)

    def sendall(self, data: ReadableBuffer) -> None:
        """Send all of ``data``; raises ``ConnectionBroken`` or ``DialError`` (see class doc).

        ``io_timeout`` bounds each wait for progress, not the whole call."""
        sock = self._io
        if sock is None:
            sock = self._start()
        try:
            sent = self._send_once(sock, data)
            if sent != len(data):  # type: ignore[arg-type]
                self._send_rest(sock, data, sent)
        except OSError as exc:
            raise self._broke("sendall", exc)  # noqa: B904 (_broke sets the cause)

    @staticmethod
    def _send_once(sock: Socket, data: ReadableBuffer) -> int:
        """Send what the socket takes now, in one system call where it can.

        A socket with a timeout polls before every send (two system calls); the socket
        is non-blocking underneath, so a write to its descriptor sends at once whatever
        fits in the send buffer, and only a full buffer waits, through the socket, within
        its timeout. (A socket without a timeout blocks in the write, as in ``send``.) The
        descriptor is asked for each time: a socket its holder closed has none (-1), and
        the write fails, where a number kept from before could name another file."""
        if _WRITE_FD and sock.__class__ is Socket:  # TLS goes through its socket
            try:
                return _write(sock.fileno(), data)
            except BlockingIOError:  # the send buffer is full: wait for room, bounded
                pass
        return sock.send(data)

    def _send_rest(self, sock: Socket, data: ReadableBuffer, sent: int) -> None:
        with memoryview(data) as whole, whole.cast("B") as view:
            total = view.nbytes
            while sent < total:
                sent += sock.send(view[sent:])

    def send(self, data: ReadableBuffer) -> int:
        """Send some of ``data``; return how many bytes were sent."""
        sock = self._io
        if sock is None:
            sock = self._start()
        try:
            return self._send_once(sock, data)
        except OSError as exc:
            raise self._broke("send", exc)  # noqa: B904 (_broke sets the cause)

    def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; a peer that closed raises ``ConnectionBroken``."""
        sock = self._io
        if sock is None:
            sock = self._start()
        try:
            data = sock.recv(bufsize)
        except OSError as exc:
            raise self._broke("recv", exc)  # noqa: B904 (_broke sets the cause)
        if not data and bufsize:
            raise self._broke("recv", None)
        return data

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        """Receive into ``buffer``; a peer that closed raises ``ConnectionBroken``."""
        sock = self._io
        if sock is None:
            sock = self._start()
        try:
            count = sock.recv_into(buffer, nbytes)
        except OSError as exc:
            raise self._broke("recv_into", exc)  # noqa: B904 (_broke sets the cause)
        if not count and (nbytes or memoryview(buffer).nbytes):
            raise self._broke("recv_into", None)
        return count

    def __enter__(self) -> PersistentConn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Put the member back, by the rule of ``Pool.connection`` (see there)."""
        pool = self._hub.pool_ref()
        if pool is None:  # the pool was dropped (and closed): close the socket
            self._hub.broke(self, "exit", RuntimeError("pool was collected"))
            return
        pool._return(self, exc)

    # -- the machinery -----------------------------------------------------------

    def _start(self) -> Socket:
        """This lend's first operation: probe an idle socket, dial if there is none."""
        sock: Socket | None = self._probe()
        if sock is None:
            sock = self._hub.dial(self)
            if self._dirty & TIMEOUT_CHANGED:
                sock.settimeout(self._timeout)
        self._io = sock
        return sock
