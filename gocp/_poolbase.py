"""What a single-address pool is in either shell: made from a connector and options, its
core and hub, what it tells about itself (address, size, stats), and which of its
members a caller hands back. The threaded ``Pool`` (``gocp._pool``) and the asyncio
``AioPool`` (``gocp._aio_pool``) add lending, waiting and closing."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._build import broken_by, build_core, has_lent, snapshot, upkeep_cap
from ._config import Options
from ._core import LENT, PoolCore, Slot
from ._log import make_log
from ._stats import PoolStats

__all__ = ["LendBase", "PoolBase"]

T = TypeVar("T")

_monotonic = time.monotonic


class LendBase(Generic[T]):
    """What ``connection()`` returns, in either shell: what to ``get`` (the owner, a key,
    the get's arguments) and, once entered, the member to put back."""

    __slots__ = ("_conn", "_connect", "_fresh", "_key", "_owner", "_timeout")

    def __init__(
        self,
        owner: Any,
        key: Any,
        timeout: float | None,
        fresh: bool = False,
        connect: bool = False,
    ) -> None:
        self._owner = owner
        self._key = key
        self._timeout = timeout
        self._fresh = fresh
        self._connect = connect
        self._conn: T | None = None

    def _entered(self) -> None:
        if self._conn is not None:
            raise RuntimeError("a connection() context can be entered once")


class PoolBase(Generic[T]):
    """The shell-neutral part of a pool (see the module docstring). ``hub_type`` makes
    the shell's hub; ``member_type`` the shell's socket member."""

    _hub: Any
    _core: PoolCore[Any, Any]

    def __init__(
        self,
        connector: Any,
        *,
        size: int,
        options: Options,
        logger: object,
        sockets: bool,
        address: str | None,
        hub_type: Callable[..., Any],
        member_type: Callable[..., Any],
    ) -> None:
        log = make_log(logger)
        self.options = options
        self.name = options.name or connector.label
        self.address_text = address
        clock = options.clock or _monotonic
        self._clock = clock
        self._epoch = time.time() - clock()  # the wall time of the clock's zero, for stats
        self._sockets = sockets  # members are socket members (else: lend slot.conn)
        self._member_type = member_type
        hub = hub_type(connector, clock=clock, log=log)
        make: Callable[..., Slot] = (
            (lambda index, overflow=False: member_type(hub, index, overflow=overflow))
            if sockets
            else (lambda index, overflow=False: Slot(index, overflow=overflow))
        )
        core: PoolCore[Any, Any] = build_core(
            make,
            size=size,
            options=options,
            label=self.name,
            sockets=sockets,
            can_check=connector.can_check,
            probe_lease=connector.probe_lease,
            threads=hub.threads,
        )
        hub.core = core
        hub.pool_ref = weakref.ref(self)
        self._hub = hub
        self._core = core
        self._cap = upkeep_cap(options, can_check=connector.can_check)

    @property
    def address(self) -> tuple[str, int] | None:
        """The ``(host, port)`` of a socket pool's server; ``None`` for a pool of clients."""
        return getattr(self._hub.connector, "address", None)

    @property
    def size(self) -> int:
        """The number of members; constant for the pool's life."""
        return len(self._core.members)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._core.closed

    def _slot_of(self, conn: Any) -> Any:
        """The slot of one of this pool's members (a socket member, or a lent client)."""
        if self._sockets:
            if conn.__class__ is self._member_type and conn._hub is self._hub:
                return conn
            return None
        slot = self._core.by_conn.get(id(conn))
        return slot if slot is not None and slot.conn is conn else None

    def _broken_by(self, conn: Any, exc: BaseException | None) -> bool:
        """Whether a ``with`` block that raised ``exc`` leaves ``conn`` broken."""
        return broken_by(self.options, conn, exc, sockets=self._sockets, hub=self._hub)

    def _has_lent(self) -> bool:
        """Whether a member is lent or a caller waits (read without a lock)."""
        return has_lent(self._core)

    def stats(self) -> PoolStats:
        """A consistent, immutable snapshot of gauges and counters (see ``PoolStats``)."""
        with self._hub.lock:
            return snapshot(
                self._core,
                name=self.name,
                address=self.address_text,
                epoch=self._epoch,
                stale=self._hub.connector.stale,
            )

    def __repr__(self) -> str:
        core = self._core
        lent = sum(1 for slot in (*core.members, *core.extra) if slot.state is LENT)
        state = " closed" if core.closed else ""
        kind = f"{type(self).__module__}.{type(self).__name__}"
        return (
            f"<{kind} {self.name} size={len(core.members)} idle={len(core.idle)} "
            f"in_use={lent} waiting={len(core.waiters)} connected={core.connected}{state}>"
        )
