"""gocp.aio: the asyncio pools of ``gocp.aio.new`` and ``gocp.aio.pool`` (issue 11).

Behaviour through the public API against real loopback servers (``EchoServer``,
``RequestReplyServer``, ``FaultProxy``), every time-dependent policy on a
``FakeClock``. Each test runs under the default event loop and under uvloop
(``aiokit.aio_test``), within a deadline, and fails if it leaves a task pending;
``conftest.no_leaks`` checks threads and descriptors after it.

The heart of the file is cancellation: a ``get`` cancelled while queued, after
being served, during a dial or a check; ``put`` (which never awaits); a
cancelled dial ending its probe; ``close`` cancelled; ``asyncio.timeout()``
around a call. Each is tested at a chosen await point, then by seeded random
schedules that cancel after N loop iterations (N drawn from the seed) and
show which await points they reached. After each: the pool is back to full
size with consistent stats, and no task is left pending.

No test sleeps to wait for something: events, futures, and polling with a
deadline (``aiokit.until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import random
import sys
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokit import (
    BOUND,
    EARLY,
    LOOPS,
    Client,
    HangingListener,
    Hooks,
    aio_test,
    assert_consistent,
    assert_whole,
    cancel_after,
    iterations,
    other_tasks,
    request,
    round_trip,
    run,
    settle,
    until,
)
from invariants import new_request_id, unused_address

import gocp
import gocp.aio
from gocp.aio import AioConn, AioPool
from gocp.testing import EchoServer, FakeClock, FaultProxy, RequestReplyServer

HERE = os.path.basename(__file__)


class SilentClock(FakeClock):
    """A ``FakeClock`` whose ``advance`` does not wake the pool's upkeep task: with
    durations of 1000 s its own nap outlasts the test, so only ``get`` and ``put`` see
    the clock move (deterministic tests of what they do)."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        pass


class Records(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in list(self.records) if getattr(r, "event", None) == name]


@pytest.fixture
def records() -> Iterator[tuple[logging.Logger, Records]]:
    """A ``logging.Logger`` outside the logging tree and the records it got."""
    logger = logging.Logger("gocp-test-aio")
    handler = Records()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def client_pool(hooks: Hooks, *, check: bool = False, **options: Any) -> AioPool[Client]:
    """A ``gocp.aio.pool`` of ``hooks`` clients (with its check hook when ``check``)."""
    return gocp.aio.pool(
        hooks.dial, close=hooks.close, check=hooks.check if check else None, **options
    )


KINDS = pytest.mark.parametrize("kind", ["async", "plain"])


# -- making a pool ---------------------------------------------------------------------


@pytest.mark.parametrize("aio_loop", LOOPS)
def test_a_pool_made_outside_a_loop_works_in_the_loop_of_its_first_use(
    aio_loop: str, echo_server: EchoServer
) -> None:
    clock = FakeClock()
    # No running loop here, and the server need not be up: making a pool never dials.
    pool = gocp.aio.new(echo_server.address, size=2, idle_timeout=10, clock=clock)
    hooks = Hooks()
    clients = client_pool(hooks, size=1, idle_timeout=10, clock=clock)
    assert (pool.stats().dials, hooks.started["dial"]) == (0, 0)
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    async def first_use() -> None:
        async with pool.connection(timeout=BOUND) as conn:
            assert await round_trip(conn) == b"ping"
        async with clients.connection(timeout=BOUND) as client:
            assert client is hooks.made[0]
        # The upkeep (idle_timeout) runs as a task of this loop.
        clock.advance(10.5)
        await until(lambda: pool.stats().closed_idle == 1, "the idle socket closed")
        await until(lambda: hooks.closed == hooks.made, "the idle client closed")
        await pool.close()
        await clients.close()

    run(first_use(), aio_loop)
    assert pool.closed
    assert clients.closed


@pytest.mark.parametrize("aio_loop", LOOPS)
def test_a_pool_never_used_can_be_closed_in_any_loop(aio_loop: str) -> None:
    pool = gocp.aio.new(unused_address(), size=2, min_idle=1)
    run(pool.close(), aio_loop)
    assert pool.stats().closed
    assert pool.stats().dials == 0


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [
        (lambda: gocp.aio.new("127.0.0.1:1", size=0), ValueError, "size"),
        (lambda: gocp.aio.new("127.0.0.1:1", size="2"), TypeError, "size"),  # type: ignore[arg-type]
        (lambda: gocp.aio.new("no port"), ValueError, "address"),
        (lambda: gocp.aio.new("127.0.0.1:1", io_timeout=-1), ValueError, "io_timeout"),
        (lambda: gocp.aio.new("127.0.0.1:1", bogus=1), TypeError, "bogus"),
        (lambda: gocp.aio.new("127.0.0.1:1", size=2, min_idle=3), ValueError, "min_idle"),
        (lambda: gocp.aio.new("127.0.0.1:1", check="ping"), TypeError, "check"),  # type: ignore[arg-type]
        (lambda: gocp.aio.pool("dial"), TypeError, "dial"),  # type: ignore[arg-type]
        (lambda: gocp.aio.pool(Hooks().dial, io_timeout=1.0), TypeError, "io_timeout"),
        (lambda: gocp.aio.pool(Hooks().dial, check_interval=1.0), ValueError, "check_interval"),
        (lambda: gocp.aio.pool(Hooks().dial, close=3), TypeError, "close"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_at_once_naming_the_argument(
    make: Callable[[], object], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        make()


@aio_test
async def test_bad_get_arguments_raise_and_lose_no_slot(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        before = pool.stats()
        with pytest.raises(ValueError, match="timeout"):
            await pool.get(timeout=-1)
        with pytest.raises(TypeError, match="timeout"):
            await pool.get(timeout="1")  # type: ignore[arg-type]
        assert pool.stats() == before
        with pytest.raises(TypeError, match="fresh"):
            await pool.get(fresh="yes")  # type: ignore[arg-type]
        await assert_whole(pool)


# -- lending -------------------------------------------------------------------------------


@aio_test
async def test_members_are_lent_in_ring_order(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=3) as pool:
        a, b, c = [await pool.get(timeout=0) for _ in range(3)]
        assert isinstance(a, AioConn)
        assert len({id(a), id(b), id(c)}) == 3
        assert [a.index, b.index, c.index] == [0, 1, 2]
        for member in (b, c, a):
            pool.put(member)
        assert [await pool.get(timeout=0) for _ in range(3)] == [b, c, a]
        for member in (b, c, a):
            pool.put(member)
        stats = pool.stats()
        assert (stats.lends, stats.idle, stats.in_use, stats.dials) == (6, 3, 0, 0)


@aio_test
async def test_get_with_timeout_zero_never_waits_and_says_why() -> None:
    hooks = Hooks()
    async with client_pool(hooks, size=2, name="zero") as pool:
        held = [await pool.get(timeout=0), await pool.get(timeout=0)]
        waiter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: pool.stats().waiting == 1)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as raised:
            await pool.get(timeout=0)
        assert time.monotonic() - started < 0.5
        assert str(raised.value) == (
            "no member of zero became free within 0.0s: size 2, 2 lent, 1 waiting"
        )
        assert raised.value.timeout == 0.0
        stats = pool.stats()
        assert (stats.timeouts, stats.waits, stats.waiting) == (1, 1, 1)
        pool.put(held[0])
        assert await waiter is held[0]
        for client in held:
            pool.put(client)
        await assert_whole(pool)


@aio_test
async def test_get_times_out_with_pool_timeout_and_counts_it() -> None:
    async with client_pool(Hooks(), size=1) as pool:
        client = await pool.get()
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match=r"within 0.1s: size 1, 1 lent") as raised:
            await pool.get(timeout=0.1)
        elapsed = time.monotonic() - started
        assert 0.1 - EARLY <= elapsed < 0.1 + 1.0, elapsed
        assert raised.value.timeout == 0.1
        assert isinstance(raised.value, TimeoutError)
        stats = pool.stats()
        assert (stats.timeouts, stats.waits, stats.waiting) == (1, 1, 0)
        assert stats.wait_time >= 0.09
        pool.put(client)
        await assert_whole(pool)


@aio_test
async def test_waiting_tasks_are_served_first_come_first_served() -> None:
    async with client_pool(Hooks(), size=1) as pool:
        held = await pool.get()
        served: list[int] = []

        async def taker(number: int) -> None:
            client = await pool.get(timeout=BOUND)
            served.append(number)
            await iterations(2)  # others queue up meanwhile
            pool.put(client)

        tasks = []
        for number in range(5):
            tasks.append(asyncio.ensure_future(taker(number)))
            await until(lambda n=number: pool.stats().waiting == n + 1)  # type: ignore[misc]
        pool.put(held)
        await asyncio.gather(*tasks)
        assert served == [0, 1, 2, 3, 4]
        stats = pool.stats()
        assert (stats.waits, stats.lends, stats.timeouts) == (5, 6, 0)
        await assert_whole(pool)


@aio_test
async def test_put_never_awaits_and_hands_the_member_to_the_first_waiter_at_once() -> None:
    assert not inspect.iscoroutinefunction(AioPool.put)
    async with client_pool(Hooks(), size=2) as pool:
        a, b = await pool.get(), await pool.get()
        waiter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: pool.stats().waiting == 1)
        # No await between put and the look: the waiter is served inside put.
        assert pool.put(a) is None  # type: ignore[func-returns-value]
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.waiting) == (0, 2, 0)
        assert await waiter is a
        # put is a plain function: a callback of the loop may call it.
        asyncio.get_running_loop().call_soon(pool.put, b)
        await until(lambda: pool.stats().idle == 1)
        pool.put(a)
        await assert_whole(pool)


