"""Lifecycle options through the real pools (threads shell).

Every option of DESIGN.md section 3 (``idle_timeout``, ``max_lifetime``,
``check_interval`` with a ``check`` hook, ``min_idle``, ``max_overflow``,
``leak_timeout``), ``get(fresh=True)``, ``put(broken=True)``, member stats,
hooks that raise and the background thread, for socket pools (``gocp.new``
against a loopback ``EchoServer``) and client pools (``gocp.pool`` with
``Hooks``, a fake client factory that counts its dial/check/close calls).

Expiries run on an injected clock: a test advances it and waits for the
effect with a deadline (``wait_until``), never sleeping for an expiry. Two
clocks:

- ``FakeClock``: ``advance`` wakes the pool's background thread, which looks
  at once (tests of what the background thread does);
- ``SilentClock``: a ``FakeClock`` that does not wake it. With durations of
  1000 s and more the thread's own real-time nap (a quarter of the shortest
  duration) outlasts the test, so only ``get`` and ``put`` see the clock move
  (deterministic tests of what ``get`` and ``put`` do).

Tests that need real time (a check catching a blackholed peer, close during
a blocked check, dial backoff against a refused port) use durations of
tenths of a second and bounded waits.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from conftest import wait_until
from invariants import (
    MARGIN,
    assert_full_pool,
    new_request_id,
    recv_exactly,
    request,
    round_trip,
    unused_address,
    within,
)

import gocp
from gocp.testing import EchoServer, FakeClock, FaultProxy, RequestReplyServer

HERE = os.path.basename(__file__)
BOUND = 5.0  # the longest any wait in this file may take (a loaded 2-core machine)

# -- a fake client and its hooks --------------------------------------------------------


class Client:
    """What ``Hooks.dial`` makes: a numbered client object."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def __repr__(self) -> str:
        return f"<Client {self.number}{' closed' if self.closed else ''}>"


class Hooks:
    """dial/check/close hooks for ``gocp.pool`` that count and log their calls.

    ``dial_error``, ``check_result`` (a value to return, or an exception to
    raise) and ``close_error`` make them fail; ``check_gate``, when set, makes
    ``check`` wait for it (at most ``BOUND``). Thread-safe: the pool's
    background thread calls them too.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.monotonic
        self.lock = threading.Lock()
        self.made: list[Client] = []
        self.checked: list[Client] = []
        self.closed: list[Client] = []
        self.closed_at: dict[int, float] = {}  # client number -> clock time of its close
        self.events: list[str] = []  # "dial 1", "check 1", "close 1", in order
        self.dial_error: BaseException | None = None
        self.check_result: object = True
        self.close_error: BaseException | None = None
        self.check_started = threading.Event()
        self.check_gate: threading.Event | None = None

    def dial(self) -> Client:
        with self.lock:
            if self.dial_error is not None:
                self.events.append("dial failed")
                raise self.dial_error
            client = Client(len(self.made) + 1)
            self.made.append(client)
            self.events.append(f"dial {client.number}")
            return client

    def check(self, client: Client) -> object:
        with self.lock:
            self.checked.append(client)
            self.events.append(f"check {client.number}")
            result = self.check_result
        self.check_started.set()
        if self.check_gate is not None:
            assert self.check_gate.wait(BOUND), "check_gate never opened"
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self, client: Client) -> None:
        with self.lock:
            client.closed = True
            self.closed.append(client)
            self.closed_at[client.number] = self.clock()
            self.events.append(f"close {client.number}")
            error = self.close_error
        if error is not None:
            raise error

    def count(self, what: str) -> int:
        with self.lock:
            return len({"made": self.made, "checked": self.checked, "closed": self.closed}[what])


def client_pool(hooks: Hooks, *, check: bool = False, **options: Any) -> gocp.Pool[Client]:
    """A ``gocp.pool`` of ``Hooks`` clients (with its check hook when ``check``)."""
    return gocp.pool(hooks.dial, close=hooks.close, check=hooks.check if check else None, **options)


class SilentClock(FakeClock):
    """A ``FakeClock`` whose ``advance`` does not wake the pool's background thread."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        pass


