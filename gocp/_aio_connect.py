"""The asyncio shell's connectors: sockets (a ``Link`` on the loop's transport) and the
user's hooks (coroutine functions, or plain ones).

``connect`` and ``check`` are coroutines; ``close`` of a hook may return an awaitable,
which the pool awaits (``AioHub.close_conn``). The hook connector is the threaded one
with its calls awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections import deque
from typing import Any

from ._address import Address, format_address
from ._aio_link import Link
from ._config import Options
from ._core import Slot
from ._dial import all_failed, checked_infos, order_addresses, timed_out
from ._hooks import HookConnector
from ._sockets import set_options

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
    try:  # unlike the threaded connect, the loop lets the name's resolution be bounded too
        async with asyncio.timeout_at(loop.time() + (deadline - started)):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise timed_out(
            host, port, allowed=deadline - started, pending=None, untried=(), failures=[]
        ) from None
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
        if attempts:  # let them end now (a cancel again only leaves them to their callback)
            await asyncio.wait(list(attempts))


def _close_result(task: asyncio.Task[socket.socket]) -> None:
    """A losing attempt's socket, if it connected after all, is closed."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AioSocketConnector:
    """Makes, probes and closes the connections of one address for asyncio: each is a
    ``Link`` on the loop's transport (``loop.create_connection``: RFC 8305 over the
    resolved addresses, TLS with ``ssl``). ``TCP_NODELAY`` and keepalive as the
    threaded connector sets them; ``io_timeout`` is the member's. A ``check`` hook may
    be a coroutine function; without one a check is the stale probe."""

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

    #: After a fork the loop and its transports are the parent's: a lent member's link is
    #: dropped (kept referenced, never touched).
    release_lent = True
    can_check = True

    def __init__(self, address: Address, options: Options, *, check: Any = None) -> None:
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

    async def connect(self, deadline: float | None) -> Link:
        """A new connection (and its TLS handshake) within ``deadline`` (``time.monotonic``)."""
        assert deadline is not None
        loop = asyncio.get_running_loop()
        host, port = self.address
        options: dict[str, Any] = {}
        if self.tls is not None:
            options.update(ssl=self.tls, server_hostname=self.server_hostname)
        # The loop's own staggered connect leaks the winning socket when cancelled after
        # it won (CPython 3.11-3.13): connect here, then hand the socket to a transport.
        sock = await connect(host, port, deadline)
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                made = await loop.create_connection(Link, sock=sock, **options)
                link: Link = made[1]
        except TimeoutError:
            sock.close()
            raise TimeoutError(
                f"TLS handshake with {self.label} timed out within {self.dial_timeout}s"
            ) from None
        except BaseException:
            sock.close()
            raise
        try:
            self.configure(link)
        except BaseException:
            link.close()
            raise
        return link

    def configure(self, link: Link) -> None:
        """Apply the pool's socket options (``TCP_NODELAY``, keepalive)."""
        sock = link.socket()
        if sock is None:
            return
        set_options(sock, nodelay=self.nodelay, keepalive=self.keepalive)
        if not self.nodelay:  # the loop turns it on for every TCP transport
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if self.keepalive is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)

    def restore(self, link: Link) -> None:
        """Undo what a holder set through ``conn.socket``: the pool's options again."""
        self.configure(link)

    def settle(self, link: Link, timeout: float | None) -> None:
        """Nothing to undo: ``io_timeout`` is the member's, not the socket's."""

    def stale(self, link: Link) -> bool:
        return link.stale

    async def check(self, slot: Slot) -> bool:
        if self._hook is None:
            return not slot.conn.stale
        try:
            return await _maybe_await(self._hook(slot)) is not False
        finally:
            slot._end_io()  # type: ignore[attr-defined]  # next I/O re-probes

    def close(self, link: Link) -> None:
        link.close()

    def release(self, link: Link) -> bool:
        """After a fork: keep the parent's link referenced, never touch it."""
        return True

    def interrupt(self, link: Link) -> None:
        """Break the connection now (an ``abort``, a close under a check): a read or write
        waiting on it wakes and fails."""
        link.close()

    def forget(self, slot: Slot) -> None:
        slot._end_io()  # type: ignore[attr-defined]


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