@aio_test
async def test_put_misuse_raises_and_leaves_the_pool_unchanged(echo_server: EchoServer) -> None:
    threaded = gocp.new(echo_server.address, size=1)
    async with (
        gocp.aio.new(echo_server.address, size=2) as pool,
        gocp.aio.new(echo_server.address, size=1) as other,
    ):
        conn = await pool.get()
        await round_trip(conn)
        foreign = await other.get()
        stranger = threaded.get()
        before = pool.stats()
        with pytest.raises(TypeError, match=r"conn: expected a gocp\.aio\.AioConn"):
            pool.put("not a member")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"conn: expected a gocp\.aio\.AioConn"):
            pool.put(stranger)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="broken"):
            pool.put(conn, broken="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="broken"):
            pool.put(conn, broken=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"conn: .* was not lent by"):
            pool.put(foreign)
        assert pool.stats() == before
        assert await round_trip(conn) == b"ping"  # still lent, still connected
        pool.put(conn)
        after_put = pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            pool.put(conn)
        with pytest.raises(ValueError, match="not lent"):
            pool.put(conn, broken=True)
        assert pool.stats() == after_put
        assert after_put.broken == 0
        other.put(foreign)
        threaded.put(stranger)
        await assert_whole(pool)
    threaded.close()


@aio_test
async def test_put_misuse_of_a_client_pool_raises_and_changes_nothing() -> None:
    hooks = Hooks()
    async with client_pool(hooks, size=1) as pool:
        client = await pool.get()
        before = pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            pool.put(Client(99))
        with pytest.raises(ValueError, match="not lent"):
            pool.put("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="broken"):
            pool.put(client, broken=None)  # type: ignore[arg-type]
        assert pool.stats() == before
        pool.put(client)
        with pytest.raises(ValueError, match="not lent"):
            pool.put(client)
        assert (pool.stats().idle, client.closed) == (1, 0)
        assert await pool.get(timeout=0) is client
        pool.put(client)


@aio_test
async def test_put_broken_closes_the_socket_and_the_member_redials(
    echo_server: EchoServer,
) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        conn = await pool.get()
        await round_trip(conn)
        sock = conn.socket
        assert sock is not None
        pool.put(conn, broken=True)
        await until(lambda: sock.fileno() == -1, "the socket closed")
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.connected) == (1, 1, 0)
        await until(lambda: echo_server.active == 0, "the server sees the close")
        async with pool.connection() as again:
            assert again is conn
            assert await round_trip(again, b"again") == b"again"
        assert pool.stats().dials == 2


@aio_test
async def test_use_after_put_raises_value_error_and_never_dials(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        conn = await pool.get()
        pool.put(conn)
        with pytest.raises(ValueError, match="not lent"):
            await conn.sendall(b"late")
        with pytest.raises(ValueError, match="not lent"):
            await conn.recv(1)
        with pytest.raises(ValueError, match="not lent"):
            await conn.connect()
        assert pool.stats().dials == 0
        await assert_whole(pool)


# -- connection() and async with conn ------------------------------------------------------


async def raising_block(lend: Any, error: Exception, *, io: bool) -> Any:
    """``async with lend as conn:`` (a ``connection()``, or a member) whose block raises
    ``error``, after a round trip with ``io``; checks it comes out; returns the member."""
    lent: list[Any] = []

    async def block() -> None:
        async with lend as conn:
            lent.append(conn)
            if io:
                await round_trip(conn)
            raise error

    with pytest.raises(type(error)) as raised:
        await block()
    assert raised.value is error
    return lent[0]


@aio_test
async def test_connection_puts_back_broken_only_after_io(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        async with pool.connection(timeout=BOUND) as conn:
            await round_trip(conn)
            sock = conn.socket
        assert (pool.stats().idle, pool.stats().connected) == (1, 1)

        await raising_block(pool.connection(), RuntimeError("before any I/O"), io=False)
        stats = pool.stats()
        assert (stats.broken, stats.connected, stats.idle) == (0, 1, 1)  # as it was

        await raising_block(pool.connection(), RuntimeError("after I/O"), io=True)
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.connected) == (1, 1, 0)
        assert sock is not None
        await until(lambda: sock.fileno() == -1, "the socket closed")
        await assert_whole(pool)


@aio_test
async def test_async_with_a_member_gives_it_back_by_the_same_rule(
    echo_server: EchoServer,
) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        async with await pool.get() as conn:
            await round_trip(conn)
        assert pool.stats().idle == 1
        await raising_block(await pool.get(), KeyError("no I/O"), io=False)
        assert (pool.stats().broken, pool.stats().connected) == (0, 1)
        await raising_block(await pool.get(), KeyError("after I/O"), io=True)
        assert (pool.stats().broken, pool.stats().connected) == (1, 0)
        await assert_whole(pool)


@aio_test
async def test_a_connection_context_can_be_entered_once(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=2) as pool:
        lend = pool.connection()
        async with lend:
            with pytest.raises(RuntimeError, match="entered once"):
                await lend.__aenter__()
        await assert_whole(pool)


@aio_test
async def test_connection_raises_get_errors_at_async_with() -> None:
    hooks = Hooks()
    pool = client_pool(hooks, size=1)
    async with pool.connection():
        with pytest.raises(gocp.PoolTimeout):
            async with pool.connection(timeout=0.01):
                pass
    await pool.close()
    with pytest.raises(gocp.PoolClosed):
        async with pool.connection():
            pass


@aio_test
async def test_broken_on_decides_for_a_client_pool() -> None:
    hooks = Hooks()
    async with client_pool(hooks, size=1, broken_on=(KeyError,)) as pool:
        first = await raising_block(pool.connection(), ValueError("not broken"), io=False)
        assert first.closed == 0
        again = await raising_block(pool.connection(), KeyError("broken"), io=False)
        assert again is first
        await until(lambda: first.closed == 1, "the broken client closed")
        assert pool.stats().closed_broken == 1
    hooks = Hooks()
    async with client_pool(hooks, size=1, broken_on=lambda exc: "bad" in str(exc)) as pool:
        client = await raising_block(pool.connection(), RuntimeError("fine"), io=False)
        assert client.closed == 0
        await raising_block(pool.connection(), RuntimeError("bad state"), io=False)
        await until(lambda: client.closed == 1, "the broken client closed")
        await assert_whole(pool)


# -- member I/O: redial, stale check, errors, timeouts, abort ------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@aio_test
async def test_a_member_redials_after_a_server_restart_and_sends_nothing_twice(
    rr_server: RequestReplyServer, reset: bool
) -> None:
    async with gocp.aio.new(rr_server.address, size=1) as pool:
        first, second = new_request_id(), new_request_id()
        async with pool.connection() as conn:
            assert await request(conn, first) == 1
        rr_server.restart(reset=reset)
        await until(lambda: pool.stats().connected == 0, "the idle socket seen closed")
        async with pool.connection() as conn:
            assert await request(conn, second) == 1  # replaced before use: nothing lost
        stats = pool.stats()
        assert (stats.stale, stats.broken, stats.dials, stats.dial_failures) == (1, 0, 2, 0)
        assert rr_server.applied_counts() == {first: 1, second: 1}
        await assert_whole(pool)


@aio_test
async def test_idle_connections_reset_through_a_proxy_are_replaced_before_use(
    rr_server: RequestReplyServer,
) -> None:
    with FaultProxy(rr_server.address) as proxy:
        async with gocp.aio.new(proxy.address, size=2) as pool:
            ids = [new_request_id() for _ in range(4)]
            members = [await pool.get(), await pool.get()]
            for member, request_id in zip(members, ids[:2], strict=True):
                assert await request(member, request_id) == 1
                pool.put(member)
            proxy.reset()
            for request_id in ids[2:]:
                async with pool.connection() as conn:
                    assert await request(conn, request_id) == 1
            stats = pool.stats()
            assert (stats.stale, stats.broken) == (2, 0)
            assert rr_server.applied_counts() == dict.fromkeys(ids, 1)


@aio_test
async def test_a_failure_during_a_request_raises_and_the_request_is_never_resent(
    rr_server: RequestReplyServer,
) -> None:
    async with gocp.aio.new(rr_server.address, size=1) as pool:
        failed, later = new_request_id(), new_request_id()
        conn = await pool.get()
        await request(conn, new_request_id())
        rr_server.fail_next(1, "reset")
        with pytest.raises(gocp.ConnectionBroken) as raised:
            await request(conn, failed)
        assert isinstance(raised.value.__cause__, OSError) or raised.value.__cause__ is None
        assert not conn.connected
        # The next operation, in the same lend, redials; the failed one is not re-sent.
        assert await request(conn, later) == 1
        pool.put(conn)
        assert rr_server.applied(failed) == 1
        assert rr_server.duplicates() == {}
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.dials) == (1, 1, 2)
        await assert_whole(pool)


@aio_test
async def test_a_peer_that_closes_makes_recv_raise_not_return_empty(
    echo_server: EchoServer,
) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        conn = await pool.get()
        await round_trip(conn)
        echo_server.kill_connections()
        with pytest.raises(gocp.ConnectionBroken, match="peer closed"):
            await conn.recv(10)
        buffer = bytearray(4)
        await conn.sendall(b"ping")  # redials
        got = 0
        while got < 4:
            got += await conn.recv_into(memoryview(buffer)[got:])
        assert bytes(buffer) == b"ping"
        pool.put(conn)
        assert pool.stats().broken == 1


@aio_test
async def test_a_refused_dial_is_a_dial_error_and_the_backoff_fails_fast() -> None:
    clock = FakeClock()
    address = unused_address()
    async with gocp.aio.new(address, size=2, retry_min=5, retry_max=10, clock=clock) as pool:
        a, b = await pool.get(), await pool.get()
        with pytest.raises(gocp.DialError) as first:
            await a.sendall(b"x")
        assert isinstance(first.value.__cause__, ConnectionRefusedError)
        assert 5 <= first.value.retry_in <= 10
        assert first.value.address == f"{address[0]}:{address[1]}"
        started = time.monotonic()
        with pytest.raises(gocp.DialError, match="backing off") as again:
            await b.recv(1)
        assert time.monotonic() - started < 0.5
        assert 0 < again.value.retry_in <= first.value.retry_in
        assert isinstance(again.value.__cause__, ConnectionRefusedError)
        stats = pool.stats()
        assert (stats.dials, stats.dial_failures, stats.connected) == (1, 1, 0)

        clock.advance(first.value.retry_in + 0.01)
        with EchoServer(*address):
            assert await round_trip(a) == b"ping"
            stats = pool.stats()
            assert (stats.dials, stats.dial_failures, stats.connected) == (2, 1, 1)
            pool.put(a)
            pool.put(b)
            await assert_whole(pool)


@aio_test
async def test_get_connect_rides_out_a_restart_within_its_timeout() -> None:
    with EchoServer() as server:
        async with gocp.aio.new(server.address, size=1, retry_min=0.02, retry_max=0.05) as pool:
            async with pool.connection() as conn:
                await round_trip(conn)
            server.stop()
            getter = asyncio.ensure_future(pool.get(timeout=BOUND, connect=True))
            await until(lambda: pool.stats().dial_failures >= 2, "a few refused dials")
            assert not getter.done()
            server.start()
            conn = await getter
            assert conn.connected
            assert await round_trip(conn, b"back") == b"back"
            pool.put(conn)
            stats = pool.stats()
            assert stats.dials == stats.dial_failures + 2
            assert stats.stale == 1
            await assert_whole(pool)


@aio_test
async def test_get_connect_raises_the_last_dial_error_when_the_server_stays_down() -> None:
    async with gocp.aio.new(unused_address(), size=1, retry_min=0.02, retry_max=0.05) as pool:
        started = time.monotonic()
        with pytest.raises(gocp.DialError) as raised:
            await pool.get(timeout=0.3, connect=True)
        assert time.monotonic() - started < 0.3 + 1.0
        assert not isinstance(raised.value, gocp.PoolTimeout)
        assert pool.stats().dial_failures >= 2
        await assert_whole(pool)


@aio_test
async def test_io_timeout_raises_io_timeout_and_drops_the_connection(
    rr_server: RequestReplyServer,
) -> None:
    async with gocp.aio.new(rr_server.address, size=1, io_timeout=0.2) as pool:
        stalled, later = new_request_id(), new_request_id()
        conn = await pool.get()
        rr_server.fail_next(1, "stall")
        started = time.monotonic()
        with pytest.raises(gocp.IOTimeout, match=r"no progress within 0\.2s") as raised:
            await request(conn, stalled)
        assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + 1.0
        assert isinstance(raised.value, TimeoutError)
        assert isinstance(raised.value, gocp.ConnectionBroken)
        assert not conn.connected
        assert await request(conn, later) == 1  # a new connection
        pool.put(conn)
        assert rr_server.applied_counts() == {stalled: 1, later: 1}
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.dials) == (1, 1, 2)


