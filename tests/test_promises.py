"""The core's promises at their edges: regressions for what an adversarial review and a
newcomer's trial found broken (interrupts are in test_interrupts.py, fork in
test_reliability.py and test_hardening.py, kernel timeouts in test_timeouts.py)."""

from __future__ import annotations

import gc
import os
import socket
import threading
import weakref

import pytest
from conftest import wait_until
from invariants import MARGIN, round_trip, unused_address, within

import gocp
from gocp.testing import EchoServer, FakeClock

# -- misuse that used to lose a member or mix two holders' bytes -------------------------------


def test_a_member_is_a_context_manager_that_puts_itself_back(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.get() as conn:
            assert round_trip(conn) == b"ping"
            assert pool.stats().in_use == 1
        assert pool.stats().idle == 1

        # Raising after I/O puts it back broken, by the rule of pool.connection().
        def request() -> None:
            with pool.get() as conn:
                conn.sendall(b"half")
                raise ValueError("bad reply")

        with pytest.raises(ValueError, match="bad reply"):
            request()
        stats = pool.stats()
        assert (stats.idle, stats.broken) == (1, 1)


def test_io_after_put_raises_and_never_dials(echo_server):
    """A stale holder's bytes must not land in the next holder's stream, and an idle
    member must not dial for it."""
    with gocp.new(echo_server.address, size=1) as pool:
        conn = pool.get()
        pool.put(conn)
        for operation in (
            lambda: conn.sendall(b"x"),
            lambda: conn.send(b"x"),
            lambda: conn.recv(1),
            lambda: conn.recv_into(bytearray(1)),
            lambda: conn.socket,
        ):
            with pytest.raises(ValueError, match="not lent"):
                operation()
        assert pool.stats().dials == 0
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
            assert pool.stats().dials == 1


def test_taking_the_socket_runs_the_stale_check_first(echo_server):
    """Reading ``conn.socket`` (even for getpeername) is the lend's first operation: a
    socket the server closed while idle is replaced before the request goes out."""
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
            first = conn.socket.getsockname()
        echo_server.restart()
        with pool.connection() as conn:
            assert conn.socket.getpeername()[1] == echo_server.address[1]
            assert conn.socket.getsockname() != first  # a new connection
            assert round_trip(conn) == b"ping"  # no ConnectionBroken: nothing was lost
        stats = pool.stats()
        assert (stats.stale, stats.broken) == (1, 0)


# -- riding out a restart without a retry loop ---------------------------------------------------


def test_get_connect_waits_out_the_restart_within_its_timeout():
    with (
        EchoServer() as server,
        gocp.new(server.address, size=1, retry_min=0.02, retry_max=0.05) as pool,
    ):
        server.stop()
        restart = threading.Timer(0.3, server.start)
        restart.start()
        try:
            with within(0.3 + 1.0, MARGIN, at_least=0.25):
                conn = pool.get(timeout=5, connect=True)
            assert conn.connected
            assert round_trip(conn) == b"ping"
            pool.put(conn)
            assert pool.stats().dial_failures >= 1
        finally:
            restart.join(5)


def test_get_connect_raises_the_last_dial_error_at_its_timeout():
    with gocp.new(unused_address(), size=1, retry_min=0.02, retry_max=0.05) as pool:
        with within(0.3, MARGIN, at_least=0.25), pytest.raises(gocp.DialError) as info:
            pool.get(timeout=0.3, connect=True)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert pool.stats().idle == 1  # the member went back


def test_reconnecting_after_failures_is_logged():
    lines: list[str] = []

    class Printer:
        def print(self, text: str) -> None:
            lines.append(text)

    with EchoServer() as server:
        server.stop()
        with gocp.new(
            server.address, size=1, retry_min=0.01, retry_max=0.02, logger=Printer()
        ) as pool:
            with pytest.raises(gocp.DialError):
                pool.get(timeout=0, connect=True)
            server.start()
            conn = pool.get(timeout=5, connect=True)
            pool.put(conn)
    assert any("reconnected" in line and "failures=1" in line for line in lines), lines


# -- stats that tell the truth ---------------------------------------------------------------------


def test_connected_does_not_count_sockets_the_peer_closed(echo_server):
    with gocp.new(echo_server.address, size=2) as pool:
        a, b = pool.get(), pool.get()
        assert round_trip(a) == b"ping"
        assert round_trip(b) == b"ping"
        pool.put(a)
        pool.put(b)
        assert pool.stats().connected == 2
        echo_server.kill_connections()
        assert wait_until(lambda: pool.stats().connected == 0, timeout=5)


def test_an_interrupted_wait_is_not_counted_as_a_timeout():
    with gocp.new(unused_address(), size=1) as pool:
        held = pool.get()

        def interrupt() -> None:
            raise KeyboardInterrupt

        # A get that leaves by an exception other than its own timeout is not a timeout.
        original = pool._wait

        def interrupted(waiter, timeout):  # type: ignore[no-untyped-def]
            interrupt()

        pool._wait = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            pool.get(timeout=1)
        pool._wait = original  # type: ignore[method-assign]
        stats = pool.stats()
        assert (stats.timeouts, stats.waiting) == (0, 0)
        pool.put(held)


# -- resources: a dropped pool, size limits ------------------------------------------------------


def test_a_pool_dropped_without_close_closes_its_sockets_at_once(echo_server):
    gc.disable()  # prove it needs no cycle collection
    try:
        pool = gocp.new(echo_server.address, size=2)
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
            sock = conn.socket
        ref = weakref.ref(pool)
        del pool, conn
        assert ref() is None
        assert sock.fileno() == -1  # closed when the pool was collected
    finally:
        gc.enable()


def test_a_dropped_pool_with_a_background_thread_is_collected_and_the_thread_ends():
    gc.disable()
    try:
        pool = gocp.pool(object, size=1, idle_timeout=60, clock=FakeClock())
        worker = next(t for t in threading.enumerate() if t.name.startswith("gocp "))
        ref = weakref.ref(pool)
        del pool
        assert ref() is None
        worker.join(5)
        assert not worker.is_alive()
    finally:
        gc.enable()


@pytest.mark.parametrize("size", [10**6, 10**7, 10**400, -(10**400)])
def test_absurd_sizes_are_refused_at_once(size):
    with within(0.5), pytest.raises(ValueError, match=r"size: must be within 1\.\.100000"):
        gocp.new("127.0.0.1:1", size=size)


# -- input the kernel or the clock would have bent silently -------------------------------------


def test_retry_min_alone_above_the_default_maximum_names_retry_min():
    with pytest.raises(ValueError, match=r"^retry_min: must be <= retry_max \(default 3.0\)"):
        gocp.new("127.0.0.1:1", retry_min=5)
    with gocp.new("127.0.0.1:1", retry_min=5, retry_max=10) as pool:
        assert pool.options.retry_min == 5


def test_a_huge_integer_duration_is_a_value_error_not_an_overflow():
    with pytest.raises(ValueError, match="io_timeout: must be at most"):
        gocp.new("127.0.0.1:1", io_timeout=10**400)


def test_keepalive_must_be_whole_seconds():
    with pytest.raises(ValueError, match="keepalive: must be a whole number of seconds"):
        gocp.new("127.0.0.1:1", keepalive=1.9)
    with gocp.new("127.0.0.1:1", keepalive=30.0) as pool:
        assert pool.options.keepalive == 30.0


@pytest.mark.parametrize("value", [0, -1, 0.0])
def test_settimeout_says_what_it_accepts(value):
    with (
        gocp.new("127.0.0.1:1", size=1) as pool,
        pool.get() as conn,
        pytest.raises(ValueError, match=r"timeout: must be > 0 and finite, or None"),
    ):
        conn.settimeout(value)


def test_keepalive_sets_no_user_timeout(echo_server):
    """``io_timeout=None`` waits for a live peer that stops reading for as long as it
    takes: no TCP_USER_TIMEOUT is set (it would end the connection after the keepalive
    total even while the peer acknowledges every probe with a zero window)."""
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux only")
    with (
        gocp.new(echo_server.address, size=1, io_timeout=None, keepalive=1) as pool,
        pool.connection() as conn,
    ):
        sock = conn.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1


def test_the_pool_is_usable_after_fork_in_a_child_when_a_member_was_handed_between_threads(
    echo_server,
):
    """A worker thread takes a member and hands it to the thread that forks. In the child
    that member stays lent (whoever holds it there, it is never lent to a second
    caller); the forking thread can still use it (it redials) and put it back."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, os, sys, threading
        import gocp
        address = ("127.0.0.1", int(sys.argv[1]))
        pool = gocp.new(address, size=2)
        box = []
        worker = threading.Thread(target=lambda: box.append(pool.get(timeout=1)))
        worker.start(); worker.join()
        handed = box[0]
        handed.sendall(b"x"); handed.recv(1)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = {}
            other = pool.get(timeout=0)
            out["other_is_handed"] = other is handed
            try:
                pool.get(timeout=0)
                out["third"] = "lent"
            except gocp.PoolTimeout:
                out["third"] = "timeout"
            handed.sendall(b"y"); out["reply"] = handed.recv(1).decode()
            pool.put(handed)
            out["after_put"] = pool.get(timeout=0) is handed
            os.write(write, json.dumps(out).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        handed.sendall(b"z"); child["parent_reply"] = handed.recv(1).decode()
        pool.put(handed); pool.close()
        print(json.dumps(child))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(echo_server.address[1])],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child == {
        "other_is_handed": False,
        "third": "timeout",  # the handed member is never lent twice
        "reply": "y",
        "after_put": True,
        "parent_reply": "z",  # the parent's connection survived the child
    }


def test_get_never_waits_for_the_lock_during_a_slow_dial():
    """Nothing holds the pool lock while dialling: other callers get idle members at once
    while one member's dial hangs (a listener that never accepts)."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())
        try:
            with gocp.new(listener.getsockname(), size=2, dial_timeout=2) as pool:
                slow = pool.get()
                failed: list[BaseException] = []

                def dial() -> None:
                    try:
                        slow.sendall(b"x")
                    except gocp.DialError as exc:
                        failed.append(exc)

                dialling = threading.Thread(target=dial)
                dialling.start()
                try:
                    assert wait_until(lambda: pool.stats().dials == 1)  # its dial hangs now
                    with within(0.2, 0.3):
                        other = pool.get(timeout=1)
                        pool.put(other)
                        pool.stats()
                finally:
                    dialling.join(5)
                assert len(failed) == 1  # its dial timed out, as it should
                pool.put(slow)
        finally:
            filler.close()
    finally:
        listener.close()
