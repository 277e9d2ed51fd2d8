"""One contract, two shells: the behaviour both ``gocp`` (threads) and ``gocp.aio`` promise,
written once and run against each.

A scenario is an ``async def`` taking ``shell``: a small adapter that makes pools of
that shell (``shell.new(address)``, ``shell.pool(dial)``) and does a member's I/O
(``await shell.sendall(conn, data)``, ``await shell.recv(conn, n)``). The pools it
returns have the asyncio API (``await pool.get()``, ``pool.put(conn)``, ``async with
pool.connection()``, ``await pool.close()``): an ``AioPool`` as it is, a threaded
``Pool`` behind ``ThreadPool``, which runs each call that may block in a worker
thread (``asyncio.to_thread``) and the others directly. Every scenario runs for the
threads shell and for the asyncio shell under the default loop and under uvloop.

Only behaviour that really is the same in both shells is here: lending and ring
order, the exhaustion error, FIFO, put misuse, close, redial after a restart with
nothing sent twice, stats after a known sequence, the dial backoff, the
``connection()`` rule, the lifecycle options on a ``FakeClock``. What only one shell
has (cancellation, ``asyncio.timeout``, threads and interrupts) has its own file.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol

import attrs
import pytest
from aiokit import (
    BOUND,
    EARLY,
    LOOPS,
    Client,
    Hooks,
    iterations,
    run,
    until,
)
from invariants import new_request_id, unused_address

import gocp
import gocp.aio
from gocp.testing import EchoServer, FakeClock, FaultProxy, RequestReplyServer

HERE = os.path.basename(__file__)


# -- the adapters -------------------------------------------------------------------------


class ShellPool(Protocol):
    """A pool of either shell, driven with the asyncio API."""

    async def get(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> Any: ...
    def put(self, conn: Any, broken: bool = False) -> None: ...
    def connection(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> Any: ...
    async def wait_ready(self, timeout: float | None = None) -> None: ...
    async def close(self) -> None: ...
    def stats(self) -> gocp.PoolStats: ...
    @property
    def closed(self) -> bool: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ThreadLend:
    """``async with`` around a threaded ``Lend``: entering may wait (a worker thread),
    leaving puts back (never waits)."""

    def __init__(self, lend: Any) -> None:
        self._lend = lend

    async def __aenter__(self) -> Any:
        return await asyncio.to_thread(self._lend.__enter__)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lend.__exit__(exc_type, exc, tb)


class ThreadPool:
    """A threaded ``gocp.Pool`` with the asyncio API: a call that may block runs in a
    worker thread; ``get(timeout=0)``, ``put``, ``stats`` and ``close`` never block and
    run here."""

    def __init__(self, raw: gocp.Pool[Any]) -> None:
        self.raw = raw

    async def get(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> Any:
        if timeout == 0 and not connect:  # never waits (a client pool may dial: quick here)
            return self.raw.get(0, fresh=fresh)
        call = functools.partial(self.raw.get, timeout, fresh=fresh, connect=connect)
        return await asyncio.to_thread(call)

    def put(self, conn: Any, broken: bool = False) -> None:
        self.raw.put(conn, broken=broken)

    def connection(
        self, timeout: float | None = None, *, fresh: bool = False, connect: bool = False
    ) -> ThreadLend:
        return ThreadLend(self.raw.connection(timeout, fresh=fresh, connect=connect))

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.raw.wait_ready, timeout)

    async def close(self) -> None:
        self.raw.close()

    def stats(self) -> gocp.PoolStats:
        return self.raw.stats()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    async def __aenter__(self) -> ThreadPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.raw.close()


class Shell:
    """How a scenario makes pools of one shell and does its members' I/O."""

    name = ""
    loop = "asyncio"  # the event loop the scenario itself runs in
    member_type: type = object

    def new(self, address: Any, **options: Any) -> ShellPool:
        raise NotImplementedError

    def pool(self, dial: Callable[[], Any], **options: Any) -> ShellPool:
        raise NotImplementedError

    async def sendall(self, conn: Any, data: bytes) -> None:
        raise NotImplementedError

    async def recv(self, conn: Any, size: int) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Threads(Shell):
    name = "threads"
    member_type = gocp.PersistentConn

    def new(self, address: Any, **options: Any) -> ShellPool:
        return ThreadPool(gocp.new(address, **options))

    def pool(self, dial: Callable[[], Any], **options: Any) -> ShellPool:
        return ThreadPool(gocp.pool(dial, **options))

    async def sendall(self, conn: Any, data: bytes) -> None:
        await asyncio.to_thread(conn.sendall, data)

    async def recv(self, conn: Any, size: int) -> bytes:
        data: bytes = await asyncio.to_thread(conn.recv, size)
        return data