@aio_test
async def test_settimeout_lasts_for_the_lend(rr_server: RequestReplyServer) -> None:
    async with gocp.aio.new(rr_server.address, size=1, io_timeout=None) as pool:
        conn = await pool.get()
        conn.settimeout(0.1)
        assert conn.gettimeout() == 0.1
        rr_server.fail_next(1, "stall")
        with pytest.raises(gocp.IOTimeout):
            await request(conn, new_request_id())
        pool.put(conn)
        again = await pool.get()
        assert again.gettimeout() is None  # the pool's io_timeout again
        with pytest.raises(ValueError, match="timeout"):
            again.settimeout(0)
        pool.put(again)


@aio_test
async def test_abort_wakes_a_task_blocked_in_recv(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        conn = await pool.get()
        await round_trip(conn)
        reader = asyncio.ensure_future(conn.recv(10))
        await iterations(3)
        assert not reader.done()
        conn.abort()
        with pytest.raises(gocp.ConnectionBroken, match="aborted"):
            await reader
        assert not conn.connected
        assert await round_trip(conn) == b"ping"  # redials
        late = conn.aborter()
        pool.put(conn)
        again = await pool.get()
        late()  # a watchdog of the earlier lend: does nothing to this one
        assert await round_trip(again) == b"ping"
        pool.put(again)
        stats = pool.stats()
        assert (stats.broken, stats.dials) == (1, 2)


# -- hooks of gocp.aio.pool: coroutine functions or plain ones -----------------------------


@KINDS
@aio_test
async def test_hooks_dial_in_get_and_close_broken_and_idle_clients(kind: str) -> None:
    hooks = Hooks(kind)
    pool = client_pool(hooks, size=2)
    assert hooks.started["dial"] == 0
    a = await pool.get(timeout=0)
    assert a is hooks.made[0]
    pool.put(a)
    b = await pool.get(timeout=0)  # the other member: it dials
    assert b is hooks.made[1]
    assert await pool.get(timeout=0) is a  # kept connected
    pool.put(b, broken=True)  # put never awaits: an async close hook runs as a task
    await until(lambda: hooks.closed == [b], "the broken client closed")
    pool.put(a)
    stats = pool.stats()
    assert (stats.dials, stats.connected, stats.closed_broken, stats.address) == (2, 1, 1, None)
    await pool.close()  # awaits the close hooks of the idle clients
    assert hooks.closed == [b, a]
    assert hooks.closed_twice() == []


@KINDS
@aio_test
async def test_a_failing_dial_hook_is_a_dial_error_and_never_loses_a_slot(kind: str) -> None:
    clock = FakeClock()
    hooks = Hooks(kind)
    hooks.dial_error = ConnectionRefusedError("down")
    async with client_pool(hooks, size=2, retry_min=5, retry_max=10, clock=clock) as pool:
        with pytest.raises(gocp.DialError) as raised:
            await pool.get(timeout=0)
        assert raised.value.__cause__ is hooks.dial_error
        assert 5 <= raised.value.retry_in <= 10
        assert pool.stats().idle == 2
        with pytest.raises(gocp.DialError, match="backing off"):
            await pool.get(timeout=BOUND)  # fails fast: the hook is not called
        assert hooks.started["dial"] == 1
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.dials, stats.dial_failures) == (2, 0, 1, 1)
        hooks.dial_error = None
        clock.advance(10.5)
        client = await pool.get(timeout=0)
        assert client is hooks.made[0]
        pool.put(client)
        await assert_whole(pool)


