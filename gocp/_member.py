"""A socket member's part that does no I/O of its own, shared by both shells.

``SocketMember`` is a slot with its hub and connector, this lend's view of its
socket, and what its ``put`` undoes; ``PersistentConn`` (threads, ``gocp._conn``)
and ``AioConn`` (asyncio, ``gocp._aio_conn``) add the I/O.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._address import Address
from ._core import BUSY, LENT, Slot
from ._errors import ConnectionBroken, IOTimeout

if TYPE_CHECKING:
    from ._sockets import SocketConnector

__all__ = ["SOCKET_TAKEN", "TIMEOUT_CHANGED", "SocketMember"]

Socket = socket.socket

TIMEOUT_CHANGED = 1  # this lend set its own timeout: put restores io_timeout
SOCKET_TAKEN = 2  # this lend took the raw socket: put restores the pool's options


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
        self._io: Any = (
            None  # the socket (asyncio: its link), once this lend's first I/O checked it
        )
        self._timeout: float | None = self._connector.io_timeout
        self._dirty = 0  # what this lend changed that put must undo (TIMEOUT_CHANGED...)
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

    def _probe(self) -> Any:
        """This lend's first operation: its socket if the peer has not closed it (else
        it is replaced: nothing of this lend was sent, so that is safe); None: dial one."""
        state = self.state
        if state is not LENT and state is not BUSY:
            raise ValueError(f"{self!r} is not lent: get it from the pool before using it")
        sock: Any = self.conn
        if state is BUSY and (sock is None or self._connector.stale(sock)):
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
        return self._io is not None or bool(self._dirty & SOCKET_TAKEN)

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
            if dirty & SOCKET_TAKEN:
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