class Records(logging.Handler):
    """Keeps every record it is given (from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in list(self.records) if getattr(r, "event", None) == name]


@pytest.fixture
def records() -> Iterator[tuple[logging.Logger, Records]]:
    """A ``logging.Logger`` outside the logging tree (nothing propagates) and its records."""
    logger = logging.Logger("gocp-test-lifecycle")
    handler = Records()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def gocp_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Pool threads ("gocp ...") alive now that were not in ``before``."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("gocp ") and t.is_alive()
    ]


def connected_members(pool: gocp.Pool[Any]) -> int:
    return sum(member.connected for member in pool.stats().members)


def all_idle(pool: gocp.Pool[Any]) -> bool:
    stats = pool.stats()
    return stats.idle == stats.size


def ping(conn: gocp.PersistentConn) -> bool:
    """A protocol check against an ``EchoServer``: one round trip on the member."""
    conn.sendall(b"PING\n")
    return recv_exactly(conn, 5) == b"PING\n"


# -- idle_timeout ------------------------------------------------------------------------


def test_idle_timeout_closes_idle_clients_in_the_background() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=2, idle_timeout=10, clock=clock) as pool:
        first = [pool.get(timeout=0), pool.get(timeout=0)]
        for client in first:
            pool.put(client)
        assert connected_members(pool) == 2

        clock.advance(10.5)
        assert wait_until(lambda: pool.stats().closed_idle == 2, timeout=BOUND)
        assert sorted(c.number for c in hooks.closed) == [1, 2]
        stats = pool.stats()
        assert (stats.size, stats.idle, stats.connected) == (2, 2, 0)
        assert [m.connected for m in stats.members] == [False, False]

        # The members are still there and redial on next use.
        again = pool.get(timeout=0)
        assert again not in first
        assert again.number == 3
        pool.put(again)
        assert pool.stats().closed_idle == 2
        assert_full_pool(pool, None)


def test_idle_timeout_never_goes_below_min_idle() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=3, min_idle=1, idle_timeout=10, clock=clock) as pool:
        pool.wait_ready(BOUND)
        clients = [pool.get(timeout=BOUND) for _ in range(3)]  # the two others dial here
        for client in clients:
            pool.put(client)
        assert pool.stats().connected == 3

        clock.advance(10.5)
        # One background pass decides every expiry under the lock: once two are closed,
        # that pass is over and kept the third.
        assert wait_until(lambda: pool.stats().closed_idle == 2, timeout=BOUND)
        stats = pool.stats()
        assert stats.connected == 1
        assert connected_members(pool) == 1
        assert hooks.count("made") == 3
        assert [c.closed for c in clients].count(False) == 1


def test_member_idle_past_the_timeout_is_replaced_at_get() -> None:
    clock = SilentClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=1, idle_timeout=1000, clock=clock) as pool:
        first = pool.get(timeout=0)
        pool.put(first)
        clock.advance(999)
        assert pool.get(timeout=0) is first  # not idle long enough
        pool.put(first)

        clock.advance(1000.5)
        second = pool.get(timeout=0)
        assert second is not first
        assert first.closed
        assert hooks.events == ["dial 1", "close 1", "dial 2"]  # closed before the new dial
        assert pool.stats().closed_idle == 1
        pool.put(second)


def test_member_idle_past_the_timeout_is_kept_at_get_when_at_min_idle() -> None:
    clock = SilentClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=1, min_idle=1, idle_timeout=1000, clock=clock) as pool:
        pool.wait_ready(BOUND)
        first = pool.get(timeout=0)
        pool.put(first)
        clock.advance(5000)
        assert pool.get(timeout=0) is first
        pool.put(first)
        assert pool.stats().closed_idle == 0
        assert hooks.count("made") == 1


def test_idle_timeout_closes_idle_sockets(echo_server: EchoServer) -> None:
    clock = FakeClock()
    with gocp.new(echo_server.address, size=1, idle_timeout=10, clock=clock) as pool:
        with pool.get() as conn:
            round_trip(conn)
            sock = conn.socket
        clock.advance(10.5)
        assert wait_until(lambda: pool.stats().closed_idle == 1, timeout=BOUND)
        assert sock.fileno() == -1
        assert not pool.stats().members[0].connected
        assert wait_until(lambda: echo_server.active == 0, timeout=BOUND)

        with pool.get() as conn:
            assert round_trip(conn) == b"ping"
            assert conn.socket is not sock
        stats = pool.stats()
        assert (stats.dials, stats.closed_idle) == (2, 1)


# -- max_lifetime ------------------------------------------------------------------------


def test_max_lifetime_replaces_an_idle_client_in_the_background() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=1, max_lifetime=100, clock=clock) as pool:
        first = pool.get(timeout=0)
        pool.put(first)
        clock.advance(89.9)  # the random cut is at most 10%: not expired yet
        assert pool.get(timeout=0) is first
        pool.put(first)

        clock.advance(10.2)
        assert wait_until(lambda: pool.stats().closed_lifetime == 1, timeout=BOUND)
        assert hooks.closed == [first]
        assert not pool.stats().members[0].connected
        second = pool.get(timeout=0)
        assert second is not first
        pool.put(second)


def test_max_lifetime_never_closes_a_lent_client_and_closes_it_at_put() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=2, max_lifetime=100, clock=clock) as pool:
        held = pool.get(timeout=0)
        idle = pool.get(timeout=0)
        pool.put(idle)
        clock.advance(150)
        # The background pass closes the idle one; the lent one stays untouched.
        assert wait_until(lambda: pool.stats().closed_lifetime == 1, timeout=BOUND)
        assert hooks.closed == [idle]
        assert not held.closed

        pool.put(held)  # put back past its lifetime: closed there, not lent again
        assert held.closed
        assert pool.stats().closed_lifetime == 2
        assert_full_pool(pool, None)
        assert hooks.count("made") == 4


def test_max_lifetime_never_closes_a_lent_socket(echo_server: EchoServer) -> None:
    clock = FakeClock()
    with gocp.new(echo_server.address, size=2, max_lifetime=100, clock=clock) as pool:
        held, idle = pool.get(), pool.get()
        round_trip(held)
        round_trip(idle)
        held_sock, idle_sock = held.socket, idle.socket
        pool.put(idle)

        clock.advance(150)
        assert wait_until(lambda: pool.stats().closed_lifetime == 1, timeout=BOUND)
        assert idle_sock.fileno() == -1
        # The member held past its lifetime keeps its socket and works.
        assert held_sock.fileno() != -1
        assert round_trip(held, b"still here") == b"still here"
        assert held.socket is held_sock
        assert pool.stats().members[held.index].connected

        pool.put(held)
        assert held_sock.fileno() == -1  # replaced when put back
        assert pool.stats().closed_lifetime == 2
        assert not pool.stats().members[held.index].connected
        assert_full_pool(pool, round_trip)


def test_max_lifetime_is_cut_by_a_random_0_to_10_percent() -> None:
    clock = SilentClock()
    hooks = Hooks(clock)
    size, lifetime, step = 8, 1000.0, 5.0
    with client_pool(hooks, size=size, max_lifetime=lifetime, clock=clock) as pool:
        start = clock()
        first = [pool.get(timeout=0) for _ in range(size)]  # all made at the same moment
        for client in first:
            pool.put(client)
        elapsed = 0.0
        while elapsed < lifetime + step:
            clock.advance(step)
            elapsed += step
            clients = [pool.get(timeout=0) for _ in range(size)]
            for client in clients:
                pool.put(client)
        assert all(client.closed for client in first)
        ages = sorted(hooks.closed_at[client.number] - start for client in first)
        assert ages[0] >= 0.9 * lifetime, ages
        assert ages[-1] <= lifetime + step, ages
        # 8 connections made together: all expiring in one 5 s step of 100 is ~1e-9.
        assert len(set(ages)) > 1, ages
        assert pool.stats().closed_lifetime == size


# -- check_interval and the check hook -------------------------------------------------------


def test_check_runs_before_lending_only_after_check_interval() -> None:
    clock = SilentClock()
    hooks = Hooks(clock)
    with client_pool(hooks, check=True, size=1, check_interval=1000, clock=clock) as pool:
        client = pool.get(timeout=0)
        pool.put(client)
        for _ in range(3):  # used often enough: never checked
            clock.advance(999)
            assert pool.get(timeout=0) is client
            pool.put(client)
        assert hooks.checked == []

        clock.advance(1000.5)
        assert pool.get(timeout=0) is client
        assert hooks.checked == [client]
        pool.put(client)
        assert pool.get(timeout=0) is client  # just checked and used: not again
        pool.put(client)
        assert hooks.checked == [client]
        stats = pool.stats()
        assert (stats.closed_check, stats.hook_failures) == (0, 0)


def test_check_interval_defaults_to_30_seconds_with_a_check_hook() -> None:
    hooks = Hooks()
    with client_pool(hooks, check=True, size=1) as with_check:
        assert with_check.options.check_interval == 30.0
    with client_pool(hooks, size=1) as without:
        assert without.options.check_interval is None


@pytest.mark.parametrize("failure", ["returns False", "raises"])
def test_failed_check_closes_the_client_and_get_returns_a_new_one(
    failure: str, records: tuple[logging.Logger, Records]
) -> None:
    logger, handler = records
    clock = SilentClock()
    hooks = Hooks(clock)
    with client_pool(
        hooks, check=True, size=1, check_interval=1000, clock=clock, logger=logger
    ) as pool:
        first = pool.get(timeout=0)
        pool.put(first)
        clock.advance(1000.5)
        hooks.check_result = False if failure == "returns False" else RuntimeError("dead")
        second = pool.get(timeout=0)
        assert second is not first
        assert first.closed
        assert hooks.events == ["dial 1", "check 1", "close 1", "dial 2"]
        stats = pool.stats()
        assert stats.closed_check == 1
        assert stats.hook_failures == (1 if failure == "raises" else 0)
        if failure == "raises":
            (record,) = handler.events("check_failed")
            assert "dead" in record.getMessage()
        pool.put(second)
        hooks.check_result = True
        assert_full_pool(pool, None)


def test_background_thread_checks_idle_clients() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, check=True, size=2, check_interval=10, clock=clock) as pool:
        clients = [pool.get(timeout=0), pool.get(timeout=0)]
        for client in clients:
            pool.put(client)
        clock.advance(10.5)
        assert wait_until(lambda: hooks.count("checked") == 2, timeout=BOUND)
        assert sorted(c.number for c in hooks.checked) == [1, 2]
        assert wait_until(lambda: pool.stats().idle == 2, timeout=BOUND)  # given back
        assert hooks.closed == []

        hooks.check_result = False
        clock.advance(10.5)
        assert wait_until(lambda: pool.stats().closed_check == 2, timeout=BOUND)
        assert sorted(c.number for c in hooks.closed) == [1, 2]
        assert wait_until(lambda: pool.stats().idle == 2, timeout=BOUND)
        assert connected_members(pool) == 0
        assert hooks.count("made") == 2  # no get: nothing redialled
        hooks.check_result = True
        assert_full_pool(pool, None)


def test_get_waits_for_a_member_under_a_background_check() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    hooks.check_gate = threading.Event()
    with client_pool(hooks, check=True, size=1, check_interval=10, clock=clock) as pool:
        client = pool.get(timeout=0)
        pool.put(client)
        clock.advance(10.5)
        assert hooks.check_started.wait(BOUND)
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0)

        got: list[object] = []
        taker = threading.Thread(target=lambda: got.append(pool.get(timeout=BOUND)))
        taker.start()
        try:
            assert wait_until(lambda: pool.stats().waiting == 1, timeout=BOUND)
        finally:
            hooks.check_gate.set()
            taker.join(BOUND)
        assert got == [client]
        pool.put(client)
        assert_full_pool(pool, None)


def test_socket_check_receives_the_member_and_can_do_io(echo_server: EchoServer) -> None:
    clock = SilentClock()
    seen: list[object] = []

    def check(conn: gocp.PersistentConn) -> bool:
        seen.append(conn)
        return ping(conn)

    with gocp.new(
        echo_server.address, size=1, check=check, check_interval=1000, clock=clock
    ) as pool:
        with pool.get() as conn:
            round_trip(conn)
        assert seen == []
        clock.advance(1000.5)
        with pool.get() as again:
            assert seen == [conn]
            assert again is conn
            assert isinstance(seen[0], gocp.PersistentConn)
            assert round_trip(again, b"after") == b"after"  # the ping left nothing behind
        stats = pool.stats()
        assert (stats.dials, stats.closed_check, stats.hook_failures) == (1, 0, 0)


def test_socket_check_returning_false_closes_the_socket(echo_server: EchoServer) -> None:
    clock = SilentClock()
    verdict = [True]
    with gocp.new(
        echo_server.address,
        size=1,
        check=lambda conn: verdict[0],
        check_interval=1000,
        clock=clock,
    ) as pool:
        with pool.get() as conn:
            round_trip(conn)
            sock = conn.socket
        clock.advance(1000.5)
        verdict[0] = False
        with pool.get() as conn:
            assert sock.fileno() == -1
            assert not conn.connected
            assert round_trip(conn) == b"ping"  # redials
        stats = pool.stats()
        assert (stats.closed_check, stats.dials) == (1, 2)


def test_socket_check_without_hook_drops_a_peer_closed_socket_in_the_background(
    echo_server: EchoServer,
) -> None:
    clock = FakeClock()
    with gocp.new(echo_server.address, size=1, check_interval=10, clock=clock) as pool:
        with pool.get() as conn:
            round_trip(conn)
        echo_server.kill_connections()
        clock.advance(10.5)
        # Dropped with no get: by the check (closed_check) or the background stale probe.
        assert wait_until(
            lambda: pool.stats().closed_check + pool.stats().stale == 1, timeout=BOUND
        )
        assert not pool.stats().members[0].connected
        assert_full_pool(pool, round_trip)


def test_socket_check_catches_a_blackholed_peer_with_no_get(echo_server: EchoServer) -> None:
    check_interval, io_timeout = 0.2, 0.3
    pings: list[float] = []

    def check(conn: gocp.PersistentConn) -> bool:
        pings.append(time.monotonic())
        return ping(conn)

    with (
        FaultProxy(echo_server.address) as proxy,
        gocp.new(
            proxy.address, size=1, check=check, check_interval=check_interval, io_timeout=io_timeout
        ) as pool,
    ):
        with pool.get() as conn:
            round_trip(conn)
        assert wait_until(lambda: len(pings) >= 2, timeout=BOUND)  # checks pass meanwhile
        assert pool.stats().members[0].connected

        proxy.blackhole()
        start = time.monotonic()
        assert wait_until(
            lambda: not pool.stats().members[0].connected,
            timeout=check_interval + io_timeout + MARGIN,
        )
        assert time.monotonic() - start <= check_interval + io_timeout + MARGIN
        assert pool.stats().lends == 1  # no get was involved

        proxy.heal()
        with pool.get() as conn:
            assert round_trip(conn) == b"ping"  # a new connection


def test_close_ends_a_background_socket_check_blocked_on_a_dead_peer(
    echo_server: EchoServer,
) -> None:
    io_timeout = 3.0
    checking = threading.Event()

    def check(conn: gocp.PersistentConn) -> bool:
        checking.set()
        return ping(conn)

    before = set(threading.enumerate())
    with FaultProxy(echo_server.address) as proxy:
        pool = gocp.new(
            proxy.address, size=1, check=check, check_interval=0.1, io_timeout=io_timeout
        )
        try:
            (thread,) = gocp_threads(before)
            with pool.get() as conn:
                round_trip(conn)
            proxy.blackhole()
            checking.clear()
            assert checking.wait(BOUND)  # a check is now blocked in recv
            pool.close()
            ended = wait_until(lambda: not thread.is_alive(), timeout=MARGIN)
            assert ended, f"the background thread outlived close() (io_timeout={io_timeout})"
            assert pool.stats().connected == 0
        finally:
            pool.close()
            thread.join(io_timeout + BOUND)


def test_socket_check_failing_on_its_io_counts_as_closed_check(
    rr_server: RequestReplyServer,
) -> None:
    clock = SilentClock()

    def check(conn: gocp.PersistentConn) -> bool:
        return request(conn, new_request_id("ping")) == 1

    with gocp.new(rr_server.address, size=1, check=check, check_interval=1000, clock=clock) as pool:
        with pool.get() as conn:
            request(conn, new_request_id())
        clock.advance(1000.5)
        rr_server.fail_next(1, "reset")
        with pool.get() as conn:
            assert not conn.connected  # the failed check closed it
        stats = pool.stats()
        assert stats.closed_check == 1, stats
        assert stats.closed_broken == 0, stats  # the holder never broke it


# -- min_idle ------------------------------------------------------------------------------


def test_min_idle_clients_are_dialled_at_start() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=3, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        stats = pool.stats()
        assert stats.connected >= 2
        assert hooks.count("made") == 2
        assert wait_until(lambda: pool.stats().idle == 3, timeout=BOUND)
        assert connected_members(pool) == 2


def test_min_idle_sockets_are_dialled_at_start(echo_server: EchoServer) -> None:
    with gocp.new(echo_server.address, size=3, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        assert wait_until(lambda: echo_server.active == 2, timeout=BOUND)
        stats = pool.stats()
        assert (stats.connected, stats.dials) == (2, 2)


def test_wait_ready_without_min_idle_returns_at_once_and_raises_when_closed() -> None:
    hooks = Hooks()
    pool = client_pool(hooks, size=1)
    with within(0.0):
        pool.wait_ready(0)
    pool.close()
    with pytest.raises(gocp.PoolClosed):
        pool.wait_ready(BOUND)
    assert hooks.count("made") == 0


def test_wait_ready_times_out_while_refused_then_the_pool_fills_when_the_server_is_up() -> None:
    address = unused_address()
    with gocp.new(address, size=2, min_idle=2, retry_min=0.01, retry_max=0.05) as pool:
        with within(0.3, at_least=0.3), pytest.raises(gocp.PoolTimeout, match="min_idle") as raised:
            pool.wait_ready(0.3)
        assert "Refused" in str(raised.value) or "refused" in str(raised.value)
        assert pool.stats().dial_failures >= 1

        with EchoServer(*address) as server:
            pool.wait_ready(BOUND)
            assert wait_until(lambda: server.active == 2, timeout=BOUND)
            assert pool.stats().connected == 2
            assert_full_pool(pool, round_trip)


def test_min_idle_clients_dialled_once_the_dial_hook_works() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    hooks.dial_error = ConnectionRefusedError("server down")
    with client_pool(hooks, size=2, min_idle=2, clock=clock) as pool:
        with within(0.2, at_least=0.2), pytest.raises(gocp.PoolTimeout, match="server down"):
            pool.wait_ready(0.2)
        assert pool.stats().dial_failures >= 1
        hooks.dial_error = None
        clock.advance(10)  # past the backoff (retry_max 3.0)
        pool.wait_ready(BOUND)
        assert wait_until(lambda: connected_members(pool) == 2, timeout=BOUND)
        assert hooks.count("made") == 2


def test_min_idle_members_are_replaced_in_the_background_at_max_lifetime() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=2, min_idle=2, max_lifetime=100, clock=clock) as pool:
        pool.wait_ready(BOUND)
        assert wait_until(lambda: pool.stats().idle == 2, timeout=BOUND)
        clock.advance(101)
        assert wait_until(lambda: pool.stats().closed_lifetime == 2, timeout=BOUND)
        assert wait_until(lambda: connected_members(pool) == 2, timeout=BOUND)
        assert hooks.count("made") == 4
        assert sorted(c.number for c in hooks.closed) == [1, 2]


def test_min_idle_refilled_after_a_client_is_put_back_broken() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=2, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        client = pool.get(timeout=BOUND)
        pool.put(client, broken=True)
        assert client.closed
        assert wait_until(lambda: connected_members(pool) == 2, timeout=BOUND)
        assert hooks.count("made") == 3
        assert pool.stats().closed_broken == 1


def fail_after_io(pool: gocp.Pool[gocp.PersistentConn]) -> None:
    """A ``connection()`` block that does I/O, then raises: the member goes back broken."""
    with pool.connection(timeout=BOUND) as conn:
        round_trip(conn)
        raise RuntimeError("the request went wrong")


def test_min_idle_refilled_after_a_socket_breaks(echo_server: EchoServer) -> None:
    with gocp.new(echo_server.address, size=2, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        with pytest.raises(RuntimeError, match="went wrong"):
            fail_after_io(pool)
        assert wait_until(lambda: pool.stats().connected == 2, timeout=BOUND)
        assert wait_until(lambda: echo_server.active == 2, timeout=BOUND)
        stats = pool.stats()
        assert (stats.dials, stats.closed_broken) == (3, 1)


def test_min_idle_refilled_after_the_server_drops_idle_sockets(echo_server: EchoServer) -> None:
    with gocp.new(echo_server.address, size=2, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        assert wait_until(lambda: echo_server.active == 2, timeout=BOUND)
        echo_server.kill_connections()
        assert wait_until(lambda: pool.stats().connected == 2, timeout=2.0)


# -- max_overflow -----------------------------------------------------------------------


def test_overflow_clients_open_when_every_member_is_lent_and_close_when_put_back() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=2, max_overflow=1) as pool:
        a, b = pool.get(timeout=0), pool.get(timeout=0)
        extra = pool.get(timeout=0)
        stats = pool.stats()
        assert (stats.overflow, stats.in_use, stats.idle) == (1, 3, 0)
        assert [m.index for m in stats.members] == [0, 1]
        assert all(m.lent for m in stats.members)
        assert hooks.count("made") == 3

        with pytest.raises(gocp.PoolTimeout, match="overflow 1 of 1"):
            pool.get(timeout=0)
        with within(0.1, at_least=0.1), pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0.1)

        pool.put(extra)  # nobody waits: closed at once
        assert extra.closed
        stats = pool.stats()
        assert (stats.overflow, stats.in_use, stats.closed_overflow) == (0, 2, 1)
        with pytest.raises(ValueError, match="not lent"):
            pool.put(extra)

        another = pool.get(timeout=0)  # overflow again: a new client
        assert another.number == 4
        pool.put(another)
        pool.put(a)
        pool.put(b)
        stats = pool.stats()
        assert (stats.closed_overflow, stats.idle, stats.in_use, stats.overflow) == (2, 2, 0, 0)


def test_an_overflow_client_put_back_goes_to_a_waiter() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=1, max_overflow=1) as pool:
        member, extra = pool.get(timeout=0), pool.get(timeout=0)
        got: list[object] = []
        taker = threading.Thread(target=lambda: got.append(pool.get(timeout=BOUND)))
        taker.start()
        try:
            assert wait_until(lambda: pool.stats().waiting == 1, timeout=BOUND)
            pool.put(extra)
        finally:
            taker.join(BOUND)
        assert got == [extra]
        assert not extra.closed
        assert pool.stats().overflow == 1
        pool.put(extra)
        assert extra.closed
        pool.put(member)
        stats = pool.stats()
        assert (stats.overflow, stats.closed_overflow, stats.in_use) == (0, 1, 0)


def test_an_overflow_client_past_max_lifetime_is_not_handed_to_a_waiter() -> None:
    clock = SilentClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=1, max_overflow=1, max_lifetime=1000, clock=clock) as pool:
        member, extra = pool.get(timeout=0), pool.get(timeout=0)
        clock.advance(2000)
        got: list[Client] = []
        taker = threading.Thread(target=lambda: got.append(pool.get(timeout=BOUND)))
        taker.start()
        try:
            assert wait_until(lambda: pool.stats().waiting == 1, timeout=BOUND)
            pool.put(extra)
        finally:
            taker.join(BOUND)
        (handed,) = got
        assert handed is not extra  # the waiter got a new connection
        assert extra.closed
        assert pool.stats().closed_lifetime == 1
        pool.put(handed)  # an overflow connection nobody waits for: closed
        pool.put(member)  # past its lifetime too: replaced
        stats = pool.stats()
        assert (stats.closed_lifetime, stats.closed_overflow, stats.overflow) == (2, 1, 0)


def test_overflow_sockets(echo_server: EchoServer) -> None:
    with gocp.new(echo_server.address, size=1, max_overflow=1) as pool:
        member, extra = pool.get(), pool.get()
        assert round_trip(extra, b"extra") == b"extra"
        sock = extra.socket
        stats = pool.stats()
        assert (stats.overflow, stats.in_use, len(stats.members)) == (1, 2, 1)
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0)
        pool.put(extra)
        assert sock.fileno() == -1
        with pytest.raises(ValueError, match="not lent"):
            extra.sendall(b"after put")
        pool.put(member)
        stats = pool.stats()
        assert (stats.overflow, stats.closed_overflow, stats.in_use, stats.idle) == (0, 1, 0, 1)
        with pool.get(timeout=0) as again:
            assert again is member
            assert round_trip(again) == b"ping"


# -- leak_timeout ----------------------------------------------------------------------------


def test_a_leak_is_reported_once_with_where_it_was_taken(
    records: tuple[logging.Logger, Records],
) -> None:
    logger, handler = records
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=2, leak_timeout=10, clock=clock, logger=logger) as pool:
        first, first_line = pool.get(timeout=0), sys._getframe().f_lineno
        clock.advance(10.5)
        assert wait_until(lambda: len(handler.events("leak")) == 1, timeout=BOUND)
        assert pool.stats().leaks == 1

        second, second_line = pool.get(timeout=0), sys._getframe().f_lineno
        clock.advance(10.5)  # the first is held 21 s now: still reported once only
        assert wait_until(lambda: len(handler.events("leak")) == 2, timeout=BOUND)
        first_report, second_report = handler.events("leak")
        assert f"{HERE}:{first_line} in " in first_report.taken_at  # type: ignore[attr-defined]
        assert f"{HERE}:{second_line} in " in second_report.taken_at  # type: ignore[attr-defined]
        assert first_report.levelno == logging.WARNING
        assert pool.stats().leaks == 2
        pool.put(first)
        pool.put(second)

        # A new lend of the same member is a new lend: reported again if held too long.
        again = pool.get(timeout=0)
        clock.advance(10.5)
        assert wait_until(lambda: len(handler.events("leak")) == 3, timeout=BOUND)
        pool.put(again)
        assert pool.stats().leaks == 3


def test_a_leaked_socket_is_reported_through_structlog(echo_server: EchoServer) -> None:
    clock = FakeClock()
    logger = structlog.get_logger()
    with (
        structlog.testing.capture_logs() as logs,
        gocp.new(echo_server.address, size=1, leak_timeout=10, clock=clock, logger=logger) as pool,
    ):
        conn, line = pool.get(), sys._getframe().f_lineno
        round_trip(conn)
        clock.advance(12)

        def leaks() -> list[dict[str, Any]]:
            return [entry for entry in list(logs) if entry["event"] == "gocp.leak"]

        assert wait_until(lambda: len(leaks()) == 1, timeout=BOUND)
        (leak,) = leaks()
        assert leak["log_level"] == "warning"
        assert f"{HERE}:{line} in " in leak["taken_at"]
        assert leak["held_for"] >= 10
        assert leak["member"] == conn.index
        pool.put(conn)
        assert pool.stats().leaks == 1


def test_pool_timeout_names_where_the_longest_held_member_was_taken() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=2, leak_timeout=100, clock=clock) as pool:
        oldest, line = pool.get(timeout=0), sys._getframe().f_lineno
        clock.advance(5)
        newer = pool.get(timeout=0)
        with pytest.raises(gocp.PoolTimeout) as at_once:
            pool.get(timeout=0)
        with pytest.raises(gocp.PoolTimeout) as after_waiting:
            pool.get(timeout=0.05)
        for raised in (at_once, after_waiting):
            message = str(raised.value)
            assert f"{HERE}:{line} in " in message, message
            assert "held (for 5.0s)" in message, message
        pool.put(oldest)
        pool.put(newer)
        assert pool.stats().timeouts == 2


def test_a_leak_through_connection_names_the_with_statement(
    records: tuple[logging.Logger, Records],
) -> None:
    logger, handler = records
    clock = FakeClock()
    hooks = Hooks(clock)
    with client_pool(hooks, size=1, leak_timeout=10, clock=clock, logger=logger) as pool:
        line = sys._getframe().f_lineno + 1
        with pool.connection(timeout=0):
            clock.advance(10.5)
            assert wait_until(lambda: len(handler.events("leak")) == 1, timeout=BOUND)
            (report,) = handler.events("leak")
            with pytest.raises(gocp.PoolTimeout) as raised:
                pool.get(timeout=0)
        where = f"{HERE}:{line} in "
        assert where in report.taken_at, report.taken_at  # type: ignore[attr-defined]
        assert where in str(raised.value), str(raised.value)


# -- get(fresh=True) and put(broken=True) ---------------------------------------------------


def test_get_fresh_closes_the_old_client_first() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=1) as pool:
        old = pool.get(timeout=0)
        pool.put(old)
        new = pool.get(timeout=0, fresh=True)
        assert new is not old
        assert old.closed
        assert hooks.events == ["dial 1", "close 1", "dial 2"]
        pool.put(new)
        stats = pool.stats()
        assert (stats.closed_fresh, stats.dials) == (1, 2)
        with pool.connection(timeout=0, fresh=True) as newest:
            assert newest.number == 3
        assert pool.stats().closed_fresh == 2


def test_get_fresh_socket(echo_server: EchoServer) -> None:
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.get() as conn:
            round_trip(conn)
            old = conn.socket
        with pool.get(fresh=True) as again:
            assert again is conn  # the same member
            assert old.fileno() == -1  # its old connection closed first
            assert round_trip(again) == b"ping"
            assert again.socket is not old
        stats = pool.stats()
        assert (stats.closed_fresh, stats.dials) == (1, 2)


def test_put_broken_closes_the_client() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=1) as pool:
        old = pool.get(timeout=0)
        pool.put(old, broken=True)
        assert old.closed
        stats = pool.stats()
        assert (stats.closed_broken, stats.broken, stats.connected) == (1, 1, 0)
        new = pool.get(timeout=0)
        assert new is not old
        pool.put(new)


# -- stats().members ------------------------------------------------------------------------


def test_member_stats() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=3) as pool:
        members = pool.stats().members
        assert [m.index for m in members] == [0, 1, 2]
        for m in members:
            assert isinstance(m, gocp.MemberStats)
            assert (m.lent, m.connected, m.connected_at, m.last_used_at, m.uses) == (
                False,
                False,
                None,
                None,
                0,
            )

        before = time.time()
        client = pool.get(timeout=0)
        after = time.time()
        (member,) = [m for m in pool.stats().members if m.lent]
        assert member.connected
        assert member.connected_at is not None
        assert before - 1 <= member.connected_at <= after + 1
        assert member.last_used_at is None  # never put back
        assert member.uses == 1

        pool.put(client)
        returned = pool.stats().members[member.index]
        assert not returned.lent
        assert returned.last_used_at is not None
        assert abs(returned.last_used_at - time.time()) < 1
        assert returned.connected_at == member.connected_at

        # Frozen: a snapshot cannot be changed.
        with pytest.raises(AttributeError):
            returned.uses = 5  # type: ignore[misc]


def test_member_uses_count_lends_of_the_current_connection() -> None:
    hooks = Hooks()
    with client_pool(hooks, size=1) as pool:
        for expected in (1, 2, 3):
            client = pool.get(timeout=0)
            assert pool.stats().members[0].uses == expected
            pool.put(client)
        assert pool.stats().members[0].uses == 3

        client = pool.get(timeout=0)
        pool.put(client, broken=True)
        assert pool.stats().members[0].uses == 0  # no connection
        client = pool.get(timeout=0)
        assert pool.stats().members[0].uses == 1  # a new connection: counted from 1
        pool.put(client)
        client = pool.get(timeout=0, fresh=True)
        assert pool.stats().members[0].uses == 1
        pool.put(client)


def test_member_times_follow_the_pool_clock(echo_server: EchoServer) -> None:
    clock = FakeClock()
    with gocp.new(echo_server.address, size=1, clock=clock) as pool:
        with pool.get() as conn:
            round_trip(conn)
            clock.advance(7)
        member = pool.stats().members[0]
        assert member.connected_at is not None
        assert member.last_used_at is not None
        assert member.last_used_at - member.connected_at == pytest.approx(7)
        assert abs(member.connected_at - time.time()) < 5  # made before the clock moved
        assert member.uses == 1


# -- hooks that raise ----------------------------------------------------------------------


def test_a_dial_hook_that_raises_is_a_dial_error_and_loses_no_slot() -> None:
    clock = FakeClock()
    hooks = Hooks(clock)
    boom = OSError("no route")
    with client_pool(hooks, size=3, clock=clock) as pool:
        hooks.dial_error = boom
        with pytest.raises(gocp.DialError) as raised:
            pool.get(timeout=0)
        assert raised.value.__cause__ is boom
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.dial_failures) == (3, 0, 1)

        with pytest.raises(gocp.DialError) as backing_off:  # fails fast during the backoff
            pool.get(timeout=0)
        assert backing_off.value.retry_in > 0
        assert backing_off.value.__cause__ is boom

        hooks.dial_error = None
        clock.advance(10)  # past retry_max
        assert_full_pool(pool, None)


def test_a_close_hook_that_raises_is_reported_and_counted_never_raised(
    records: tuple[logging.Logger, Records],
) -> None:
    logger, handler = records
    clock = FakeClock()
    hooks = Hooks(clock)
    hooks.close_error = RuntimeError("close exploded")
    pool = client_pool(hooks, size=3, idle_timeout=10, clock=clock, logger=logger)
    try:
        client = pool.get(timeout=0)
        pool.put(client, broken=True)  # does not raise
        assert client.closed
        assert pool.stats().hook_failures == 1
        assert_full_pool(pool, None)

        idle = pool.get(timeout=0)
        pool.put(idle)
        clock.advance(10.5)  # closed by the background thread
        assert wait_until(lambda: pool.stats().closed_idle >= 1, timeout=BOUND)
        assert wait_until(lambda: pool.stats().hook_failures >= 2, timeout=BOUND)
        assert_full_pool(pool, None)
    finally:
        failures = pool.stats().hook_failures
        connected = pool.stats().connected
        pool.close()  # does not raise either
    assert pool.stats().hook_failures == failures + connected
    logged = handler.events("close_failed")  # identical repeats are counted, not repeated
    assert sum(getattr(record, "repeated", 1) for record in logged) == failures + connected
    assert "close exploded" in handler.events("close_failed")[0].getMessage()
    assert all(c.closed for c in hooks.made)


# -- the background thread ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"max_overflow": 2}],
    ids=["no option", "max_overflow"],
)
def test_no_background_thread_for_a_client_pool_that_needs_none(options: dict[str, Any]) -> None:
    before = set(threading.enumerate())
    with client_pool(Hooks(), size=2, **options):
        assert gocp_threads(before) == []


def test_no_background_thread_for_a_socket_pool_that_needs_none(echo_server: EchoServer) -> None:
    before = set(threading.enumerate())
    with gocp.new(echo_server.address, size=2, max_overflow=1) as pool:
        with pool.get() as conn:
            round_trip(conn)
        assert gocp_threads(before) == []


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": 60},
        {"max_lifetime": 60},
        {"min_idle": 1},
        {"leak_timeout": 60},
        {"check_interval": 60, "check": True},
        {"idle_timeout": 60, "max_lifetime": 60, "min_idle": 1, "leak_timeout": 60},
    ],
    ids=["idle_timeout", "max_lifetime", "min_idle", "leak_timeout", "check", "all"],
)
@pytest.mark.parametrize("kind", ["client", "socket"])
def test_one_background_thread_that_ends_after_close(
    kind: str, options: dict[str, Any], echo_server: EchoServer
) -> None:
    before = set(threading.enumerate())
    options = dict(options)
    check = options.pop("check", False)
    if kind == "client":
        pool: gocp.Pool[Any] = client_pool(Hooks(), check=check, size=2, **options)
    else:
        pool = gocp.new(echo_server.address, size=2, check=ping if check else None, **options)
    try:
        threads = gocp_threads(before)
        assert len(threads) == 1, threads
        (thread,) = threads
        assert thread.daemon
        with pool.connection(timeout=BOUND):
            pass
        pool.wait_ready(BOUND)
    finally:
        pool.close()
    assert wait_until(lambda: not thread.is_alive(), timeout=BOUND)
    pool.close()  # idempotent


@pytest.mark.parametrize("kind", ["client", "socket"])
def test_a_pool_dropped_without_close_is_collected_and_closes_what_it_holds(
    kind: str, echo_server: EchoServer
) -> None:
    before = set(threading.enumerate())
    hooks = Hooks()
    opened: list[Any] = []
    if kind == "client":
        pool: gocp.Pool[Any] = client_pool(hooks, size=2, idle_timeout=60, min_idle=1)
        pool.wait_ready(BOUND)
        client = pool.get(timeout=BOUND)
        pool.put(client)
        del client
    else:
        pool = gocp.new(echo_server.address, size=2, idle_timeout=60, min_idle=1)
        pool.wait_ready(BOUND)
        with pool.get(timeout=BOUND) as conn:
            round_trip(conn)
            opened.append(conn.socket)
        del conn
    (thread,) = gocp_threads(before)
    assert wait_until(functools.partial(all_idle, pool), timeout=BOUND)
    ref = weakref.ref(pool)
    del pool
    assert ref() is None, gc.get_referrers(ref())  # collected at once: no cycle holds it
    if kind == "client":
        assert hooks.made
        assert all(client.closed for client in hooks.made)
    else:
        assert all(sock.fileno() == -1 for sock in opened)
        assert wait_until(lambda: echo_server.active == 0, timeout=BOUND)
    assert wait_until(lambda: not thread.is_alive(), timeout=BOUND)


def test_a_pool_at_rest_with_min_idle_does_not_spin(monkeypatch):
    """Regression: a drain that closed nothing used to wake the background thread, which
    drained again, and so on: a pool with ``min_idle`` at rest burned a CPU."""
    from gocp._hub import Hub

    passes = []
    real = Hub.maintain

    def counted(self):
        passes.append(threading.get_ident())
        return real(self)

    monkeypatch.setattr(Hub, "maintain", counted)
    with gocp.pool(object, size=2, min_idle=2) as pool:
        pool.wait_ready(BOUND)
        settled = len(passes)
        window = threading.Event()
        window.wait(0.3)  # a window of time to count passes in (nothing to wait for)
        assert len(passes) - settled <= 2, f"{len(passes) - settled} passes in 0.3 s at rest"
