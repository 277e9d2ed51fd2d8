"""Pool: lending, waiting, giving back, misuse, closing, the context managers and stats."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable

import attrs
import pytest
from conftest import wait_until
from invariants import round_trip, unused_address

import gocp

MARGIN = 0.5  # generous slack above a timeout, for a loaded machine


class Worker:
    """A thread running ``fn``; keeps its result or exception and when it finished."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def start(self) -> Worker:
        self.thread.start()
        return self

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker still running"


def start_waiters(pool: gocp.Pool, fns: list[Callable[[], object]]) -> list[Worker]:
    """Start one worker per ``fn``, each in turn once the previous one is queued in ``get``."""
    workers = []
    base = pool.stats().waiting
    for i, fn in enumerate(fns):
        workers.append(Worker(fn).start())
        assert wait_until(lambda i=i: pool.stats().waiting == base + i + 1, timeout=5)
    return workers


# -- lending ---------------------------------------------------------------------------


def test_pool_lends_exactly_its_members():
    with gocp.new(unused_address(), size=3) as pool:
        assert pool.size == 3
        held = [pool.get(timeout=0) for _ in range(3)]
        assert all(isinstance(conn, gocp.PersistentConn) for conn in held)
        assert len({id(conn) for conn in held}) == 3
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0)
        for conn in held:
            pool.put(conn)
        # Over many lends only those three objects are ever lent.
        seen = set()
        for _ in range(20):
            conn = pool.get(timeout=0)
            seen.add(id(conn))
            pool.put(conn)
        assert seen == {id(conn) for conn in held}


def test_members_lent_in_ring_order():
    with gocp.new(unused_address(), size=3) as pool:
        a, b, c = pool.get(), pool.get(), pool.get()
        pool.put(b)
        pool.put(a)
        pool.put(c)
        assert [pool.get(), pool.get(), pool.get()] == [b, a, c]
        for conn in (a, b, c):
            pool.put(conn)


def test_get_nonblocking():
    with gocp.new(unused_address(), size=1) as pool:
        conn = pool.get(timeout=0)  # a free member: succeeds
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as info:
            pool.get(timeout=0)
        assert time.monotonic() - started < 0.1
        assert info.value.timeout == 0
        assert isinstance(info.value, TimeoutError)
        stats = pool.stats()
        assert (stats.timeouts, stats.waiting, stats.waits) == (1, 0, 0)
        pool.put(conn)
        assert pool.get(timeout=0) is conn  # free again: succeeds again
        pool.put(conn)


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_get_timeout_honoured(timeout):
    with gocp.new(unused_address(), size=1) as pool:
        conn = pool.get()
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as info:
            pool.get(timeout=timeout)
        elapsed = time.monotonic() - started
        assert timeout <= elapsed <= timeout + MARGIN
        assert info.value.timeout == timeout
        assert str(timeout) in str(info.value)
        stats = pool.stats()
        assert (stats.timeouts, stats.waits, stats.waiting) == (1, 1, 0)
        assert (stats.idle, stats.in_use) == (0, 1)
        pool.put(conn)
        assert pool.stats().idle == 1  # the timed-out waiter did not take it


def test_waiter_served_by_a_put_from_another_thread():
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        (worker,) = start_waiters(pool, [lambda: pool.get(timeout=5)])
        put_at = time.monotonic()
        pool.put(held)
        worker.join()
        assert worker.error is None
        assert worker.result is held
        assert worker.finished_at - put_at < 1.0
        stats = pool.stats()
        assert (stats.in_use, stats.idle, stats.waiting, stats.waits, stats.lends) == (
            1,
            0,
            0,
            1,
            2,
        )
        pool.put(held)


def test_waiters_served_first_come_first_served():
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        order: list[int] = []

        def waiter(i: int) -> Callable[[], object]:
            def run() -> None:
                conn = pool.get(timeout=10)
                order.append(i)
                pool.put(conn)

            return run

        workers = start_waiters(pool, [waiter(i) for i in range(6)])
        pool.put(held)
        for worker in workers:
            worker.join()
            assert worker.error is None
        assert order == list(range(6))
        assert pool.stats().idle == 1


def test_a_put_member_goes_to_the_waiter_not_to_a_later_caller():
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        got_it = threading.Event()
        release = threading.Event()

        def waiter() -> object:
            conn = pool.get(timeout=5)
            got_it.set()
            assert release.wait(5)
            pool.put(conn)
            return conn

        (worker,) = start_waiters(pool, [waiter])
        pool.put(held)
        # The member is already the waiter's, even if its thread has not run yet.
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0)
        assert got_it.wait(5)
        release.set()
        worker.join()
        assert worker.result is held