class Aio(Shell):
    member_type = gocp.aio.AioConn

    def __init__(self, loop: str) -> None:
        self.loop = loop
        self.name = f"aio-{loop}"

    def new(self, address: Any, **options: Any) -> ShellPool:
        return gocp.aio.new(address, **options)

    def pool(self, dial: Callable[[], Any], **options: Any) -> ShellPool:
        return gocp.aio.pool(dial, **options)

    async def sendall(self, conn: Any, data: bytes) -> None:
        await conn.sendall(data)

    async def recv(self, conn: Any, size: int) -> bytes:
        data: bytes = await conn.recv(size)
        return data


SHELLS = [
    pytest.param(Threads(), id="threads"),
    *(
        pytest.param(Aio(str(loop.values[0])), id=f"aio-{loop.values[0]}", marks=loop.marks)
        for loop in LOOPS
    ),
]


def shell_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run ``async def test_...(shell, fixtures...)`` once per shell (and loop)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run(test(*args, **kwargs), kwargs["shell"].loop)

    wrapper.__signature__ = inspect.signature(test).replace(  # type: ignore[attr-defined]
        return_annotation=None
    )
    marked: Callable[..., None] = pytest.mark.parametrize("shell", SHELLS)(wrapper)
    return marked


# -- I/O on a member of either shell ----------------------------------------------------


