"""One asyncio connection of a socket member: the loop's transport and a small protocol.

A ``Link`` keeps the transport registered with the loop for the connection's life and
buffers what arrives (as asyncio's streams do, with less around it), so a read that
finds bytes waiting returns them without waiting, and many members reading at once cost
the loop no re-registration per read. It also knows, without a system call, when the
peer ended the connection (``eof_received``, ``connection_lost``): the stale check reads
that, and the kernel's TCP state besides.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ._sockets import stale as socket_stale

__all__ = ["Link"]

_LIMIT = 1 << 18  # bytes buffered before reading pauses (resumes when drained below half)


class Link(asyncio.Protocol):
    """The protocol of one member connection (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False  # EOF received, or the connection lost
        self.error: BaseException | None = None  # why it was lost, if by an error
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for bytes
        self._drained: asyncio.Future[None] | None = None  # a write waiting for room
        self._writing_paused = False
        self._reading_paused = False
        # io_timeout without a timer per wait: one lazy timer per link, moved on only
        # when it fires early (the waits it watches usually end in microseconds).
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0
        self._timeout: float | None = None

    # -- the protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what a member does -------------------------------------------------------------

    @property
    def stale(self) -> bool:
        """Whether the connection is no longer usable: the peer ended it, it was lost, or
        the kernel's TCP state says so (a close the loop has not seen yet)."""
        if self.ended or self.transport is None or self.transport.is_closing():
            return True
        sock = self.transport.get_extra_info("socket")
        return sock is not None and socket_stale(sock)

    def take(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes (``b""`` if none)."""
        buffer = self.buffer
        if len(buffer) <= size:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        if self._reading_paused and len(buffer) < _LIMIT // 2 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def arrival(self, timeout: float | None) -> None:
        """Wait until bytes arrive or the connection ends (cancellable); ``TimeoutError``
        (errno None) after ``timeout`` seconds without either."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._watch(loop, timeout)
        try:
            await waiter
        finally:
            self._waiter = None

    def write(self, data: Any) -> bool:
        """Queue ``data``; True if the transport's buffer is full (wait with ``drain``)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        transport.write(data)
        return self._writing_paused

    async def drain(self, timeout: float | None) -> None:
        """Wait until the transport takes more (or the connection ends); ``TimeoutError``
        after ``timeout`` seconds without progress."""
        loop = asyncio.get_running_loop()
        while self._writing_paused and not self.ended:
            drained = self._drained = loop.create_future()
            self._watch(loop, timeout)
            try:
                await drained
            finally:
                self._drained = None
        if self.ended:
            raise self.lost()

    def _watch(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """Start the clock on a wait: it fails with ``TimeoutError`` ``timeout`` seconds
        from now unless it ends first."""
        self._timeout = timeout
        if timeout is None:
            return
        now = self._waiting_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(now + timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        """The lazy timer fired: fail the wait in progress if it has waited ``timeout``;
        otherwise look again when it would have."""
        self._timer = None
        timeout = self._timeout
        pending = [
            waiter
            for waiter in (self._waiter, self._drained)
            if waiter is not None and not waiter.done()
        ]
        if not pending or timeout is None:
            return
        loop = asyncio.get_running_loop()
        due = self._waiting_since + timeout
        if loop.time() >= due:
            for waiter in pending:
                waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(due, self._check_timeout)

    def lost(self) -> OSError:
        """The error to report for a connection that ended under a read or write."""
        error = self.error
        if isinstance(error, OSError):
            return error
        return ConnectionResetError("the peer closed the connection")

    def socket(self) -> socket.socket | None:
        """The transport's socket (for options; do not read or write it directly)."""
        return None if self.transport is None else self.transport.get_extra_info("socket")

    def close(self) -> None:
        """Close the connection without waiting (unsent bytes are dropped)."""
        if self.transport is not None:
            self.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