@KINDS
@aio_test
async def test_a_dial_hook_returning_none_or_a_held_client_is_a_dial_error(kind: str) -> None:
    async def async_none() -> None:
        return None

    held = Client(1)

    def plain_held() -> Client:
        return held

    async def async_held() -> Client:
        return held

    dial_none: Callable[[], Any] = async_none if kind == "async" else (lambda: None)
    async with gocp.aio.pool(dial_none, size=1) as pool:
        with pytest.raises(gocp.DialError, match="returned None"):
            await pool.get()
        await assert_whole(pool, lend=False)
    dial_held = async_held if kind == "async" else plain_held
    async with gocp.aio.pool(dial_held, size=2) as pool:
        first = await pool.get()
        assert first is held
        with pytest.raises(gocp.DialError, match="already holds"):
            await pool.get(timeout=0)  # the second member's dial returns the same client
        pool.put(first)
        await assert_whole(pool, lend=False)


@KINDS
@aio_test
async def test_dial_attempts_waits_out_the_backoff_within_the_timeout(kind: str) -> None:
    hooks = Hooks(kind)
    hooks.dial_error = ConnectionRefusedError("down")
    plain = hooks.dial

    def up_on_the_third() -> Any:
        if hooks.started["dial"] == 2:
            hooks.dial_error = None
        return plain()

    async with gocp.aio.pool(
        up_on_the_third, size=1, dial_attempts=3, retry_min=0.01, retry_max=0.02
    ) as pool:
        client = await pool.get(timeout=BOUND)
        assert client is hooks.made[0]
        stats = pool.stats()
        assert (stats.dials, stats.dial_failures) == (3, 2)
        pool.put(client)


@KINDS
@pytest.mark.parametrize("failure", ["returns False", "raises"])
@aio_test
async def test_check_runs_before_lending_after_check_interval(kind: str, failure: str) -> None:
    clock = SilentClock()
    hooks = Hooks(kind)
    async with client_pool(hooks, check=True, size=1, check_interval=1000, clock=clock) as pool:
        first = await pool.get(timeout=0)
        pool.put(first)
        clock.advance(999)
        assert await pool.get(timeout=0) is first
        pool.put(first)
        assert hooks.checked == []
        clock.advance(1000.5)
        assert await pool.get(timeout=0) is first
        assert hooks.checked == [first]
        pool.put(first)

        clock.advance(1000.5)
        hooks.check_result = False if failure == "returns False" else RuntimeError("dead")
        second = await pool.get(timeout=0)
        assert second is not first
        await until(lambda: first.closed == 1, "the client that failed its check closed")
        # An async close hook runs as a task: it may end after the new dial.
        assert hooks.events[:3] == ["dial 1", "check 1", "check 1"]
        assert sorted(hooks.events[3:]) == ["close 1", "dial 2"]
        if kind == "plain":
            assert hooks.events[3:] == ["close 1", "dial 2"]  # closed before the new dial
        stats = pool.stats()
        assert stats.closed_check == 1
        assert stats.hook_failures == (1 if failure == "raises" else 0)
        pool.put(second)
        hooks.check_result = True
        await assert_whole(pool)


@KINDS
@aio_test
async def test_a_failing_close_hook_is_counted_and_never_raised(kind: str) -> None:
    hooks = Hooks(kind)
    hooks.close_error = RuntimeError("close failed")
    pool = client_pool(hooks, size=2)
    a, b = await pool.get(), await pool.get()
    pool.put(a, broken=True)
    await until(lambda: pool.stats().hook_failures == 1, "the failing close counted")
    pool.put(b)
    await pool.close()
    assert pool.stats().hook_failures == 2
    assert hooks.closed == [a, b]
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.closed) == (0, 0, True)


@aio_test
async def test_close_awaits_async_close_hooks_still_running() -> None:
    hooks = Hooks()
    hooks.gates["close"] = asyncio.Event()
    pool = client_pool(hooks, size=2)
    a, b = await pool.get(), await pool.get()
    pool.put(a)
    pool.put(b, broken=True)
    closing = asyncio.ensure_future(pool.close())
    await until(lambda: hooks.started["close"] == 2, "both close hooks started")
    await iterations(5)
    assert not closing.done()  # waits for the hooks
    hooks.gates["close"].set()
    await closing
    assert sorted(c.number for c in hooks.closed) == [1, 2]
    assert hooks.running == {}


# -- lifecycle options on a FakeClock ------------------------------------------------------


@aio_test
async def test_the_upkeep_task_checks_idle_clients() -> None:
    clock = FakeClock()
    hooks = Hooks()
    async with client_pool(hooks, check=True, size=2, check_interval=10, clock=clock) as pool:
        clients = [await pool.get(timeout=0), await pool.get(timeout=0)]
        for client in clients:
            pool.put(client)
        clock.advance(10.5)
        await until(lambda: len(hooks.checked) == 2, "both idle clients checked")
        await until(lambda: pool.stats().idle == 2, "both given back")
        assert hooks.closed == []
        hooks.check_result = False
        clock.advance(10.5)
        await until(lambda: pool.stats().closed_check == 2, "both failed their check")
        await until(lambda: pool.stats().idle == 2)
        await until(lambda: len(hooks.closed) == 2, "both closed")
        assert sorted(c.number for c in hooks.closed) == [1, 2]
        assert len(hooks.made) == 2  # nothing redialled without a get
        hooks.check_result = True
        await assert_whole(pool)


@aio_test
async def test_a_get_waits_for_a_member_under_a_background_check() -> None:
    clock = FakeClock()
    hooks = Hooks()
    hooks.gates["check"] = asyncio.Event()
    async with client_pool(hooks, check=True, size=1, check_interval=10, clock=clock) as pool:
        client = await pool.get(timeout=0)
        pool.put(client)
        clock.advance(10.5)
        await until(lambda: hooks.started["check"] == 1, "the background check began")
        with pytest.raises(gocp.PoolTimeout, match="being checked or dialled"):
            await pool.get(timeout=0)
        getter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: pool.stats().waiting == 1)
        hooks.gates["check"].set()
        assert await getter is client
        pool.put(client)
        await assert_whole(pool)


@aio_test
async def test_a_socket_check_hook_receives_the_member_and_can_do_io(
    echo_server: EchoServer,
) -> None:
    clock = SilentClock()
    seen: list[AioConn] = []

    async def ping(conn: AioConn) -> bool:
        seen.append(conn)
        return await round_trip(conn, b"PING") == b"PING"

    async with gocp.aio.new(
        echo_server.address, size=1, check=ping, check_interval=1000, clock=clock
    ) as pool:
        async with pool.connection() as conn:
            await round_trip(conn)
        clock.advance(1000.5)
        async with pool.connection() as again:
            assert seen == [conn]
            assert await round_trip(again) == b"ping"
        stats = pool.stats()
        assert (stats.closed_check, stats.dials, stats.broken) == (0, 1, 0)


@aio_test
async def test_idle_timeout_closes_idle_sockets_in_the_background(
    echo_server: EchoServer,
) -> None:
    clock = FakeClock()
    async with gocp.aio.new(echo_server.address, size=2, idle_timeout=10, clock=clock) as pool:
        members = [await pool.get(), await pool.get()]
        for member in members:
            await round_trip(member)
            pool.put(member)
        clock.advance(10.5)
        await until(lambda: pool.stats().closed_idle == 2, "both idle sockets closed")
        await until(lambda: echo_server.active == 0, "the server sees them closed")
        assert pool.stats().connected == 0
        async with pool.connection() as conn:
            assert await round_trip(conn) == b"ping"
        assert pool.stats().dials == 3