def test_timed_out_waiter_leaves_the_queue():
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        short, long_ = start_waiters(
            pool, [lambda: pool.get(timeout=0.1), lambda: pool.get(timeout=5)]
        )
        short.join()
        assert isinstance(short.error, gocp.PoolTimeout)
        assert pool.stats().waiting == 1
        pool.put(held)
        long_.join()
        assert long_.result is held
        pool.put(held)
        stats = pool.stats()
        assert (stats.idle, stats.waiting, stats.timeouts) == (1, 0, 1)


def test_waiters_are_reused_after_timeouts_and_hand_offs():
    """A served waiter serves again; its lock is re-armed each time, so a later wait
    really waits and really wakes."""
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        for _ in range(3):
            with pytest.raises(gocp.PoolTimeout):
                pool.get(timeout=0.01)
        assert pool._spare_waiters == []  # timed-out waiters are dropped
        for _ in range(3):
            (waiter,) = start_waiters(pool, [lambda: pool.get(timeout=5)])
            assert wait_until(lambda: pool.stats().waiting == 1, timeout=5)
            pool.put(held)
            waiter.join()
            assert waiter.result is held
        assert len(pool._spare_waiters) <= 2  # this thread's and the workers'
        with pytest.raises(gocp.PoolTimeout):  # a reused waiter still waits its time
            pool.get(timeout=0.05)
        pool.put(held)
        assert pool.stats().idle == 1


class _HookedLock:
    """A waiter lock whose timed wait, once it gives up, first runs a hook: a put or a
    close landing between the timeout and the pool lock, deterministically."""

    hooks: list[Callable[[], None]] = []

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if not got and blocking and self.hooks:
            self.hooks.pop()()
        return got

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def test_waiter_served_just_after_its_timeout_is_re_armed(monkeypatch):
    from gocp import _hub

    monkeypatch.setattr(_hub, "_allocate_lock", _HookedLock)
    monkeypatch.setattr(_HookedLock, "hooks", [])
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()
        _HookedLock.hooks.append(lambda: pool.put(held))  # served as the wait gives up
        assert pool.get(timeout=0.01) is held  # the hand-off wins over the timeout
        (waiter,) = pool._spare_waiters
        assert waiter.lock.locked()  # re-armed: its next wait really waits
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0.1)
        assert time.monotonic() - started >= 0.09
        _HookedLock.hooks.append(pool.close)  # closed as the wait gives up
        with pytest.raises(gocp.PoolClosed):
            pool.get(timeout=0.01)
        pool.put(held)
        stats = pool.stats()
        assert (stats.in_use, stats.waiting, stats.timeouts) == (0, 0, 1)


def test_waiter_reuse_under_racing_timeouts_loses_nothing():
    """Timeouts racing hand-offs (the served-after-timeout path re-arms the lock)."""
    with gocp.new(unused_address(), size=2) as pool:
        stop = threading.Event()
        errors: list[BaseException] = []
        served = [0]

        def caller(timeouts: itertools.cycle[float]) -> None:
            while not stop.is_set():
                try:
                    member = pool.get(timeout=next(timeouts))
                except gocp.PoolTimeout:
                    continue
                except BaseException as exc:
                    errors.append(exc)
                    return
                served[0] += 1
                os.sched_yield()  # hand the interpreter to others while holding it
                pool.put(member)

        # Some waits all but surely time out, others are all but surely served.
        threads = [
            threading.Thread(target=caller, args=(itertools.cycle([1e-5, 0.05]),)) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: served[0] >= 3000 or bool(errors), timeout=20)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert not errors
        assert not any(thread.is_alive() for thread in threads)
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.waiting) == (2, 0, 0)
        assert len(pool._spare_waiters) <= len(threads)
        assert stats.waits > 0  # both paths ran
        assert stats.timeouts > 0


# -- closing ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 0, 1])
def test_get_on_closed_pool(timeout):
    pool = gocp.new(unused_address(), size=2)
    pool.close()
    assert pool.closed
    started = time.monotonic()
    with pytest.raises(gocp.PoolClosed):
        pool.get(timeout=timeout)
    assert time.monotonic() - started < 0.5
    with pytest.raises(gocp.PoolClosed), pool.connection():
        pass
    assert pool.stats().lends == 0


