"""``gocp.aio.AioConn``: a socket member for asyncio, with awaitable I/O that redials."""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType
from typing import TYPE_CHECKING

from ._aio_link import Link
from ._config import check_timeout
from ._errors import ConnectionBroken
from ._member import SOCKET_TAKEN, TIMEOUT_CHANGED, SocketMember

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ._aio_hub import AioHub

__all__ = ["AioConn"]

Socket = socket.socket


class AioConn(SocketMember):
    """One member of a ``gocp.aio`` pool of sockets: ``PersistentConn`` for asyncio.

    ``await conn.sendall(data)``, ``await conn.recv(n)`` and
    ``await conn.recv_into(buffer)`` behave as ``PersistentConn``'s methods
    do: the socket is made on first use and again after a break, with the
    pool's backoff; a failed operation raises ``ConnectionBroken`` (a timeout
    ``IOTimeout``) and is never re-sent; a peer that closed raises, never
    returns ``b""``; an idle socket the peer closed is replaced before the
    first operation of a lend. ``io_timeout`` bounds each wait for progress.
    An operation cancelled from outside (``task.cancel()``,
    ``asyncio.timeout``) drops the connection, as a timeout does: the stream
    is in an unknown state. One task at a time per member.
    """

    __module__ = "gocp.aio"
    __slots__ = ()

    _hub: AioHub
    _io: Link | None

    @property
    def socket(self) -> Socket | None:
        """The connection's socket (for options; ``None`` before the first operation of a
        lend has connected it: ``await conn.connect()`` does). Do not read, write or close
        it; taking it counts as using the member."""
        self._dirty |= SOCKET_TAKEN
        link = self._io or self.conn
        return None if link is None else link.socket()

    def settimeout(self, timeout: float | None) -> None:
        """Bound each wait of this lend's I/O (seconds > 0, or ``None`` for no bound)."""
        self._timeout = check_timeout("timeout", timeout, zero=False)
        self._dirty |= TIMEOUT_CHANGED

    def __repr__(self) -> str:
        link = "connected" if self.conn is not None else "disconnected"
        kind = " overflow" if self.overflow else ""
        return (
            f"<gocp.aio.AioConn{kind} #{self.index} {self._connector.label} "
            f"{self.state.value} {link}>"
        )

    async def connect(self) -> None:
        """Connect now if need be (as the first operation would)."""
        if self._io is None:
            await self._start()

    async def sendall(self, data: ReadableBuffer) -> None:
        """Send all of ``data``; raises ``ConnectionBroken`` or ``DialError``."""
        link = self._io
        if link is None:
            link = await self._start()
        try:
            if link.write(data):  # the transport's buffer is full: wait for room
                await link.drain(self._timeout)
        except OSError as exc:
            raise self._broke("sendall", exc)  # noqa: B904 (_broke sets the cause)
        except asyncio.CancelledError:
            self._cancelled("sendall")
            raise

    async def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; a peer that closed raises ``ConnectionBroken``."""
        link = self._io
        if link is None:
            link = await self._start()
        if not link.buffer:
            await self._arrival(link, "recv")
        if link.buffer or not bufsize:
            return link.take(bufsize)
        raise self._ended(link, "recv")

    async def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        """Receive into ``buffer``; a peer that closed raises ``ConnectionBroken``."""
        link = self._io
        if link is None:
            link = await self._start()
        with memoryview(buffer) as view, view.cast("B") as target:
            size = nbytes or target.nbytes
            if not link.buffer and size:
                await self._arrival(link, "recv_into")
            if not link.buffer and size:
                raise self._ended(link, "recv_into")
            data = link.take(size)
            target[: len(data)] = data
            return len(data)

    async def _arrival(self, link: Link, op: str) -> None:
        """Wait for bytes (or the end), within this lend's timeout."""
        try:
            while not link.buffer and not link.ended:
                await link.arrival(self._timeout)
        except OSError as exc:  # the timeout (errno None: an IOTimeout)
            raise self._broke(op, exc)  # noqa: B904 (_broke sets the cause)
        except asyncio.CancelledError:
            self._cancelled(op)
            raise

    def _ended(self, link: Link, op: str) -> ConnectionBroken:
        """The connection ended under a read: the peer closed it (``None``), or an error."""
        error = link.error
        return self._broke(op, error if isinstance(error, OSError) else None)

    def _cancelled(self, op: str) -> None:
        """An operation was cancelled from outside: the stream is in an unknown state."""
        self._broke(op, ConnectionAbortedError(f"{op} cancelled"))

    async def _start(self) -> Link:
        """This lend's first operation: probe an idle connection, dial if there is none."""
        link: Link | None = self._probe()
        if link is None:
            link = await self._hub.dial(self)
        self._io = link
        return link

    async def __aenter__(self) -> AioConn:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Put the member back, by the rule of ``Pool.connection``."""
        pool = self._hub.pool_ref()
        if pool is None:  # the pool was dropped (and closed): close the socket
            self._hub.broke(self, "exit", RuntimeError("pool was collected"))
            return
        pool._return(self, exc)