@aio_test
async def test_max_lifetime_never_closes_a_lent_client_and_closes_it_at_put() -> None:
    clock = FakeClock()
    hooks = Hooks()
    async with client_pool(hooks, size=1, max_lifetime=100, clock=clock) as pool:
        client = await pool.get()
        clock.advance(150)
        await iterations(5)
        assert client.closed == 0
        pool.put(client)
        await until(lambda: client.closed == 1, "closed at put")
        assert pool.stats().closed_lifetime == 1
        newer = await pool.get()
        assert newer is hooks.made[1]
        pool.put(newer)


@aio_test
async def test_min_idle_sockets_are_dialled_and_wait_ready_waits_for_them(
    echo_server: EchoServer,
) -> None:
    async with gocp.aio.new(echo_server.address, size=3, min_idle=2) as pool:
        await pool.wait_ready(BOUND)
        assert pool.stats().connected >= 2
        await until(lambda: echo_server.active == 2)
        await until(lambda: pool.stats().idle == 3)
        stats = pool.stats()
        assert (stats.connected, stats.dials) == (2, 2)
        echo_server.kill_connections()  # refilled in the background
        await until(lambda: pool.stats().connected == 2 and echo_server.active == 2)


@aio_test
async def test_wait_ready_times_out_while_refused_then_the_pool_fills() -> None:
    address = unused_address()
    async with gocp.aio.new(address, size=2, min_idle=2, retry_min=0.01, retry_max=0.05) as pool:
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match="min_idle"):
            await pool.wait_ready(0.2)
        assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + 1.0
        assert pool.stats().dial_failures >= 1
        with EchoServer(*address) as server:
            await pool.wait_ready(BOUND)
            await until(lambda: server.active == 2)
            assert pool.stats().connected == 2


@aio_test
async def test_wait_ready_raises_pool_closed_on_a_closed_pool() -> None:
    hooks = Hooks()
    hooks.gates["dial"] = asyncio.Event()
    pool = client_pool(hooks, size=1, min_idle=1)
    waiting = asyncio.ensure_future(pool.wait_ready(BOUND))
    await until(lambda: hooks.started["dial"] == 1)
    await pool.close()
    with pytest.raises(gocp.PoolClosed):
        await waiting
    with pytest.raises(gocp.PoolClosed):
        await pool.wait_ready(0)
    assert hooks.made == []


@aio_test
async def test_overflow_clients_open_when_every_member_is_lent_and_close_at_put() -> None:
    hooks = Hooks()
    async with client_pool(hooks, size=1, max_overflow=1) as pool:
        member = await pool.get(timeout=0)
        extra = await pool.get(timeout=0)
        stats = pool.stats()
        assert (stats.overflow, stats.in_use, stats.idle, len(stats.members)) == (1, 2, 0, 1)
        assert_consistent(stats)
        with pytest.raises(gocp.PoolTimeout, match="overflow 1 of 1"):
            await pool.get(timeout=0)
        pool.put(extra)
        await until(lambda: extra.closed == 1, "the overflow client closed")
        stats = pool.stats()
        assert (stats.overflow, stats.closed_overflow, stats.in_use) == (0, 1, 1)
        pool.put(member)
        assert member.closed == 0
        await assert_whole(pool)


@aio_test
async def test_overflow_sockets(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1, max_overflow=2) as pool:
        member = await pool.get(timeout=0)
        extra = await pool.get(timeout=0)
        assert extra.overflow
        assert await round_trip(extra) == b"ping"
        sock = extra.socket
        pool.put(extra)
        assert sock is not None
        await until(lambda: sock.fileno() == -1, "the socket closed")
        pool.put(member)
        assert pool.stats().closed_overflow == 1
        await assert_whole(pool)


@aio_test
async def test_get_fresh_closes_the_old_connection_first(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        async with pool.connection() as conn:
            await round_trip(conn)
            old = conn.socket
        async with pool.connection(fresh=True) as again:
            assert again is conn
            assert old is not None
            await until(lambda: old.fileno() == -1, "the old socket closed")
            assert await round_trip(again) == b"ping"
        stats = pool.stats()
        assert (stats.closed_fresh, stats.dials) == (1, 2)


@aio_test
async def test_a_leak_is_reported_once_with_where_it_was_taken(
    records: tuple[logging.Logger, Records],
) -> None:
    logger, handler = records
    clock = FakeClock()
    hooks = Hooks()
    async with client_pool(hooks, size=1, leak_timeout=10, clock=clock, logger=logger) as pool:
        client, line = await pool.get(timeout=0), sys._getframe().f_lineno
        clock.advance(10.5)
        await until(lambda: len(handler.events("leak")) == 1, "the leak reported")
        clock.advance(10.5)
        await iterations(10)
        assert len(handler.events("leak")) == 1  # once per lend
        assert pool.stats().leaks == 1
        (report,) = handler.events("leak")
        where = f"{HERE}:{line} in "
        assert where in report.taken_at, report.taken_at  # type: ignore[attr-defined]
        pool.put(client)


@aio_test
async def test_member_stats_follow_the_pool_clock(echo_server: EchoServer) -> None:
    clock = FakeClock(start=5000.0)
    async with gocp.aio.new(echo_server.address, size=2, clock=clock) as pool:
        before = pool.stats()
        assert [(m.connected, m.connected_at, m.last_used_at) for m in before.members] == [
            (False, None, None),
            (False, None, None),
        ]
        conn = await pool.get()
        await round_trip(conn)
        clock.advance(7)
        pool.put(conn)
        first = pool.stats().members[0]
        assert first.connected
        assert not first.lent
        assert first.connected_at is not None
        assert first.last_used_at is not None
        assert first.last_used_at - first.connected_at == pytest.approx(7)
        assert first.uses == 1


# -- close ---------------------------------------------------------------------------------


@aio_test
async def test_close_wakes_waiters_with_pool_closed_and_is_idempotent() -> None:
    hooks = Hooks()
    pool = client_pool(hooks, size=1)
    held = await pool.get()
    waiters = [asyncio.ensure_future(pool.get(timeout=BOUND)) for _ in range(3)]
    await until(lambda: pool.stats().waiting == 3)
    await pool.close()
    for waiter in waiters:
        with pytest.raises(gocp.PoolClosed, match="closed while waiting"):
            await waiter
    stats = pool.stats()
    assert (stats.closed, stats.waiting, stats.in_use, stats.idle) == (True, 0, 1, 0)
    assert held.closed == 0  # its holder still uses it
    for timeout in (0, None, 1.0):
        with pytest.raises(gocp.PoolClosed):
            await pool.get(timeout=timeout)
    pool.put(held)
    await until(lambda: held.closed == 1, "closed when put back")
    await pool.close()
    await pool.close()
    assert hooks.closed == [held]
    assert pool.stats().in_use == 0


@aio_test
async def test_close_closes_idle_sockets_now_and_lent_ones_when_put_back(
    echo_server: EchoServer,
) -> None:
    pool = gocp.aio.new(echo_server.address, size=2)
    a, b = await pool.get(), await pool.get()
    await round_trip(a)
    await round_trip(b)
    pool.put(a)
    await pool.close()
    await until(lambda: echo_server.active == 1, "the idle socket closed")
    assert await round_trip(b, b"still") == b"still"  # lent: usable until put back
    pool.put(b)
    await until(lambda: echo_server.active == 0, "the lent socket closed at put")
    assert repr(pool).endswith("closed>")


@aio_test
async def test_close_leaves_no_task_pending() -> None:
    clock = FakeClock()
    hooks = Hooks()
    before = other_tasks()
    threads = set(threading.enumerate())
    pool = client_pool(
        hooks, check=True, size=3, min_idle=2, idle_timeout=50, check_interval=10, clock=clock
    )
    await pool.wait_ready(BOUND)
    client = await pool.get()
    assert other_tasks() - before, "the upkeep runs as a task"
    assert set(threading.enumerate()) == threads, "no thread per pool"
    clock.advance(10.5)  # the upkeep checks idle clients
    await until(lambda: len(hooks.checked) >= 1)
    pool.put(client, broken=True)  # its close hook runs as a task
    await pool.close()
    assert other_tasks() - before == set()  # at once, no loop iteration later
    assert hooks.live() == 0
    assert hooks.closed_twice() == []


@aio_test
async def test_async_with_pool_closes_it(echo_server: EchoServer) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool, pool.connection() as conn:
        await round_trip(conn)
    assert pool.closed
    await until(lambda: echo_server.active == 0)


@aio_test
async def test_a_pool_dropped_without_close_is_collected_and_its_upkeep_task_ends() -> None:
    hooks = Hooks()
    before = other_tasks()
    pool = client_pool(hooks, size=1, idle_timeout=1000)
    client = await pool.get()
    pool.put(client)
    assert other_tasks() - before, "the upkeep runs as a task"
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None, "the upkeep task keeps the pool alive"
    await until(
        lambda: not other_tasks() - before, "the upkeep task of a dropped pool ends", timeout=1.0
    )
    await until(lambda: client.closed == 1, "what a dropped pool held is closed", timeout=1.0)


# -- cancellation never loses a slot: each await point ---------------------------------------


@aio_test
async def test_a_get_cancelled_while_queued_leaves_the_queue() -> None:
    async with client_pool(Hooks(), size=1) as pool:
        held = await pool.get()
        getter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: pool.stats().waiting == 1)
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        stats = pool.stats()
        assert (stats.waiting, stats.waits, stats.timeouts, stats.in_use) == (0, 1, 0, 1)
        pool.put(held)
        assert pool.stats().idle == 1  # not handed to the cancelled waiter
        await assert_whole(pool)


