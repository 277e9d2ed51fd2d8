"""``gocp.aio.AioConn``: a socket member for asyncio, with awaitable I/O that redials."""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._config import check_timeout
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

    @property
    def socket(self) -> Socket | None:
        """The socket (non-blocking), or ``None`` before the first operation of a lend has
        connected it (``await conn.connect()`` does). Do not close it or make it blocking;
        taking it counts as using the member."""
        self._dirty |= SOCKET_TAKEN
        return self._io or self.conn

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

    async def connect(self) -> Socket:
        """Connect now if need be (as the first operation would) and return the socket."""
        sock = self._io
        if sock is None:
            sock = await self._start()
        return sock

    async def sendall(self, data: ReadableBuffer) -> None:
        """Send all of ``data``; raises ``ConnectionBroken`` or ``DialError``."""
        sock = self._io
        if sock is None:
            sock = await self._start()
        try:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent != len(data):  # type: ignore[arg-type]
                with memoryview(data) as view:
                    await self._wait(asyncio.get_running_loop().sock_sendall(sock, view[sent:]))
        except OSError as exc:
            raise self._broke("sendall", exc)  # noqa: B904 (_broke sets the cause)
        except asyncio.CancelledError:
            self._cancelled("sendall")
            raise

    async def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; a peer that closed raises ``ConnectionBroken``."""
        sock = self._io
        if sock is None:
            sock = await self._start()
        try:
            try:
                data = sock.recv(bufsize)
            except BlockingIOError:
                data = await self._wait(asyncio.get_running_loop().sock_recv(sock, bufsize))
        except OSError as exc:
            raise self._broke("recv", exc)  # noqa: B904 (_broke sets the cause)
        except asyncio.CancelledError:
            self._cancelled("recv")
            raise
        if not data and bufsize:
            raise self._broke("recv", None)
        return data

    async def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        """Receive into ``buffer``; a peer that closed raises ``ConnectionBroken``."""
        sock = self._io
        if sock is None:
            sock = await self._start()
        try:
            try:
                count = sock.recv_into(buffer, nbytes)
            except BlockingIOError:
                if nbytes:
                    with memoryview(buffer) as whole:
                        target: Any = whole[:nbytes]
                        wait = asyncio.get_running_loop().sock_recv_into(sock, target)
                        count = await self._wait(wait)
                else:
                    wait = asyncio.get_running_loop().sock_recv_into(sock, buffer)
                    count = await self._wait(wait)
        except OSError as exc:
            raise self._broke("recv_into", exc)  # noqa: B904 (_broke sets the cause)
        except asyncio.CancelledError:
            self._cancelled("recv_into")
            raise
        if not count and (nbytes or memoryview(buffer).nbytes):
            raise self._broke("recv_into", None)
        return count

    async def _wait(self, pending: Any) -> Any:
        """Await an I/O operation within this lend's timeout (``TimeoutError``, errno None:
        ``_broke`` makes it an ``IOTimeout``)."""
        if self._timeout is None:
            return await pending
        async with asyncio.timeout(self._timeout):
            return await pending

    def _cancelled(self, op: str) -> None:
        """An operation was cancelled from outside: the stream is in an unknown state."""
        self._broke(op, ConnectionAbortedError(f"{op} cancelled"))

    async def _start(self) -> Socket:
        """This lend's first operation: probe an idle socket, dial if there is none."""
        sock = self._probe()
        if sock is None:
            sock = await self._hub.dial(self)
        self._io = sock
        return sock

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
