"""Keyed pools for asyncio: ``gocp.keyed`` with ``AioPool`` per key and awaited waits.

The keys, their making, eviction and sweep are ``gocp._keyedbase.KeyedBase`` (the
same decisions as the threaded keyed pool); this shell waits for room with an event,
closes pools with ``await``, and sweeps idle keys in one task that stops on close.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Self, TypeVar

from ._aio_hub import NO_LOCK
from ._aio_pool import AioLend
from ._config import check_bool, check_timeout
from ._keyedbase import KeyedBase, keyed_factory
from ._keys import KeyEntry
from ._make import Shell

__all__ = ["AioKeyedPool", "build_keyed"]

T = TypeVar("T")

_monotonic = time.monotonic


class AioKeyedPool(KeyedBase[T]):
    """``gocp.KeyedPool`` for asyncio (see ``gocp.aio.keyed``): a pool per key, each of
    ``size`` members, made on first use; ``await get(key)``, ``put`` (plain),
    ``async with connection(key)``, ``await close()``. Use it from one loop."""

    __module__ = "gocp.aio"

    def __init__(
        self, made: Any, *, max_keys: int | None, key_idle_timeout: float | None, logger: object
    ) -> None:
        super().__init__(
            made,
            max_keys=max_keys,
            key_idle_timeout=key_idle_timeout,
            logger=logger,
            lock=NO_LOCK,
        )
        self._idle_timeout = key_idle_timeout
        self._freed: asyncio.Event | None = None  # a key may have become evictable
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_due = asyncio.Event()  # wakes the sweep (binds to a loop when awaited)
        self._gone: list[KeyEntry[Any]] = []  # keys closed by close(), for a second close
        # Dropped without close(): the sweep task (which holds it weakly) ends.
        self._finalizer = weakref.finalize(self, self._sweep_due.set)
        subscribe = getattr(made.clock, "subscribe", None)
        if callable(subscribe):
            subscribe(self._poke)  # a fake clock moved: the sweep looks at once

    def _poke(self) -> None:
        self._sweep_due.set()

    def _wake_waiters(self) -> None:
        if self._freed is not None:
            self._freed.set()

    # -- lending ---------------------------------------------------------------

    async def get(
        self, key: Any, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> T:
        """Lend a member of ``key``'s pool (made now if new), as ``gocp.KeyedPool.get``."""
        key = self._key_of(key)
        if timeout is not None:
            timeout = check_timeout("timeout", timeout)
        entry = self._known(key)
        if entry is None:
            started = _monotonic()
            entry = await self._admit(key, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            conn: T = await entry.pool.get(timeout, fresh=fresh, connect=connect)
        except BaseException:
            self._failed(entry)
            raise
        self._lent(entry, conn)
        return conn

    async def _admit(self, key: Hashable, timeout: float | None) -> KeyEntry[Any]:
        """Make the key, evicting to make room, or wait for a key to become evictable."""
        deadline = None if timeout is None else _monotonic() + timeout
        made = self._table.made
        self._waiting += 1
        try:
            while True:
                entry, evicted = self._try_admit(key)
                if entry is not None:
                    break
                left = None if deadline is None else deadline - _monotonic()
                if left is not None and left <= 0:
                    raise self._no_room(key, timeout)
                freed = self._freed = self._freed or asyncio.Event()
                freed.clear()
                try:
                    async with asyncio.timeout(left):
                        await freed.wait()
                except TimeoutError:
                    pass
        finally:
            self._waiting -= 1
        try:
            for gone in evicted:
                try:
                    await gone.pool.close()
                finally:
                    self._retire(gone, "evicted")
        except BaseException:  # cancelled while closing the evicted key: leave the new one
            self._failed(entry)
            raise
        if self._table.made != made:
            self._start_sweep()
        return entry

    def connection(
        self, key: Any, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> AioLend[T]:
        """``async with keyed.connection(key) as conn:``: get, and put back after."""
        check_bool("fresh", fresh)
        check_bool("connect", connect)
        return AioLend(self, key, timeout, fresh=fresh, connect=connect)

    async def _lend(self, key: Any, timeout: float | None, fresh: bool, connect: bool) -> T:
        return await self.get(key, timeout, fresh=fresh, connect=connect)

    # -- the sweep and closing ------------------------------------------------------

    def _start_sweep(self) -> None:
        """A new key: the sweep task (started once) looks again at once."""
        if self._idle_timeout is None or self._closed:
            return
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                _run_sweep(weakref.ref(self), self._sweep_due)
            )
        else:
            self._sweep_due.set()

    async def _sweep_once(self) -> float:
        """Forget the keys idle too long (closing their pools); seconds to the next look."""
        gone, delay = self._expired()
        for entry in gone:
            try:
                await entry.pool.close()
            finally:
                self._retire(entry, "idle")
        return delay

    async def close(self) -> None:
        """Close every key's pool (idle members now, lent ones when put back), wake every
        waiter, end the sweep; idempotent; nothing is left pending (a second call also
        waits for close hooks of members put back since)."""
        gone = self._clear()
        self._gone += gone
        self._wake_waiters()
        task = self._sweeper
        if task is not None and not task.done():
            self._sweep_due.set()  # it sees the close and ends (after a close in progress)
            await asyncio.wait([task])
        for entry in gone:
            try:
                await entry.pool.close()
            finally:
                self._retire(entry, None)
        for entry in self._gone:  # close hooks of members put back after the close
            await entry.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _run_sweep(ref: weakref.ref[AioKeyedPool[Any]], due: asyncio.Event) -> None:
    """The sweep task: holds its keyed pool weakly, so a dropped one is collected (its
    finalizer wakes this task, which then ends)."""
    while True:
        due.clear()  # before looking: a poke while the look closes pools is not lost
        owner = ref()
        if owner is None or owner.closed:
            return
        delay = await owner._sweep_once()
        del owner
        try:
            async with asyncio.timeout(None if delay == float("inf") else max(0.0, delay)):
                await due.wait()
        except TimeoutError:
            pass


def build_keyed(
    *,
    size: int,
    dial: Callable[[Any], Any] | None,
    max_keys: int | None,
    key_idle_timeout: float | None,
    logger: object,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    options: dict[str, Any],
    shell: Shell,
) -> AioKeyedPool[Any]:
    """``gocp.aio.keyed`` once its arguments are known (see ``gocp.keyed``)."""
    made, max_keys, idle = keyed_factory(
        size=size,
        dial=dial,
        max_keys=max_keys,
        key_idle_timeout=key_idle_timeout,
        logger=logger,
        check=check,
        close=close,
        options=options,
        shell=shell,
    )
    return AioKeyedPool(made, max_keys=max_keys, key_idle_timeout=idle, logger=logger)