@pytest.mark.parametrize("timeout", [None, BOUND])
@pytest.mark.parametrize("order", ["put, then cancel", "cancel, then put"])
@aio_test
async def test_a_get_served_and_cancelled_in_the_same_iteration_gives_the_member_back(
    order: str, timeout: float | None
) -> None:
    async with client_pool(Hooks(), size=1) as pool:
        held = await pool.get()
        getter = asyncio.ensure_future(pool.get(timeout=timeout))
        await until(lambda: pool.stats().waiting == 1)

        def both() -> None:  # one callback: the getter cannot resume in between
            if order == "put, then cancel":
                pool.put(held)
                assert pool.stats().in_use == 1  # served: lent to the getter
                getter.cancel()
            else:
                getter.cancel()
                pool.put(held)

        asyncio.get_running_loop().call_soon(both)
        with pytest.raises(asyncio.CancelledError):
            await getter
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.waiting) == (1, 0, 0), stats
        await assert_whole(pool)


@pytest.mark.parametrize("probing", [False, True], ids=["first-dial", "probe"])
@aio_test
async def test_a_get_cancelled_during_its_dial_gives_the_member_back_and_ends_its_probe(
    probing: bool,
) -> None:
    clock = FakeClock()
    hooks = Hooks()
    async with client_pool(hooks, size=2, retry_min=5, retry_max=10, clock=clock) as pool:
        if probing:  # a failed dial first: the next one, after the backoff, is a probe
            hooks.dial_error = ConnectionRefusedError("down")
            with pytest.raises(gocp.DialError):
                await pool.get()
            hooks.dial_error = None
            clock.advance(10.5)
        dials = pool.stats().dials
        hooks.gates["dial"] = gate = asyncio.Event()
        getter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: hooks.dials_running() == 1, "the dial began")
        if probing:  # others fail fast meanwhile: one probe at a time
            with pytest.raises(gocp.DialError, match="another caller is probing"):
                await pool.get(timeout=0)
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert hooks.dials_running() == 0
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.waiting) == (2, 0, 0), stats
        assert (stats.dials, stats.dial_failures, stats.connected) == (dials + 1, dials, 0)
        # The cancelled dial ended its probe: the next get dials at once.
        gate.set()
        client = await pool.get(timeout=0)
        assert client is hooks.made[0]
        assert pool.stats().dials == dials + 2
        pool.put(client)
        await assert_whole(pool)


@aio_test
async def test_a_socket_members_first_io_cancelled_during_its_dial_ends_its_probe() -> None:
    clock = FakeClock()
    address = unused_address()
    async with gocp.aio.new(address, size=2, retry_min=5, retry_max=10, clock=clock) as pool:
        conn, other = await pool.get(), await pool.get()
        with pytest.raises(gocp.DialError):  # refused: the backoff starts
            await conn.sendall(b"x")
        with HangingListener(address[1]):
            clock.advance(10.5)
            sender = asyncio.ensure_future(conn.sendall(b"x"))  # the probe: it hangs
            await until(lambda: pool.stats().dials == 2, "the probe dial began")
            with pytest.raises(gocp.DialError, match="another caller is probing"):
                await other.sendall(b"y")
            await iterations(3)
            assert not sender.done()
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            stats = pool.stats()
            assert (stats.dials, stats.dial_failures, stats.connected) == (2, 1, 0)
            # The probe ended with the cancellation: the next operation dials at once.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await other.sendall(b"y")
            assert pool.stats().dials == 3
        pool.put(conn)
        pool.put(other)
        assert pool.stats().dial_failures == 1
        await assert_whole(pool)


@pytest.mark.parametrize("where", ["in its dial", "between attempts"])
@aio_test
async def test_a_get_connect_cancelled_gives_the_member_back(where: str) -> None:
    address = unused_address()
    with HangingListener(address[1]) if where == "in its dial" else contextlib.nullcontext():
        async with gocp.aio.new(address, size=1, retry_min=0.5, retry_max=1.0) as pool:
            getter = asyncio.ensure_future(pool.get(timeout=BOUND, connect=True))
            if where == "in its dial":
                await until(lambda: pool.stats().dials == 1, "the dial began")
            else:  # refused: it waits out the backoff before its next attempt
                await until(lambda: pool.stats().dial_failures == 1, "the first dial failed")
            await iterations(3)
            assert not getter.done()
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            stats = pool.stats()
            assert (stats.idle, stats.in_use, stats.waiting, stats.connected) == (1, 0, 0, 0)
            assert stats.dials == 1
            await assert_whole(pool)


@pytest.mark.parametrize("where", ["get", "upkeep"])
@aio_test
async def test_a_check_cancelled_counts_as_failed_and_loses_no_slot(where: str) -> None:
    clock = SilentClock() if where == "get" else FakeClock()
    hooks = Hooks()
    pool = client_pool(hooks, check=True, size=1, check_interval=1000, clock=clock)
    client = await pool.get()
    pool.put(client)
    await iterations(5)  # the upkeep's first pass (it then naps 250 s on a SilentClock)
    hooks.gates["check"] = asyncio.Event()
    clock.advance(1000.5)
    if where == "get":
        getter = asyncio.ensure_future(pool.get(timeout=BOUND))
        await until(lambda: hooks.started["check"] == 1, "the check began")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.closed_check, stats.hook_failures) == (1, 0, 1, 0)
        await until(lambda: client.closed == 1, "the unchecked client closed")
        del hooks.gates["check"]
        again = await pool.get(timeout=0)
        assert again is hooks.made[1]
        pool.put(again)
        await assert_whole(pool)
        await pool.close()
    else:  # close cancels the upkeep task in the middle of its check
        await until(lambda: hooks.started["check"] == 1, "the background check began")
        await pool.close()
        assert hooks.running == {}
        stats = pool.stats()
        assert (stats.closed, stats.in_use, stats.waiting) == (True, 0, 0)
        assert client.closed == 1
    assert hooks.closed_twice() == []


@aio_test
async def test_close_during_a_background_pass_closes_every_member_the_pass_had_taken() -> None:
    clock = FakeClock()
    hooks = Hooks()
    pool = client_pool(hooks, check=True, size=3, check_interval=10, clock=clock)
    clients = [await pool.get(timeout=0) for _ in range(3)]
    for client in clients:
        pool.put(client)
    hooks.gates["check"] = asyncio.Event()
    clock.advance(10.5)  # the upkeep takes all three idle members to check them in turn
    await until(lambda: hooks.started["check"] == 1, "the first background check began")
    await pool.close()  # cancels the upkeep in the middle of its pass
    assert hooks.running == {}
    stats = pool.stats()
    assert (stats.closed, stats.in_use, stats.connected) == (True, 0, 0), stats
    assert sorted(client.number for client in hooks.closed) == [1, 2, 3]
    assert hooks.closed_twice() == []


@aio_test
async def test_a_background_dial_ended_by_close_makes_nothing_and_leaves_nothing() -> None:
    hooks = Hooks()
    hooks.gates["dial"] = asyncio.Event()
    before = other_tasks()
    pool = client_pool(hooks, size=2, min_idle=2)
    waiting = asyncio.ensure_future(pool.wait_ready(BOUND))  # starts the upkeep
    await until(lambda: hooks.dials_running() >= 1, "a background dial began")
    await pool.close()
    with pytest.raises(gocp.PoolClosed):
        await waiting
    await until(lambda: hooks.dials_running() == 0)
    hooks.gates["dial"].set()
    await iterations(5)
    assert other_tasks() - before == set()
    stats = pool.stats()
    assert (stats.closed, stats.in_use, stats.connected) == (True, 0, 0)
    assert hooks.live() == 0