def test_close_wakes_waiters_with_pool_closed(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        held = pool.get()
        assert round_trip(held) == b"ping"
        workers = start_waiters(pool, [lambda: pool.get(timeout=30)] * 3)
        closed_at = time.monotonic()
        pool.close()
        for worker in workers:
            worker.join()
            assert isinstance(worker.error, gocp.PoolClosed)
            assert worker.finished_at - closed_at < 1.0
        stats = pool.stats()
        assert (stats.waiting, stats.timeouts, stats.in_use, stats.closed) == (0, 0, 1, True)
        # The holder keeps working until it puts the member back.
        assert round_trip(held, b"still") == b"still"
        pool.put(held)
        assert not held.connected


def test_close_with_members_lent(echo_server):
    with gocp.new(echo_server.address, size=3) as pool:
        a, b, c = pool.get(), pool.get(), pool.get()
        for conn in (a, b, c):
            assert round_trip(conn) == b"ping"
        idle_socket = c.socket
        pool.put(c)
        pool.close()
        # The idle member is closed at once; the lent ones stay open for their holders.
        assert not c.connected
        assert idle_socket.fileno() == -1
        assert a.connected
        assert b.connected
        assert round_trip(a, b"a") == b"a"
        assert round_trip(b, b"b") == b"b"
        sock_a = a.socket
        pool.put(a)
        assert not a.connected  # closed when put back
        assert sock_a.fileno() == -1
        pool.put(b, broken=True)
        assert not b.connected
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.connected, stats.closed) == (0, 0, 0, True)
        with pytest.raises(gocp.PoolClosed):
            pool.get(timeout=0)


