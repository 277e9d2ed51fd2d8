"""PersistentConn: a socket pool's member, a connected-socket look-alike that redials."""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._address import Address
from ._config import check_timeout
from ._core import BUSY, LENT, Slot
from ._errors import ConnectionBroken, IOTimeout

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ._hub import Hub
    from ._sockets import SocketConnector

__all__ = ["PersistentConn", "SocketMember"]

Socket = socket.socket

_TIMEOUT_CHANGED = 1  # this lend set its own timeout: put restores io_timeout
_SOCKET_TAKEN = 2  # this lend took the raw socket: put restores the pool's options


class SocketMember(Slot):
    """What a socket member is in either shell (``PersistentConn`` for threads, the
    asyncio member in ``gocp.aio``): a slot with its hub and connector, this lend's view
    of its socket, and the bookkeeping its ``put`` undoes. I/O lives in the subclasses."""

    __slots__ = ("__weakref__", "_aborted", "_connector", "_dirty", "_hub", "_io", "_timeout")

    _hub: Any
    _connector: SocketConnector

    def __init__(self, hub: Any, index: int, *, overflow: bool = False) -> None:
        super().__init__(index, overflow=overflow)
        self._hub = hub
        self._connector = hub.connector
        self._io: Socket | None = None  # the socket, once this lend's first I/O checked it
        self._timeout: float | None = self._connector.io_timeout
        self._dirty = 0  # what this lend changed that put must undo (_TIMEOUT_CHANGED...)
        self._aborted = False  # abort() shut the current socket down

    @property
    def address(self) -> Address:
        """The ``(host, port)`` this member connects to."""
        return self._connector.address

    @property
    def connected(self) -> bool:
        """Whether the member holds a socket now (it may still be dead until used)."""
        return self.conn is not None

    def gettimeout(self) -> float | None:
        """The current I/O timeout in seconds, or ``None``."""
        return self._timeout

    def abort(self) -> None:
        """Break the connection now, from any thread; the holder's blocked I/O wakes.

        ``shutdown`` wakes a thread blocked in ``recv`` (a plain ``close``
        would not), which then raises ``ConnectionBroken``; the member redials
        on its next use. Does nothing unless the member is lent and connected.
        A watchdog that may fire after the member was put back (and perhaps
        lent to someone else) should call ``conn.aborter()`` at ``get`` time and
        fire that instead: it aborts only the lend it was made in.
        """
        self._hub_abort(None)

    def aborter(self) -> Callable[[], None]:
        """A callable that aborts this lend only (see ``abort``); safe to call late."""
        seq = self.seq
        return lambda: self._hub_abort(seq)

    def _hub_abort(self, seq: int | None) -> None:
        hub = self._hub
        with hub.lock:  # orders it against the close of this socket (after it is detached)
            sock = self.conn
            if sock is None or not hub.lent_to(self, seq):
                return
            self._aborted = True
            self._connector.interrupt(sock)  # a raw shutdown, never waits (TLS: keeps the session)

    def _probe(self) -> Socket | None:
        """This lend's first operation: its socket if the peer has not closed it (else
        it is replaced: nothing of this lend was sent, so that is safe); None: dial one."""
        if self.state is not LENT and self.state is not BUSY:
            raise ValueError(f"{self!r} is not lent: get it from the pool before using it")
        sock: Socket | None = self.conn
        if self.state is BUSY and (sock is None or self._connector.stale(sock)):
            # A background check: a dead connection fails it; redialling is not its job.
            raise ConnectionBroken(
                f"{self._connector.label}: the checked connection is gone",
                address=self._connector.label,
            )
        if sock is not None and self._connector.stale(sock):
            self._hub.stale(self)  # closed or reset by the peer while idle (a restart)
            sock = None
        if sock is None:
            self._aborted = False  # an abort() was about the socket that is gone
        return sock

    def _used(self) -> bool:
        """Whether this lend did I/O (or took the socket)."""
        return self._io is not None or bool(self._dirty & _SOCKET_TAKEN)

    def _end_io(self) -> None:
        """Forget this lend's view of the socket: the next operation probes it again."""
        self._io = None

    def _forget_lend(self) -> None:
        """A lend ends without a plain ``put`` (an undone ``get``, an interrupted ``put``):
        the next lend starts clean."""
        self._io = None
        if self._dirty:
            self._end_lend()

    def _end_lend(self) -> bool:
        """At put, when the lend changed something (``_dirty``): undo it. False if the
        socket can no longer be trusted (the holder closed what it took as ``socket``)."""
        dirty, self._dirty = self._dirty, 0
        self._timeout = self._connector.io_timeout
        sock = self.conn
        if sock is None:
            return True
        try:
            if dirty & _SOCKET_TAKEN:
                self._connector.restore(sock)
            else:
                self._connector.settle(sock, self._timeout)
        except OSError:  # e.g. the holder closed the socket it took with conn.socket
            return False
        return True

    def _broke(self, op: str, exc: OSError | None) -> ConnectionBroken:
        """Drop the socket after a failure and build the error to raise (``exc`` its cause)."""
        aborted = self._aborted
        self._io = None
        self._aborted = False
        hub = self._hub
        address = self._connector.label
        if aborted:
            error: ConnectionBroken = ConnectionBroken(
                f"{op} on {address}: aborted", address=address
            )
        elif exc is None:
            error = ConnectionBroken(
                f"{op} on {address}: peer closed the connection", address=address
            )
        elif isinstance(exc, TimeoutError) and exc.errno is None:
            # A timeout of ours (errno None), not the kernel's ETIMEDOUT, which means
            # the peer stopped answering keepalive probes.
            error = IOTimeout(
                f"{op} on {address}: no progress within {self._timeout}s; connection dropped",
                address=address,
            )
        else:
            error = ConnectionBroken(f"{op} on {address}: {exc}", address=address)
        error.__cause__ = exc
        hub.broke(self, op, exc if exc is not None else error)
        return error


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
        self._dirty |= _SOCKET_TAKEN
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
        self._dirty |= _TIMEOUT_CHANGED
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
            sent = sock.send(data)
            if sent != len(data):  # type: ignore[arg-type]
                self._send_rest(sock, data, sent)
        except OSError as exc:
            raise self._broke("sendall", exc)  # noqa: B904 (_broke sets the cause)

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
            return sock.send(data)
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
        sock = self._probe()
        if sock is None:
            sock = self._hub.dial(self)
            if self._dirty & _TIMEOUT_CHANGED:
                sock.settimeout(self._timeout)
        self._io = sock
        return sock