@aio_test
async def test_a_cancelled_wait_ready_leaves_the_pool_filling() -> None:
    hooks = Hooks()
    hooks.gates["dial"] = gate = asyncio.Event()
    async with client_pool(hooks, size=2, min_idle=2) as pool:
        waiting = asyncio.ensure_future(pool.wait_ready(BOUND))
        await until(lambda: hooks.dials_running() >= 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        await pool.wait_ready(BOUND)
        await until(lambda: pool.stats().idle == 2)
        assert pool.stats().connected == 2
        await assert_whole(pool)


@aio_test
async def test_a_cancelled_close_is_finished_by_the_next_close() -> None:
    hooks = Hooks()
    hooks.gates["close"] = gate = asyncio.Event()
    before = other_tasks()
    pool = client_pool(hooks, size=2, min_idle=1)
    a, b = await pool.get(), await pool.get()
    pool.put(a)
    closing = asyncio.ensure_future(pool.close())
    await until(lambda: hooks.started["close"] == 1, "the close hook of the idle client began")
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert pool.closed
    with pytest.raises(gocp.PoolClosed):
        await pool.get(timeout=0)
    pool.put(b)  # a lent client of a closed pool closes when put back
    gate.set()
    await pool.close()  # finishes the job: waits for every close hook
    assert other_tasks() - before == set()
    # A close hook that began is not cut short by the cancellation of close().
    assert sorted(c.number for c in hooks.closed) == [1, 2]
    assert hooks.closed_twice() == []
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.waiting) == (0, 0, 0)


@aio_test
async def test_put_cannot_be_cancelled_it_completes_before_any_await() -> None:
    async with client_pool(Hooks(), size=1) as pool:
        for count in range(8):  # cancel a get-hold-put task after each number of iterations

            async def cycle() -> None:
                client = await pool.get(timeout=BOUND)
                try:
                    await iterations(3)
                finally:
                    pool.put(client)  # no await point: a cancellation cannot land inside

            holder = asyncio.ensure_future(cycle())
            waiter = asyncio.ensure_future(pool.get(timeout=BOUND))  # queued behind it
            await cancel_after(holder, count)
            await settle(holder)
            pool.put(await waiter)  # served by the put in the cancelled task's finally
            await assert_whole(pool, lend=False)
        await assert_whole(pool)


async def _cancel_first_io(pool: AioPool[AioConn], count: int) -> None:
    """Cancel a member's first I/O (its dial) after ``count`` loop iterations, put it back
    broken (what it holds is closed), and drop every reference to the cancelled call."""
    conn = await pool.get()
    sender = asyncio.ensure_future(conn.sendall(b"x"))
    await cancel_after(sender, count)
    await settle(sender)
    pool.put(conn, broken=True)


@aio_test
async def test_a_socket_dial_cancelled_at_any_point_leaks_no_socket(
    echo_server: EchoServer,
) -> None:
    async with gocp.aio.new(echo_server.address, size=1) as pool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for count in range(20):  # cancel the first I/O after each number of iterations
                await _cancel_first_io(pool, count)
                await iterations(2)  # a transport closes its socket one iteration later
                gc.collect()  # a socket nobody closed warns when it is collected
            unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == [], f"sockets a cancelled dial never closed: {unclosed}"
        await until(lambda: echo_server.active == 0, "the server sees no connection left")
        assert_consistent(pool.stats())
        await assert_whole(pool)


# -- asyncio.timeout() around a call behaves as the call's own timeout ---------------------


@aio_test
async def test_asyncio_timeout_around_get_leaves_the_pool_as_its_own_timeout() -> None:
    async with client_pool(Hooks(), size=1) as pool:
        held = await pool.get()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.get()
        assert 0.05 - EARLY <= time.monotonic() - started < 1.0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05), pool.connection(timeout=BOUND):
                pass
        stats = pool.stats()
        assert (stats.waiting, stats.waits, stats.in_use) == (0, 2, 1)
        pool.put(held)
        assert pool.stats().idle == 1
        await assert_whole(pool)


@pytest.mark.parametrize("how", ["asyncio.timeout", "task.cancel"])
@aio_test
async def test_io_stopped_from_outside_drops_the_connection_and_never_resends(
    rr_server: RequestReplyServer, how: str
) -> None:
    async with gocp.aio.new(rr_server.address, size=1, io_timeout=None) as pool:
        stalled, later = new_request_id(), new_request_id()
        conn = await pool.get()
        rr_server.fail_next(1, "stall")
        if how == "asyncio.timeout":
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await request(conn, stalled)
        else:
            task = asyncio.ensure_future(request(conn, stalled))
            await until(lambda: rr_server.applied(stalled) == 1, "the request arrived")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not conn.connected  # the stream is in an unknown state: dropped
        assert await request(conn, later) == 1
        pool.put(conn)
        assert rr_server.applied_counts() == {stalled: 1, later: 1}
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken, stats.dials) == (1, 1, 2)
        await assert_whole(pool)


@aio_test
async def test_asyncio_timeout_around_a_connection_block_gives_the_member_back_broken(
    rr_server: RequestReplyServer,
) -> None:
    async with gocp.aio.new(rr_server.address, size=1, io_timeout=None) as pool:
        rr_server.fail_next(1, "stall")
        stalled = new_request_id()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1), pool.connection() as conn:
                await request(conn, stalled)
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.broken, stats.connected) == (1, 0, 1, 0)
        async with pool.connection() as conn:
            assert await request(conn, new_request_id()) == 1
        assert rr_server.applied(stalled) == 1
        await assert_whole(pool)


# -- cancellation never loses a slot: seeded random schedules -------------------------------
#
# Each seed draws a pool, a few tasks using it, and for most tasks a number N of loop
# iterations after which it is cancelled. Each test records where the cancelled tasks
# were (``reached``) and asserts its seeds reached every await point it is about.

SEEDS = 40  # per group of seeds; each seed is a few rounds of tasks cancelled at random


def _phase(task: asyncio.Task[Any], hooks: Hooks, state: dict[asyncio.Task[Any], str]) -> str:
    """Where ``task`` was when it was cancelled: in a hook (``"dial"``, ``"check"``),
    ``"queued"`` (in ``get`` and in no hook: a ``get`` awaits nothing else), ``"holding"``
    a member, or ``"start"`` (not yet running)."""
    phase = hooks.running.get(task) or state.get(task, "start")
    return "queued" if phase == "get" else phase


