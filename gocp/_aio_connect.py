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
from typing import Any

from ._address import Address, format_address
from ._aio_link import Link
from ._config import Options
from ._core import Slot
from ._hooks import HookConnector
from ._sockets import set_options

__all__ = ["AioHookConnector", "AioSocketConnector"]

_ATTEMPT_DELAY = 0.25  # RFC 8305's "Connection Attempt Delay", as the threaded connect's

AddrInfo = tuple[Any, ...]


def _happy_eyeballs(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
    """RFC 8305 staggered attempts, where the loop offers them (uvloop does not: it tries
    the addresses one after another)."""
    kind = type(loop)
    known = _STAGGERS.get(kind)
    if known is None:
        known = _STAGGERS[kind] = (
            "happy_eyeballs_delay" in inspect.signature(loop.create_connection).parameters
        )
    return {"happy_eyeballs_delay": _ATTEMPT_DELAY} if known else {}  # a fresh dict


_STAGGERS: dict[type, bool] = {}


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
        options: dict[str, Any] = _happy_eyeballs(loop)
        if self.tls is not None:
            options.update(ssl=self.tls, server_hostname=self.server_hostname)
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                made = await loop.create_connection(Link, host, port, **options)
                link: Link = made[1]
        except TimeoutError:
            raise TimeoutError(
                f"connect to {self.label} timed out after {self.dial_timeout}s"
            ) from None
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
