"""Helpers of the asyncio keyed pool and cluster suites (``test_aio_keyed.py``,
``test_aio_cluster.py``).

- ``shells_test``: an ``async def`` test that takes ``shell`` runs once per shell, so a
  contract both shells share is written once and holds twice: the threaded shell
  (``gocp.keyed``/``gocp.cluster``, its blocking calls run in threads through
  ``asyncio.to_thread``) under the default loop, the asyncio shell (``gocp.aio``) under
  the default loop and uvloop. Each run has the deadline and the pending-task check of
  ``aiokit.run``.
- ``Shell``: the adapter those tests call (``await shell.get(pool, ...)`` and so on).
- ``AioDialer``: coroutine ``dial(address)``/``check``/``close`` hooks for keyed pools
  and clusters of clients, that record their calls, fail per address (``down``), and
  hold dials or closes on ``asyncio.Event`` gates until the test opens them.
- ``assert_cluster_whole``/``assert_keyed_whole``: after a cancellation, every pool of a
  cluster or keyed pool is back to full size and nothing waits.
- ``collect_after_each_test``: an autouse fixture (import it into a test module) that
  collects each test's garbage in that test's own teardown.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import inspect
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Hashable, Iterator
from typing import Any

import pytest
from aiokit import LOOPS, iterations, round_trip, run, until
from clusterkit import Client, echo

import gocp
import gocp.aio
from gocp.testing import FakeClock

__all__ = [
    "RETRY",
    "SHELLS",
    "SHELL_LOOPS",
    "AioDialer",
    "Shell",
    "assert_cluster_whole",
    "assert_keyed_whole",
    "assert_pool_whole",
    "collect_after_each_test",
    "shells_test",
]

RETRY: dict[str, Any] = {"retry_min": 1.0, "retry_max": 1.0}  # every backoff lasts exactly 1 s


# -- one contract, two shells ----------------------------------------------------------


class Shell:
    """What a shared test does with a pool, in the shell called ``name``: ``"threads"``
    (blocking calls run in a thread of the loop's executor) or ``"asyncio"``."""

    def __init__(self, name: str) -> None:
        assert name in ("threads", "asyncio"), name
        self.name = name
        self.threads = name == "threads"

    def __repr__(self) -> str:
        return f"<Shell {self.name}>"

    # -- making pools --

    def keyed(self, **options: Any) -> Any:
        return gocp.keyed(**options) if self.threads else gocp.aio.keyed(**options)

    def cluster(self, servers: Any, **options: Any) -> Any:
        if self.threads:
            return gocp.cluster(servers, **options)
        return gocp.aio.cluster(servers, **options)

    def new(self, address: Any, **options: Any) -> Any:
        return gocp.new(address, **options) if self.threads else gocp.aio.new(address, **options)

    # -- calls that may wait --

    async def get(self, pool: Any, *args: Any, **kwargs: Any) -> Any:
        """``pool.get(*args, **kwargs)``, of any pool of this shell."""
        if self.threads:
            return await asyncio.to_thread(functools.partial(pool.get, *args, **kwargs))
        return await pool.get(*args, **kwargs)

    def start_get(self, pool: Any, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """``get`` as a task (pass a finite timeout with threads: a thread cannot be
        cancelled)."""
        return asyncio.ensure_future(self.get(pool, *args, **kwargs))

    async def close(self, pool: Any) -> None:
        if self.threads:
            await asyncio.to_thread(pool.close)
        else:
            await pool.close()

    async def remove(self, cluster: Any, address: Any) -> None:
        if self.threads:
            await asyncio.to_thread(cluster.remove, address)
        else:
            await cluster.remove(address)

    async def echo(self, conn: Any, payload: bytes = b"ping") -> None:
        """One round trip through a socket member connected to an ``EchoServer``."""
        if self.threads:
            await asyncio.to_thread(echo, conn, payload)
        else:
            assert await round_trip(conn, payload) == payload

    async def take(self, cluster: Any, count: int, *, io: bool = False) -> list[Any]:
        """``count`` gets of a cluster, each put back at once; the addresses, in order."""
        went = []
        for _ in range(count):
            conn = await self.get(cluster, timeout=5.0)
            if io:
                await self.echo(conn)
            went.append(conn.address)
            cluster.put(conn)
        return went


SHELLS = {"threads": Shell("threads"), "asyncio": Shell("asyncio")}

_UVLOOP = LOOPS[1]
#: (shell, event loop) pairs a shared test runs under.
SHELL_LOOPS = [
    pytest.param("threads", "asyncio", id="threads"),
    pytest.param("asyncio", "asyncio", id="asyncio"),
    pytest.param("asyncio", "uvloop", id="asyncio-uvloop", marks=_UVLOOP.marks),
]


def shells_test(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Make ``async def test_...(shell, fixtures...)`` a test run under every pair of
    ``SHELL_LOOPS`` (see the module docstring)."""
    signature = inspect.signature(test)

    @functools.wraps(test)
    def wrapper(*args: Any, shell_name: str, aio_loop: str, **kwargs: Any) -> None:
        run(test(*args, shell=SHELLS[shell_name], **kwargs), aio_loop)

    kept = [param for param in signature.parameters.values() if param.name != "shell"]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str)
        for name in ("shell_name", "aio_loop")
    ]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*kept, *extra], return_annotation=None
    )
    marked: Callable[..., None] = pytest.mark.parametrize(("shell_name", "aio_loop"), SHELL_LOOPS)(
        wrapper
    )
    return marked


@pytest.fixture(autouse=True)
def collect_after_each_test() -> Iterator[None]:
    """Collect a test's garbage in its own teardown. pytest keeps the last failure's
    traceback (``sys.last_value``), and with it whatever that test left behind: a close
    hook's coroutine cancelled before it ran warns "never awaited" when collected, and
    that warning must fail the test that caused it, not the next one."""
    yield
    for name in ("last_exc", "last_value", "last_traceback", "last_type"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()


# -- coroutine hooks of keyed pools and clusters of clients ----------------------------


class AioDialer:
    """Coroutine ``dial(address)``, ``check(client)`` and ``close(client)`` hooks.

    Each first yields ``turns`` loop iterations (so a cancellation has await points to
    land on). ``down`` holds addresses whose dial raises ``ConnectionRefusedError``;
    ``gate(address)`` holds the dials of that address until the returned event is set;
    ``close_gate`` (when set to an event) holds every close hook. ``dialling`` and
    ``closing`` count the hooks in flight; ``started`` counts calls begun by kind.
    """

    def __init__(self, turns: int = 0) -> None:
        self.turns = turns
        self._numbers = 0
        self.dials: Counter[Hashable] = Counter()
        self.made: list[Client] = []
        self.closed: list[Client] = []
        self.checked: list[Client] = []
        self.down: set[Hashable] = set()
        self.gates: dict[Hashable, asyncio.Event] = {}
        self.close_gate: asyncio.Event | None = None
        self.dialling: Counter[Hashable] = Counter()
        self.closing = 0
        self.started: Counter[str] = Counter()

    def gate(self, address: Hashable) -> asyncio.Event:
        """Hold the dials of ``address`` until the returned event is set."""
        gate = self.gates[address] = asyncio.Event()
        return gate

    async def dial(self, address: Hashable) -> Client:
        self.started["dial"] += 1
        self.dials[address] += 1
        self.dialling[address] += 1
        try:
            await iterations(self.turns)
            gate = self.gates.get(address)
            if gate is not None:
                await gate.wait()
            if address in self.down:
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address} refused")
            self._numbers += 1
            client = Client(address, self._numbers)
            self.made.append(client)
            return client
        finally:
            self.dialling[address] -= 1

    async def check(self, client: Client) -> bool:
        self.started["check"] += 1
        await iterations(self.turns)
        client.checks += 1
        self.checked.append(client)
        return not client.closed

    async def close(self, client: Client) -> None:
        self.started["close"] += 1
        self.closing += 1
        try:
            await iterations(self.turns)
            if self.close_gate is not None:
                await self.close_gate.wait()
            client.closed = True
            self.closed.append(client)
        finally:
            self.closing -= 1

    def plain_close(self, client: Client) -> None:
        """A plain close hook (closing never yields to the loop)."""
        self.started["close"] += 1
        client.closed = True
        self.closed.append(client)

    def made_for(self, address: Hashable) -> list[Client]:
        return [client for client in self.made if client.address == address]

    def live(self) -> list[Client]:
        """Clients made and not closed."""
        return [client for client in self.made if not client.closed]

    def closed_twice(self) -> list[Client]:
        counts = Counter(id(client) for client in self.closed)
        return [client for client in self.made if counts[id(client)] > 1]


# -- invariants ----------------------------------------------------------------------


def assert_pool_whole(stats: gocp.PoolStats, where: str = "") -> None:
    """One pool of a composite: every member idle, none lent, nobody waiting."""
    assert (stats.idle, stats.in_use, stats.waiting, stats.overflow) == (stats.size, 0, 0, 0), (
        f"{where}: pool not back to full size: {stats}"
    )
    assert not any(member.lent for member in stats.members), stats


def assert_cluster_whole(cluster: Any) -> None:
    """Every server's pool is whole (idle + in_use == size, nothing lent, nobody waiting),
    and no get is counted waiting in the cluster."""
    stats = cluster.stats()
    assert stats.waiting == 0, f"cluster still counts waiting gets: {stats.waiting}"
    for address, server in stats.servers.items():
        pool = server.pool
        assert pool.idle + pool.in_use == pool.size, f"{address}: {pool}"
        assert_pool_whole(pool, address)
    assert stats.total.in_use == 0, stats.total


async def assert_keyed_whole(
    keyed: Any, clock: FakeClock, key_idle_timeout: float, *, timeout: float = 2.0
) -> None:
    """Every key's pool is whole and nobody waits for room; and no key is still counted
    busy (a get that entered it and never left): once ``key_idle_timeout`` has passed
    on ``clock``, the sweep forgets every key."""
    stats = keyed.stats()
    assert stats.waiting_for_room == 0, stats
    for key, pool in stats.keys.items():
        assert_pool_whole(pool, f"key {key}")
    clock.advance(key_idle_timeout)
    try:
        await until(lambda: keyed.keys == [], "every idle key forgotten", timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"keys never forgotten (still counted busy?): {keyed.keys} of {keyed.stats()}"
        ) from None