async def round_trip(shell: Shell, conn: Any, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` to an ``EchoServer``; return what came back (as many bytes)."""
    await shell.sendall(conn, payload)
    received = b""
    while len(received) < len(payload):
        received += await shell.recv(conn, len(payload) - len(received))
    return received


async def request(shell: Shell, conn: Any, request_id: str) -> int:
    """One exchange with a ``RequestReplyServer``: how many times it applied the request."""
    await shell.sendall(conn, f"{request_id} x\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += await shell.recv(conn, 4096)
    got_id, times = line.decode().split()
    assert got_id == request_id, (got_id, request_id)
    return int(times)


def gauges(pool: ShellPool) -> tuple[int, int, int, int]:
    stats = pool.stats()
    return stats.idle, stats.in_use, stats.waiting, stats.size


async def assert_whole(pool: ShellPool) -> None:
    """Every member idle, nothing lent or waiting; every member lendable at once."""
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.waiting) == (stats.size, 0, 0), stats
    members = [await pool.get(timeout=0) for _ in range(stats.size)]
    assert len({id(member) for member in members}) == stats.size
    for member in members:
        pool.put(member)
    assert gauges(pool) == (stats.size, 0, 0, stats.size)


class SilentClock(FakeClock):
    """A ``FakeClock`` that does not wake the pool's background work (see test_aio)."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        pass


def client_pool(shell: Shell, hooks: Hooks, *, check: bool = False, **options: Any) -> ShellPool:
    return shell.pool(
        hooks.dial, close=hooks.close, check=hooks.check if check else None, **options
    )


# -- lending -------------------------------------------------------------------------------


@shell_test
async def test_members_are_lent_in_ring_order(shell: Shell, echo_server: EchoServer) -> None:
    async with shell.new(echo_server.address, size=3) as pool:
        a, b, c = [await pool.get(timeout=0) for _ in range(3)]
        assert type(a) is shell.member_type
        assert len({id(a), id(b), id(c)}) == 3
        for member in (b, c, a):
            pool.put(member)
        assert [await pool.get(timeout=0) for _ in range(3)] == [b, c, a]
        for member in (b, c, a):
            pool.put(member)
        stats = pool.stats()
        assert (stats.lends, stats.idle, stats.in_use, stats.dials) == (6, 3, 0, 0)


@shell_test
async def test_a_pool_of_clients_dials_in_get_and_keeps_its_clients(shell: Shell) -> None:
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=2) as pool:
        assert hooks.made == []  # making the pool never dials
        a = await pool.get(timeout=0)
        assert a is hooks.made[0]
        pool.put(a)
        b = await pool.get(timeout=0)
        assert b is hooks.made[1]  # ring order: the other member, which dials
        assert await pool.get(timeout=0) is a
        pool.put(a)
        pool.put(b)
        stats = pool.stats()
        assert (stats.dials, stats.connected, stats.address) == (2, 2, None)


@shell_test
async def test_get_with_timeout_zero_raises_at_once_saying_why(shell: Shell) -> None:
    async with client_pool(shell, Hooks("plain"), size=2, name="zero") as pool:
        held = [await pool.get(timeout=0), await pool.get(timeout=0)]
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as raised:
            await pool.get(timeout=0)
        assert time.monotonic() - started < 0.5
        assert str(raised.value) == (
            "no member of zero became free within 0.0s: size 2, 2 lent, 0 waiting"
        )
        assert raised.value.timeout == 0.0
        stats = pool.stats()
        assert (stats.timeouts, stats.waits, stats.waiting) == (1, 0, 0)
        for client in held:
            pool.put(client)


@shell_test
async def test_a_timed_get_raises_pool_timeout_and_counts_it(shell: Shell) -> None:
    async with client_pool(shell, Hooks("plain"), size=1) as pool:
        held = await pool.get()
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match=r"within 0\.1s: size 1, 1 lent") as raised:
            await pool.get(timeout=0.1)
        assert 0.1 - EARLY <= time.monotonic() - started < 0.1 + 1.0
        assert raised.value.timeout == 0.1
        stats = pool.stats()
        assert (stats.timeouts, stats.waits, stats.waiting) == (1, 1, 0)
        assert stats.wait_time >= 0.09
        pool.put(held)
        await assert_whole(pool)


@shell_test
async def test_waiters_are_served_first_come_first_served(shell: Shell) -> None:
    async with client_pool(shell, Hooks("plain"), size=1) as pool:
        held = await pool.get()
        served: list[int] = []

        async def taker(number: int) -> None:
            client = await pool.get(timeout=BOUND)
            served.append(number)
            pool.put(client)

        tasks = []
        for number in range(4):
            tasks.append(asyncio.ensure_future(taker(number)))
            await until(lambda n=number: pool.stats().waiting == n + 1)  # type: ignore[misc]
        pool.put(held)
        await asyncio.gather(*tasks)
        assert served == [0, 1, 2, 3]
        stats = pool.stats()
        assert (stats.waits, stats.lends, stats.timeouts) == (4, 5, 0)
        await assert_whole(pool)


@shell_test
async def test_put_misuse_raises_and_leaves_the_pool_as_it_was(
    shell: Shell, echo_server: EchoServer
) -> None:
    async with (
        shell.new(echo_server.address, size=2) as pool,
        shell.new(echo_server.address, size=1) as other,
    ):
        conn = await pool.get()
        await round_trip(shell, conn)
        foreign = await other.get()
        before = pool.stats()
        with pytest.raises(TypeError, match="conn: expected"):
            pool.put("not a member")
        for broken in ("yes", 1, None):
            with pytest.raises(TypeError, match="broken"):
                pool.put(conn, broken=broken)
        with pytest.raises(ValueError, match="conn: "):
            pool.put(foreign)  # another pool's member
        assert pool.stats() == before
        assert await round_trip(shell, conn) == b"ping"  # still lent, still connected
        pool.put(conn)
        after = pool.stats()
        for broken in (False, True):
            with pytest.raises(ValueError, match="not lent"):
                pool.put(conn, broken=broken)  # put twice
        assert pool.stats() == after
        assert after.broken == 0
        other.put(foreign)
        await assert_whole(pool)


@shell_test
async def test_put_misuse_of_a_client_pool_raises_and_changes_nothing(shell: Shell) -> None:
    async with client_pool(shell, Hooks("plain"), size=1) as pool:
        client = await pool.get()
        before = pool.stats()
        for stranger in (Client(99), "text"):
            with pytest.raises(ValueError, match="not lent"):
                pool.put(stranger)
        assert pool.stats() == before
        pool.put(client)
        with pytest.raises(ValueError, match="not lent"):
            pool.put(client)
        assert (pool.stats().idle, client.closed) == (1, 0)
        assert await pool.get(timeout=0) is client
        pool.put(client)


@shell_test
async def test_use_after_put_raises_value_error_and_never_dials(
    shell: Shell, echo_server: EchoServer
) -> None:
    async with shell.new(echo_server.address, size=1) as pool:
        conn = await pool.get()
        pool.put(conn)
        with pytest.raises(ValueError, match="not lent"):
            await shell.sendall(conn, b"late")
        assert pool.stats().dials == 0


# -- connection() ----------------------------------------------------------------------------


async def _raise_in_block(shell: Shell, pool: ShellPool, error: Exception, *, io: bool) -> Any:
    """A ``connection()`` block that raises ``error`` (after a round trip, with ``io``);
    returns the member it had."""
    lent: list[Any] = []
    try:
        async with pool.connection(timeout=BOUND) as conn:
            lent.append(conn)
            if io:
                await round_trip(shell, conn)
            raise error
    except type(error):
        pass
    return lent[0]


@shell_test
async def test_connection_puts_back_broken_only_after_io(
    shell: Shell, echo_server: EchoServer
) -> None:
    async with shell.new(echo_server.address, size=1) as pool:
        async with pool.connection() as conn:
            await round_trip(shell, conn)
        await _raise_in_block(shell, pool, RuntimeError("before any I/O"), io=False)
        stats = pool.stats()
        assert (stats.broken, stats.connected, stats.idle) == (0, 1, 1)  # as it was
        await _raise_in_block(shell, pool, RuntimeError("after I/O"), io=True)
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.connected, stats.idle) == (1, 1, 0, 1)
        await until(lambda: echo_server.active == 0, "the broken connection closed")
        async with pool.connection() as conn:
            assert await round_trip(shell, conn, b"again") == b"again"
        assert pool.stats().dials == 2


@shell_test
async def test_broken_on_decides_which_errors_break_a_client(shell: Shell) -> None:
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=1, broken_on=(KeyError,)) as pool:
        first = await _raise_in_block(shell, pool, ValueError("fine"), io=False)
        assert first.closed == 0
        again = await _raise_in_block(shell, pool, KeyError("broken"), io=False)
        assert again is first
        assert first.closed == 1
        assert pool.stats().closed_broken == 1
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=1, broken_on=lambda e: "bad" in str(e)) as pool:
        client = await _raise_in_block(shell, pool, RuntimeError("fine"), io=False)
        assert client.closed == 0
        await _raise_in_block(shell, pool, RuntimeError("bad state"), io=False)
        assert client.closed == 1


# -- close -----------------------------------------------------------------------------------


@shell_test
async def test_close_wakes_waiters_with_pool_closed_and_lent_members_close_at_put(
    shell: Shell, echo_server: EchoServer
) -> None:
    pool = shell.new(echo_server.address, size=2)
    a, b = await pool.get(), await pool.get()
    await round_trip(shell, a)
    await round_trip(shell, b)
    waiters = [asyncio.ensure_future(pool.get(timeout=BOUND)) for _ in range(2)]
    await until(lambda: pool.stats().waiting == 2)
    await pool.close()
    assert pool.closed
    for waiter in waiters:
        with pytest.raises(gocp.PoolClosed, match="closed while waiting"):
            await waiter
    for timeout in (0, BOUND):
        with pytest.raises(gocp.PoolClosed):
            await pool.get(timeout=timeout)
    assert await round_trip(shell, b, b"lent") == b"lent"  # usable until put back
    pool.put(a)
    await until(lambda: echo_server.active == 1, "closed when put back")
    assert await round_trip(shell, b, b"still") == b"still"
    pool.put(b)
    await until(lambda: echo_server.active == 0, "closed when put back")
    await pool.close()  # idempotent
    stats = pool.stats()
    assert (stats.closed, stats.idle, stats.in_use, stats.waiting) == (True, 0, 0, 0)


@shell_test
async def test_close_closes_idle_members_at_once(shell: Shell, echo_server: EchoServer) -> None:
    pool = shell.new(echo_server.address, size=2)
    a, b = await pool.get(), await pool.get()
    await round_trip(shell, a)
    await round_trip(shell, b)
    pool.put(a)
    await pool.close()
    await until(lambda: echo_server.active == 1, "the idle member's connection closed")
    pool.put(b)
    await until(lambda: echo_server.active == 0)


@shell_test
async def test_close_runs_the_close_hooks_of_idle_clients(shell: Shell) -> None:
    hooks = Hooks("plain")
    pool = client_pool(shell, hooks, size=2)
    a, b = await pool.get(), await pool.get()
    pool.put(a)
    await pool.close()
    assert hooks.closed == [a]
    pool.put(b)
    assert hooks.closed == [a, b]
    await pool.close()
    assert hooks.closed_twice() == []


# -- redial, never re-send ---------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@shell_test
async def test_a_member_redials_after_a_restart_and_sends_nothing_twice(
    shell: Shell, rr_server: RequestReplyServer, reset: bool
) -> None:
    async with shell.new(rr_server.address, size=1) as pool:
        first, second = new_request_id(), new_request_id()
        async with pool.connection() as conn:
            assert await request(shell, conn, first) == 1
        rr_server.restart(reset=reset)
        await until(lambda: pool.stats().connected == 0, "the idle connection seen closed")
        async with pool.connection() as conn:
            assert await request(shell, conn, second) == 1
        stats = pool.stats()
        assert (stats.stale, stats.broken, stats.dials) == (1, 0, 2)
        assert rr_server.applied_counts() == {first: 1, second: 1}


@shell_test
async def test_a_request_that_fails_midway_raises_and_is_never_resent(
    shell: Shell, rr_server: RequestReplyServer
) -> None:
    async with shell.new(rr_server.address, size=1) as pool:
        failed, later = new_request_id(), new_request_id()
        conn = await pool.get()
        rr_server.fail_next(1, "reset")
        with pytest.raises(gocp.ConnectionBroken):
            await request(shell, conn, failed)
        assert not conn.connected
        assert await request(shell, conn, later) == 1  # the member redials
        pool.put(conn)
        assert rr_server.applied_counts() == {failed: 1, later: 1}
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.dials) == (1, 1, 2)


@shell_test
async def test_io_timeout_raises_io_timeout_and_drops_the_connection(
    shell: Shell, rr_server: RequestReplyServer
) -> None:
    async with shell.new(rr_server.address, size=1, io_timeout=0.2) as pool:
        stalled, later = new_request_id(), new_request_id()
        conn = await pool.get()
        rr_server.fail_next(1, "stall")
        with pytest.raises(gocp.IOTimeout):
            await request(shell, conn, stalled)
        assert not conn.connected
        assert await request(shell, conn, later) == 1
        pool.put(conn)
        assert rr_server.applied_counts() == {stalled: 1, later: 1}


@shell_test
async def test_a_proxy_reset_of_idle_connections_is_replaced_before_use(
    shell: Shell, rr_server: RequestReplyServer
) -> None:
    with FaultProxy(rr_server.address) as proxy:
        async with shell.new(proxy.address, size=2) as pool:
            ids = [new_request_id() for _ in range(4)]
            members = [await pool.get(), await pool.get()]
            for member, request_id in zip(members, ids[:2], strict=True):
                assert await request(shell, member, request_id) == 1
                pool.put(member)
            proxy.reset()
            for request_id in ids[2:]:
                async with pool.connection() as conn:
                    assert await request(shell, conn, request_id) == 1
            assert (pool.stats().stale, pool.stats().broken) == (2, 0)
            assert rr_server.applied_counts() == dict.fromkeys(ids, 1)


# -- dialling and its backoff -------------------------------------------------------------------


@shell_test
async def test_a_refused_dial_raises_dial_error_and_the_backoff_fails_fast(shell: Shell) -> None:
    clock = FakeClock()
    address = unused_address()
    async with shell.new(address, size=2, retry_min=5, retry_max=10, clock=clock) as pool:
        a, b = await pool.get(), await pool.get()
        with pytest.raises(gocp.DialError) as first:
            await shell.sendall(a, b"x")
        assert isinstance(first.value.__cause__, ConnectionRefusedError)
        assert 5 <= first.value.retry_in <= 10
        started = time.monotonic()
        with pytest.raises(gocp.DialError, match="backing off") as again:
            await shell.sendall(b, b"x")
        assert time.monotonic() - started < 0.5
        assert 0 < again.value.retry_in <= first.value.retry_in
        stats = pool.stats()
        assert (stats.dials, stats.dial_failures) == (1, 1)
        clock.advance(first.value.retry_in + 0.01)
        with EchoServer(*address):
            assert await round_trip(shell, a) == b"ping"
            assert (pool.stats().dials, pool.stats().dial_failures) == (2, 1)
            pool.put(a)
            pool.put(b)


@shell_test
async def test_a_failing_dial_hook_is_a_dial_error_and_the_slot_comes_back(shell: Shell) -> None:
    clock = FakeClock()
    hooks = Hooks("plain")
    hooks.dial_error = OSError("refused")
    async with client_pool(shell, hooks, size=1, retry_min=5, retry_max=10, clock=clock) as pool:
        with pytest.raises(gocp.DialError) as raised:
            await pool.get(timeout=0)
        assert raised.value.__cause__ is hooks.dial_error
        assert 5 <= raised.value.retry_in <= 10
        with pytest.raises(gocp.DialError, match="backing off"):
            await pool.get(timeout=BOUND)
        assert hooks.started["dial"] == 1
        assert gauges(pool) == (1, 0, 0, 1)
        hooks.dial_error = None
        clock.advance(10.5)
        client = await pool.get(timeout=0)
        assert client is hooks.made[0]
        pool.put(client)


@shell_test
async def test_get_connect_rides_out_a_restart_within_its_timeout(shell: Shell) -> None:
    with EchoServer() as server:
        async with shell.new(server.address, size=1, retry_min=0.02, retry_max=0.05) as pool:
            async with pool.connection() as conn:
                await round_trip(shell, conn)
            server.stop()
            getter = asyncio.ensure_future(pool.get(timeout=BOUND, connect=True))
            await until(lambda: pool.stats().dial_failures >= 2, "a few refused dials")
            assert not getter.done()
            server.start()
            conn = await getter
            assert conn.connected
            assert await round_trip(shell, conn, b"back") == b"back"
            pool.put(conn)
            assert pool.stats().stale == 1


@shell_test
async def test_get_connect_raises_the_last_dial_error_when_the_server_stays_down(
    shell: Shell,
) -> None:
    async with shell.new(unused_address(), size=1, retry_min=0.02, retry_max=0.05) as pool:
        started = time.monotonic()
        with pytest.raises(gocp.DialError):
            await pool.get(timeout=0.3, connect=True)
        assert time.monotonic() - started < 0.3 + 1.0
        assert pool.stats().dial_failures >= 2
        await assert_whole(pool)


# -- stats --------------------------------------------------------------------------------


@shell_test
async def test_stats_after_a_known_sequence(shell: Shell) -> None:
    clock = SilentClock(start=2000.0)
    hooks = Hooks("plain")
    pool = client_pool(shell, hooks, size=2, name="known", clock=clock)
    a = await pool.get(timeout=0)  # member 0 dials client 1
    b = await pool.get(timeout=0)  # member 1 dials client 2
    with pytest.raises(gocp.PoolTimeout):
        await pool.get(timeout=0)
    clock.advance(3)
    pool.put(a, broken=True)  # client 1 closed
    pool.put(b)
    c = await pool.get(timeout=0)  # member 0 again: it dials client 3
    pool.put(c)
    d = await pool.get(timeout=0)  # member 1: client 2, its second lend
    assert (c, d) == (hooks.made[2], b)
    stats = pool.stats()
    expected = {
        "name": "known",
        "address": None,
        "size": 2,
        "idle": 1,
        "in_use": 1,
        "waiting": 0,
        "connected": 2,
        "overflow": 0,
        "lends": 4,
        "waits": 0,
        "timeouts": 1,
        "dials": 3,
        "dial_failures": 0,
        "broken": 1,
        "stale": 0,
        "leaks": 0,
        "hook_failures": 0,
        "closed_idle": 0,
        "closed_lifetime": 0,
        "closed_check": 0,
        "closed_broken": 1,
        "closed_overflow": 0,
        "closed_fresh": 0,
        "closed": False,
    }
    got = attrs.asdict(stats, recurse=False)
    assert got.pop("wait_time") == 0.0
    members = got.pop("members")
    assert got == expected
    assert [(m.index, m.lent, m.connected, m.uses) for m in members] == [
        (0, False, True, 1),
        (1, True, True, 2),
    ]
    # Wall times that move with the pool's clock: client 2 was made at its start (2000),
    # client 3 three seconds later, when it was also put back.
    assert members[1].connected_at is not None
    assert abs(members[1].connected_at - time.time()) < 5.0
    assert members[0].connected_at == pytest.approx(members[1].connected_at + 3)
    assert members[0].last_used_at == pytest.approx(members[1].connected_at + 3)
    pool.put(d)
    await pool.close()
    assert pool.stats().closed


# -- lifecycle options on a FakeClock ------------------------------------------------------------


@shell_test
async def test_idle_timeout_closes_idle_clients_in_the_background(shell: Shell) -> None:
    clock = FakeClock()
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=2, idle_timeout=10, clock=clock) as pool:
        first = [await pool.get(timeout=0), await pool.get(timeout=0)]
        for client in first:
            pool.put(client)
        clock.advance(10.5)
        # counted when doomed, closed just after (outside the lock): wait for both
        await until(
            lambda: pool.stats().closed_idle == 2 and len(hooks.closed) == 2,
            "both idle clients closed",
        )
        assert sorted(c.number for c in hooks.closed) == [1, 2]
        assert gauges(pool) == (2, 0, 0, 2)
        assert pool.stats().connected == 0
        again = await pool.get(timeout=0)
        assert again.number == 3  # the slot stays and redials
        pool.put(again)


@shell_test
async def test_max_lifetime_never_closes_a_lent_client_and_closes_it_at_put(shell: Shell) -> None:
    clock = FakeClock()
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=1, max_lifetime=100, clock=clock) as pool:
        client = await pool.get()
        clock.advance(150)
        await iterations(5)
        assert client.closed == 0
        pool.put(client)
        assert client.closed == 1
        assert pool.stats().closed_lifetime == 1
        newer = await pool.get()
        assert newer is hooks.made[1]
        pool.put(newer)


@shell_test
async def test_check_runs_before_lending_only_after_check_interval(shell: Shell) -> None:
    clock = SilentClock()
    hooks = Hooks("plain")
    async with client_pool(
        shell, hooks, check=True, size=1, check_interval=1000, clock=clock
    ) as pool:
        client = await pool.get(timeout=0)
        pool.put(client)
        for _ in range(3):  # used often enough: never checked
            clock.advance(999)
            assert await pool.get(timeout=0) is client
            pool.put(client)
        assert hooks.checked == []
        clock.advance(1000.5)
        assert await pool.get(timeout=0) is client
        assert hooks.checked == [client]
        pool.put(client)
        clock.advance(1000.5)
        hooks.check_result = False
        fresh = await pool.get(timeout=0)
        assert fresh is not client
        assert hooks.events == ["dial 1", "check 1", "check 1", "close 1", "dial 2"]
        assert (pool.stats().closed_check, pool.stats().hook_failures) == (1, 0)
        pool.put(fresh)


@shell_test
async def test_min_idle_members_are_dialled_and_wait_ready_waits_for_them(
    shell: Shell, echo_server: EchoServer
) -> None:
    async with shell.new(echo_server.address, size=3, min_idle=2) as pool:
        await pool.wait_ready(BOUND)
        assert pool.stats().connected >= 2
        await until(lambda: echo_server.active == 2)
        await until(lambda: pool.stats().idle == 3)
        assert (pool.stats().connected, pool.stats().dials) == (2, 2)


@shell_test
async def test_wait_ready_times_out_while_refused_and_raises_when_closed(shell: Shell) -> None:
    pool = shell.new(unused_address(), size=2, min_idle=2, retry_min=0.01, retry_max=0.05)
    started = time.monotonic()
    with pytest.raises(gocp.PoolTimeout, match="min_idle"):
        await pool.wait_ready(0.2)
    assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + 1.0
    assert pool.stats().dial_failures >= 1
    await pool.close()
    with pytest.raises(gocp.PoolClosed):
        await pool.wait_ready(BOUND)


@shell_test
async def test_overflow_clients_open_when_every_member_is_lent_and_close_at_put(
    shell: Shell,
) -> None:
    hooks = Hooks("plain")
    async with client_pool(shell, hooks, size=1, max_overflow=1) as pool:
        member = await pool.get(timeout=0)
        extra = await pool.get(timeout=0)
        stats = pool.stats()
        assert (stats.overflow, stats.in_use, stats.idle, len(stats.members)) == (1, 2, 0, 1)
        with pytest.raises(gocp.PoolTimeout, match="overflow 1 of 1"):
            await pool.get(timeout=0)
        pool.put(extra)
        assert extra.closed == 1
        stats = pool.stats()
        assert (stats.overflow, stats.closed_overflow, stats.in_use) == (0, 1, 1)
        pool.put(member)
        assert member.closed == 0
        await assert_whole(pool)


@shell_test
async def test_get_fresh_closes_the_old_connection_first(
    shell: Shell, echo_server: EchoServer
) -> None:
    async with shell.new(echo_server.address, size=1) as pool:
        async with pool.connection() as conn:
            await round_trip(shell, conn)
        async with pool.connection(fresh=True) as again:
            assert again is conn
            assert await round_trip(shell, again) == b"ping"
        stats = pool.stats()
        assert (stats.closed_fresh, stats.dials) == (1, 2)
        await until(lambda: echo_server.active == 1, "the old connection closed")


@shell_test
async def test_a_pool_timeout_names_where_the_longest_held_member_was_taken(
    shell: Shell,
) -> None:
    clock = FakeClock()
    async with client_pool(shell, Hooks("plain"), size=2, leak_timeout=100, clock=clock) as pool:
        oldest = await pool.get(timeout=0)
        clock.advance(5)
        newer = await pool.get(timeout=0)
        with pytest.raises(gocp.PoolTimeout) as raised:
            await pool.get(timeout=0)
        message = str(raised.value)
        assert "held (for 5.0s)" in message, message
        assert f"{HERE}:" in message, message  # the caller of get, not gocp or asyncio
        pool.put(oldest)
        pool.put(newer)


@shell_test
async def test_a_leak_is_counted_once_per_lend(shell: Shell) -> None:
    clock = FakeClock()
    async with client_pool(shell, Hooks("plain"), size=1, leak_timeout=10, clock=clock) as pool:
        client = await pool.get(timeout=0)
        clock.advance(10.5)
        await until(lambda: pool.stats().leaks == 1, "the leak counted")
        clock.advance(10.5)
        await iterations(5)
        assert pool.stats().leaks == 1
        pool.put(client)