def _unexpected(outcomes: list[Any], expected: tuple[type[BaseException], ...]) -> None:
    """Raise the first outcome that is an exception other than ``expected`` ones."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, expected):
            raise outcome


class ClientRound:
    """One seed of ``test_random_cancellation_of_client_pool_lends_never_loses_a_slot``."""

    def __init__(self, seed: int, reached: Counter[str]) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.reached = reached
        self.clock = SilentClock()  # checks due run in get (the upkeep naps 250 s)
        self.hooks = Hooks()
        self.hooks.turns = self.rng.randrange(4)
        self.state: dict[asyncio.Task[Any], str] = {}
        self.pool = client_pool(
            self.hooks,
            check=True,
            size=self.rng.choice([1, 2]),
            check_interval=1000,
            max_overflow=self.rng.choice([0, 0, 1]),
            retry_min=0.001,
            retry_max=0.002,
            clock=self.clock,
        )

    async def worker(self, style: str, fresh: bool) -> None:
        me = asyncio.current_task()
        assert me is not None
        pool, state = self.pool, self.state
        state[me] = "get"
        if style == "connection":
            async with pool.connection(timeout=BOUND, fresh=fresh):
                state[me] = "holding"
                await iterations(self.rng.randrange(3))
        else:
            client = await pool.get(timeout=BOUND, fresh=fresh)
            try:
                state[me] = "holding"
                await iterations(self.rng.randrange(3))
            finally:
                pool.put(client)  # never awaits: nothing can cut it short
        state[me] = "done"

    async def cancel(self, task: asyncio.Task[Any], count: int) -> None:
        await iterations(count)
        if not task.done():
            self.reached[_phase(task, self.hooks, self.state)] += 1
            task.cancel()

    async def run(self) -> None:
        rng, hooks, pool = self.rng, self.hooks, self.pool
        before = other_tasks()
        for _round in range(3):
            if rng.random() < 0.5:
                self.clock.advance(1000.5)  # members due for a check before their next lend
            hooks.dial_error = ConnectionRefusedError("down") if rng.random() < 0.15 else None
            tasks = [
                asyncio.ensure_future(
                    self.worker(rng.choice(["connection", "get/put"]), rng.random() < 0.2)
                )
                for _ in range(rng.randint(1, 4))
            ]
            cancels = [
                asyncio.ensure_future(self.cancel(task, rng.randrange(12)))
                for task in tasks
                if rng.random() < 0.7
            ]
            # A failed dial is an error its caller sees; nothing else may escape.
            _unexpected(await settle(*tasks, *cancels), (asyncio.CancelledError, gocp.DialError))
            hooks.dial_error = None
            # Every client made is held by a member or was closed (async close hooks are
            # tasks: they end soon after).
            await until(
                lambda: not hooks.running and hooks.live() == pool.stats().connected,
                f"seed {self.seed}: every client held by a member or closed",
            )
            stats = pool.stats()
            assert (stats.idle, stats.in_use, stats.waiting, stats.overflow) == (
                stats.size,
                0,
                0,
                0,
            ), (self.seed, stats)
            assert_consistent(stats)
            assert hooks.running == {}, (self.seed, hooks.running)
            assert hooks.closed_twice() == [], self.seed
        self.clock.advance(0.01)  # past the last backoff
        await assert_whole(pool)
        await pool.close()
        assert other_tasks() - before == set(), self.seed
        assert hooks.live() == 0, (self.seed, hooks.events)
        assert hooks.closed_twice() == [], self.seed


@pytest.mark.parametrize("group", range(3))
@aio_test
async def test_random_cancellation_of_client_pool_lends_never_loses_a_slot(group: int) -> None:
    reached: Counter[str] = Counter()
    for seed in range(group * SEEDS, (group + 1) * SEEDS):
        await ClientRound(seed, reached).run()
    # The schedules reached every await point of get: queued, in the dial, in the check,
    # and while the client was held (put then runs in a finally or at async with's exit).
    assert {"queued", "dial", "check", "holding"} <= set(reached), reached


class SocketRound:
    """One seed of ``test_random_cancellation_of_socket_lends_never_loses_a_slot...``."""

    def __init__(
        self, seed: int, server: RequestReplyServer, reached: Counter[str], sent: set[str]
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.server = server
        self.reached = reached
        self.sent = sent  # requests that may have reached the server
        self.done: set[str] = set()  # requests that got their reply
        self.state: dict[asyncio.Task[Any], str] = {}
        self.pool = gocp.aio.new(server.address, size=self.rng.choice([1, 2]), retry_min=0.001)

    async def worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        state = self.state
        state[me] = "get"
        async with self.pool.connection(timeout=BOUND) as conn:
            request_id = new_request_id("c")
            state[me] = "io" if conn.connected else "dial"
            self.sent.add(request_id)
            await conn.sendall(f"{request_id} x\n".encode())
            state[me] = "io"
            line = b""
            while not line.endswith(b"\n"):
                line += await conn.recv(100)
            state[me] = "holding"
            await iterations(self.rng.randrange(1, 4))
        self.done.add(request_id)
        state[me] = "done"

    async def cancel(self, task: asyncio.Task[Any], count: int, aim: str | None) -> None:
        """Cancel ``task`` ``count`` loop iterations in, or (``aim``) ``count % 3``
        iterations after it reaches that phase: how many iterations a phase lasts depends
        on the server thread, so aiming makes every phase come up on a loaded machine."""
        if aim is None:
            await iterations(count)
        else:
            for _ in range(10_000):  # bounded: the task ends or reaches the phase first
                if task.done() or self.state.get(task) == aim:
                    break
                await iterations(1)
            await iterations(count % 3)
        if not task.done():
            phase = self.state.get(task, "start")
            self.reached["queued" if phase == "get" else phase] += 1
            task.cancel()

    async def run(self) -> None:
        rng, pool = self.rng, self.pool
        before = other_tasks()
        for _round in range(3):
            if rng.random() < 0.3:
                self.server.kill_connections(reset=rng.random() < 0.5)  # stale, or broken
            tasks = [asyncio.ensure_future(self.worker()) for _ in range(rng.randint(1, 4))]
            aims = (None, None, "dial", "io", "holding")
            cancels = [
                asyncio.ensure_future(self.cancel(task, rng.randrange(25), rng.choice(aims)))
                for task in tasks
                if rng.random() < 0.7
            ]
            expected = (asyncio.CancelledError, gocp.ConnectionBroken, gocp.DialError)
            _unexpected(await settle(*tasks, *cancels), expected)
            stats = pool.stats()
            assert (stats.idle, stats.in_use, stats.waiting) == (stats.size, 0, 0), (
                self.seed,
                stats,
            )
            assert_consistent(stats)
        await assert_whole(pool)
        await pool.close()
        # (A connect cancelled in asyncio's own create_connection may leave its helper
        # tasks a few iterations to end.)
        await until(lambda: not other_tasks() - before, f"seed {self.seed}: no task left")
        # Nothing was sent twice; what got its reply was applied exactly once.
        counts = self.server.applied_counts()
        assert self.server.duplicates() == {}, self.seed
        assert all(counts.get(request_id) == 1 for request_id in self.done), self.seed
        assert set(counts) <= self.sent, self.seed


@pytest.mark.parametrize("group", range(2))
@aio_test
async def test_random_cancellation_of_socket_lends_never_loses_a_slot_or_resends(
    rr_server: RequestReplyServer, group: int
) -> None:
    reached: Counter[str] = Counter()
    sent: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for seed in range(group * SEEDS, (group + 1) * SEEDS):
            await SocketRound(seed, rr_server, reached, sent).run()
            await iterations(2)  # a transport closes its socket one iteration later
            gc.collect()  # a socket nobody closed warns when it is collected
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == [], f"sockets never closed: {unclosed}"
    await until(lambda: rr_server.active == 0, "every socket closed")
    # Queued in get, in the dial of the first I/O, in the I/O, holding the member.
    assert {"queued", "dial", "io", "holding"} <= set(reached), reached


async def _close_round(seed: int, reached: Counter[str]) -> None:
    """One seed of ``test_random_cancellation_of_close_leaves_a_closed_pool_and_no_task``."""
    rng = random.Random(seed)
    clock = FakeClock()
    hooks = Hooks()
    hooks.turns = rng.randrange(1, 5)
    before = other_tasks()
    pool = client_pool(
        hooks, check=True, size=3, min_idle=rng.choice([0, 1, 3]), check_interval=10, clock=clock
    )
    lent = [await pool.get(timeout=BOUND) for _ in range(rng.randrange(3))]
    waiters = [asyncio.ensure_future(pool.get(timeout=BOUND)) for _ in range(rng.randrange(2))]
    for client in lent[: rng.randrange(len(lent) + 1)]:
        pool.put(client)
        lent.remove(client)
    if rng.random() < 0.5:
        clock.advance(10.5)  # background checks start
    await iterations(rng.randrange(4))
    closing = asyncio.ensure_future(pool.close())
    await iterations(rng.randrange(10))
    if not closing.done():
        if not pool.closed:
            reached["before it began"] += 1
        elif "close" in hooks.running.values():
            reached["awaiting close hooks"] += 1
        else:
            reached["awaiting the upkeep's end"] += 1
        closing.cancel()
    outcomes = await settle(closing, *waiters)
    _unexpected(outcomes, (asyncio.CancelledError, gocp.PoolClosed, gocp.DialError))
    lent += [outcome for outcome in outcomes if isinstance(outcome, Client)]
    for client in lent:
        pool.put(client)  # a lent client of a closed pool is closed when put back
    await pool.close()  # finishes an interrupted close
    assert other_tasks() - before == set(), seed
    stats = pool.stats()
    assert (stats.closed, stats.in_use, stats.idle, stats.waiting) == (True, 0, 0, 0), (
        seed,
        stats,
    )
    assert hooks.running == {}, seed
    assert hooks.closed_twice() == [], seed
    assert hooks.live() == 0, (seed, "clients never closed", hooks.events)


@pytest.mark.parametrize("group", range(2))
@aio_test
async def test_random_cancellation_of_close_leaves_a_closed_pool_and_no_task(group: int) -> None:
    reached: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for seed in range(group * SEEDS, (group + 1) * SEEDS):
            await _close_round(seed, reached)
            gc.collect()  # a coroutine dropped unawaited warns when it is collected
        dropped = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert dropped == [], f"close hooks called and never awaited: {dropped}"
    assert {"awaiting close hooks", "awaiting the upkeep's end"} <= set(reached), reached