def test_lent_member_does_not_redial_after_close(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        conn = pool.get()
        try:
            assert round_trip(conn) == b"ping"
            pool.close()
            echo_server.kill_connections()
            with pytest.raises(gocp.ConnectionBroken):
                round_trip(conn)
            dials = pool.stats().dials
            with pytest.raises(gocp.PoolClosed):
                conn.sendall(b"x")
            assert pool.stats().dials == dials
        finally:
            pool.put(conn)


def test_close_is_idempotent_and_concurrent(echo_server):
    pool = gocp.new(echo_server.address, size=4)
    held = [pool.get() for _ in range(4)]
    for conn in held:
        assert round_trip(conn) == b"ping"
    for conn in held:
        pool.put(conn)
    barrier = threading.Barrier(8)

    def close() -> None:
        barrier.wait(5)
        pool.close()

    workers = [Worker(close).start() for _ in range(8)]
    for worker in workers:
        worker.join()
        assert worker.error is None
    pool.close()
    stats = pool.stats()
    assert (stats.closed, stats.idle, stats.connected) == (True, 0, 0)
    assert all(not conn.connected for conn in held)


def test_close_never_waits_on_the_network():
    # A peer that never reads and never accepts: close still returns at once.
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        pool = gocp.new(listener.getsockname(), size=2, io_timeout=30)
        conns = [pool.get(), pool.get()]
        for conn in conns:
            conn.sendall(b"x" * 1000)  # unread bytes in flight
        pool.put(conns[0])
        started = time.monotonic()
        pool.close()
        assert time.monotonic() - started < 0.5
        pool.put(conns[1])
        assert time.monotonic() - started < 0.5
    finally:
        listener.close()


def test_pool_starts_no_thread(echo_server):
    before = set(threading.enumerate())
    with gocp.new(echo_server.address, size=3) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        assert set(threading.enumerate()) == before
    assert set(threading.enumerate()) == before


def test_pool_is_a_context_manager(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        assert not pool.closed
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
    assert pool.closed
    assert not conn.connected


def test_pool_context_manager_closes_on_error():
    with pytest.raises(RuntimeError, match="boom"), gocp.new(unused_address(), size=1) as pool:
        raise RuntimeError("boom")
    assert pool.closed


# -- put and misuse ----------------------------------------------------------------------


def assert_unchanged(pool: gocp.Pool, before: gocp.PoolStats) -> None:
    assert pool.stats() == before


@pytest.mark.parametrize("thing", [None, object(), "conn", 1])
def test_put_of_a_non_member_is_type_error(thing):
    with gocp.new(unused_address(), size=2) as pool:
        held = pool.get()
        before = pool.stats()
        with pytest.raises(TypeError, match="conn"):
            pool.put(thing)
        with pytest.raises(TypeError, match="conn"):
            pool.put(thing, broken=True)
        assert_unchanged(pool, before)
        pool.put(held)


def test_put_of_a_socket_is_type_error(echo_server):
    with gocp.new(echo_server.address, size=1) as pool, socket.socket() as sock:
        before = pool.stats()
        with pytest.raises(TypeError, match="PersistentConn"):
            pool.put(sock)  # type: ignore[arg-type]
        assert_unchanged(pool, before)


def test_put_of_another_pools_member(echo_server):
    with (
        gocp.new(echo_server.address, size=1) as pool,
        gocp.new(echo_server.address, size=1) as other,
    ):
        mine = pool.get()
        theirs = other.get()
        before, before_other = pool.stats(), other.stats()
        for broken in (False, True):
            with pytest.raises(ValueError, match="another pool"):
                pool.put(theirs, broken=broken)
        assert_unchanged(pool, before)
        assert_unchanged(other, before_other)
        # Both pools still work and the member is still lent by its own pool.
        other.put(theirs)
        pool.put(mine)
        assert pool.get(timeout=0) is mine
        assert other.get(timeout=0) is theirs
        pool.put(mine)
        other.put(theirs)


@pytest.mark.parametrize(
    ("first", "second"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_double_put_is_value_error_and_never_lends_twice(echo_server, first, second):
    with gocp.new(echo_server.address, size=2) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        pool.put(conn, broken=first)
        before = pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            pool.put(conn, broken=second)
        assert_unchanged(pool, before)
        # Had the double put been accepted, two callers would now share one member.
        a, b = pool.get(timeout=0), pool.get(timeout=0)
        assert a is not b
        with pytest.raises(gocp.PoolTimeout):
            pool.get(timeout=0)
        pool.put(a)
        pool.put(b)


def test_put_of_a_member_never_lent():
    with gocp.new(unused_address(), size=2) as pool:
        conn = pool.get()
        pool.put(conn)  # now idle
        before = pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            pool.put(conn)
        assert_unchanged(pool, before)


def test_put_after_close_twice():
    pool = gocp.new(unused_address(), size=1)
    conn = pool.get()
    pool.close()
    pool.put(conn)
    with pytest.raises(ValueError, match="not lent"):
        pool.put(conn)


def test_put_broken_closes_the_socket_and_the_member_redials(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        sock = conn.socket
        assert sock is not None
        pool.put(conn, broken=True)
        assert not conn.connected
        assert sock.fileno() == -1
        stats = pool.stats()
        assert (stats.broken, stats.idle, stats.in_use, stats.connected) == (1, 1, 0, 0)
        assert wait_until(lambda: echo_server.active == 0)  # the server saw it go
        again = pool.get(timeout=0)
        assert again is conn
        assert round_trip(again, b"new") == b"new"
        assert pool.stats().dials == 2
        pool.put(again)


def test_put_broken_hands_the_member_to_a_waiter(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        held = pool.get()
        assert round_trip(held) == b"ping"

        def use() -> bytes:
            conn = pool.get(timeout=5)
            try:
                return round_trip(conn, b"waiter")
            finally:
                pool.put(conn)

        (worker,) = start_waiters(pool, [use])
        pool.put(held, broken=True)
        worker.join()
        assert worker.error is None
        assert worker.result == b"waiter"
        stats = pool.stats()
        assert (stats.broken, stats.dials, stats.idle) == (1, 2, 1)


def test_put_broken_of_a_disconnected_member_counts_nothing():
    with gocp.new(unused_address(), size=1) as pool:
        conn = pool.get()
        pool.put(conn, broken=True)
        stats = pool.stats()
        assert (stats.broken, stats.idle, stats.in_use) == (0, 1, 0)


def test_settimeout_lasts_until_put(echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=3) as pool:
        conn = pool.get()
        assert conn.gettimeout() == 3.0
        assert round_trip(conn) == b"ping"
        conn.settimeout(0.5)
        assert conn.gettimeout() == 0.5
        assert conn.connected
        assert conn.socket.gettimeout() == 0.5
        pool.put(conn)
        conn = pool.get()
        assert conn.gettimeout() == 3.0
        assert conn.connected
        assert conn.socket.gettimeout() == 3.0
        conn.settimeout(None)
        pool.put(conn, broken=True)
        conn = pool.get()
        assert conn.gettimeout() == 3.0
        assert round_trip(conn) == b"ping"
        assert conn.connected
        assert conn.socket.gettimeout() == 3.0
        pool.put(conn)


# -- the connection() context manager -----------------------------------------------------


def test_connection_puts_back(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection(timeout=1) as conn:
            assert pool.stats().in_use == 1
            assert round_trip(conn) == b"ping"
            sock = conn.socket
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.broken) == (1, 0, 0)
        with pool.connection(timeout=0) as again:
            assert again is conn
            assert again.socket is sock  # kept connected for the next lend


def test_connection_broken_when_the_block_raises_after_io(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        used: list[gocp.PersistentConn] = []

        def block() -> None:
            with pool.connection() as conn:
                used.append(conn)
                conn.sendall(b"half a request")
                raise ValueError("bad reply")

        with pytest.raises(ValueError, match="bad reply"):
            block()
        # The stream may hold an unread reply: the member went back broken.
        assert not used[0].connected
        stats = pool.stats()
        assert (stats.broken, stats.idle, stats.in_use) == (1, 1, 0)
        with pool.connection() as conn:
            assert conn is used[0]
            assert round_trip(conn) == b"ping"  # no left-over bytes from before


def test_connection_not_broken_when_the_block_raises_before_io(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
            sock = conn.socket
        with pytest.raises(ValueError, match="early"), pool.connection():
            raise ValueError("early")
        with pool.connection() as conn:
            assert conn.socket is sock
        stats = pool.stats()
        assert (stats.broken, stats.idle, stats.dials) == (0, 1, 1)


def test_connection_after_a_connection_error_counts_one_break(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        echo_server.kill_connections(reset=True)

        def block() -> None:
            with pool.connection() as conn:
                assert round_trip(conn) == b"ping"  # the stale socket was replaced first
                echo_server.kill_connections(reset=True)
                conn.recv(1)

        with pytest.raises(gocp.ConnectionBroken) as info:
            block()
        assert isinstance(info.value.__cause__, ConnectionResetError)
        stats = pool.stats()
        # One broken connection, counted once, though it also went back broken.
        assert (stats.broken, stats.stale, stats.idle) == (1, 1, 1)
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"


def test_connection_timeout(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        held = pool.get()
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout), pool.connection(timeout=0.1):
            pass
        assert 0.1 <= time.monotonic() - started <= 0.1 + MARGIN
        pool.put(held)


# -- stats and repr ------------------------------------------------------------------------


def test_stats_snapshot_is_frozen_and_does_not_move(echo_server):
    with gocp.new(echo_server.address, size=2) as pool:
        snapshot = pool.stats()
        assert isinstance(snapshot, gocp.PoolStats)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            snapshot.idle = 0  # type: ignore[misc]
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        assert (snapshot.idle, snapshot.in_use, snapshot.lends, snapshot.dials) == (2, 0, 0, 0)
        now = pool.stats()
        assert (now.idle, now.in_use, now.lends, now.dials, now.connected) == (1, 1, 1, 1, 1)
        pool.put(conn)


def test_stats_fields(echo_server):
    with gocp.new(echo_server.address, size=2) as pool:
        stats = pool.stats()
        assert stats.address == echo_server.address_text
        assert (stats.size, stats.idle, stats.in_use, stats.waiting, stats.connected) == (
            2,
            2,
            0,
            0,
            0,
        )
        assert (stats.dials, stats.dial_failures, stats.broken, stats.stale) == (0, 0, 0, 0)
        assert (stats.lends, stats.waits, stats.timeouts, stats.closed) == (0, 0, 0, False)


def test_repr_shows_counts(echo_server):
    with gocp.new(echo_server.address, size=3) as pool:
        conn = pool.get()
        text = repr(pool)
        assert echo_server.address_text in text
        for part in ("size=3", "idle=2", "in_use=1", "waiting=0"):
            assert part in text
        assert "closed" not in text
        pool.put(conn)
    assert "closed" in repr(pool)


def test_connection_context_is_single_use():
    with gocp.new(unused_address(), size=1) as pool:
        lend = pool.connection(timeout=0)
        with lend as conn:
            assert pool.stats().in_use == 1
        with pytest.raises(RuntimeError, match="once"), lend:
            pass
        assert pool.stats().in_use == 0
        assert pool.get(timeout=0) is conn
        pool.put(conn)


class Interrupted(Exception):
    pass


def test_get_interrupted_while_queued_leaves_the_queue():
    """A signal handler raising in a caller blocked in ``get``: the pool stays whole."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    import signal

    def handler(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with gocp.new(unused_address(), size=1) as pool:
            held = pool.get()

            def interrupt() -> None:
                assert wait_until(lambda: pool.stats().waiting == 1, timeout=5)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

            worker = Worker(interrupt).start()
            started = time.monotonic()
            with pytest.raises(Interrupted):
                pool.get(timeout=10)
            assert time.monotonic() - started < 5
            worker.join()
            assert worker.error is None
            stats = pool.stats()
            assert (stats.waiting, stats.in_use, stats.idle) == (0, 1, 0)
            pool.put(held)
            assert pool.get(timeout=0) is held  # not handed to the departed waiter
            pool.put(held)
    finally:
        signal.signal(signal.SIGUSR1, previous)
