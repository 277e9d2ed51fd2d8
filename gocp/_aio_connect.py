"""The asyncio shell's connectors: sockets (an RFC 8305 connect on the event loop) and
the user's hooks (coroutine functions, or plain ones).

They are the threaded connectors (``gocp._sockets``, ``gocp._hooks``) with the I/O made
awaitable: ``connect`` and ``check`` are coroutines; ``close`` of a hook may return an
awaitable, which the pool awaits (``AioHub.close_conn``). Sockets stay non-blocking for
the loop's ``sock_*`` calls; the stale probe, options, fork release and interrupt are
the threaded connector's own.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections import deque
from typing import Any

from ._address import Address
from ._config import Options
from ._core import Slot
from ._dial import all_failed, checked_infos, order_addresses, timed_out
from ._hooks import HookConnector
from ._sockets import SocketConnector, stale

__all__ = ["AioHookConnector", "AioSocketConnector", "connect"]

AddrInfo = tuple[Any, ...]


async def connect(
    host: str, port: int, deadline: float, *, attempt_delay: float = 0.25
) -> socket.socket:
    """Connect to ``host:port`` by ``deadline`` (``time.monotonic``), as ``gocp._dial.connect``
    does (RFC 8305: addresses interleaved by family, the next attempt started when one
    fails or ``attempt_delay`` passes, the first to connect wins), on the running loop.
    The name is resolved by the loop (its executor). Returns a connected non-blocking
    socket; every other socket it made is closed, also when cancelled."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    candidates: deque[AddrInfo] = deque(order_addresses(checked_infos(host, port, infos)))
    if not candidates:
        raise OSError(f"connect to {host}:{port}: resolve returned no address")
    failures: list[tuple[AddrInfo, OSError]] = []
    attempts: dict[asyncio.Task[socket.socket], AddrInfo] = {}  # in start order
    winner: socket.socket | None = None

    async def attempt(info: AddrInfo) -> socket.socket:
        sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, info[4])
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        while winner is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise timed_out(
                    host,
                    port,
                    allowed=deadline - started,
                    pending=list(attempts.values()),
                    untried=candidates,
                    failures=failures,
                )
            if candidates:
                info = candidates.popleft()
                attempts[loop.create_task(attempt(info))] = info
            if not attempts:
                raise all_failed(host, port, failures)
            wait = min(left, attempt_delay) if candidates else left
            done, _ = await asyncio.wait(
                list(attempts), timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for task in [task for task in attempts if task in done]:  # in start order
                info = attempts.pop(task)
                error = task.exception()
                if error is None:
                    winner = task.result()
                    break
                if not isinstance(error, OSError):
                    raise error
                failures.append((info, error))
        return winner
    finally:
        for task in attempts:  # still running, or done after the winner
            task.cancel()
            task.add_done_callback(_close_result)


def _close_result(task: asyncio.Task[socket.socket]) -> None:
    """A losing attempt's socket, if it connected after all, is closed."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AioSocketConnector(SocketConnector):
    """``SocketConnector`` for the event loop: non-blocking sockets, an awaitable connect
    (bounded by the dial's deadline) and check (the ``check`` hook may be a coroutine
    function; without one a check is the stale probe)."""

    __slots__ = ()

    def __init__(self, address: Address, options: Options, *, check: Any = None) -> None:
        if options.ssl is not None:
            raise TypeError("ssl: TLS is not available in gocp.aio yet (only in gocp.new)")
        super().__init__(address, options, check=check)

    async def connect(self, deadline: float | None) -> socket.socket:  # type: ignore[override]
        assert deadline is not None
        host, port = self.address
        sock = await connect(host, port, deadline)
        try:
            self.configure(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def configure(self, sock: socket.socket) -> None:
        super().configure(sock)
        sock.setblocking(False)  # the loop's sock_* calls need it; io_timeout is the pool's

    def settle(self, sock: socket.socket, timeout: float | None) -> None:
        """Nothing to undo: the socket's own timeout stays 0 (non-blocking)."""

    async def check(self, slot: Slot) -> bool:  # type: ignore[override]
        if self._hook is None:
            return not stale(slot.conn)
        try:
            return await _maybe_await(self._hook(slot)) is not False
        finally:
            slot._end_io()  # type: ignore[attr-defined]  # next I/O re-probes


class AioHookConnector(HookConnector):
    """``HookConnector`` whose hooks may be coroutine functions (or plain ones)."""

    __slots__ = ()

    async def connect(self, deadline: float | None) -> Any:
        client = await _maybe_await(self._dial())
        if client is None:
            raise TypeError(f"dial hook {self.label} returned None instead of a client")
        return client

    async def check(self, slot: Slot) -> bool:  # type: ignore[override]
        assert self._check is not None
        return await _maybe_await(self._check(slot.conn)) is not False

    def close(self, client: Any) -> Any:
        """Close a client; returns what the hook returned (the pool awaits an awaitable)."""
        if self._close is not None:
            return self._close(client)
        close = getattr(client, "close", None)
        return close() if callable(close) else None
