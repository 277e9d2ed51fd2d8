"""I/O timeouts of members, in both of their implementations.

On 64-bit Linux a member's socket is blocking and the kernel bounds each
send and recv (SO_SNDTIMEO/SO_RCVTIMEO): one system call per operation. Elsewhere,
and whenever the caller takes the raw socket with ``conn.socket``, the socket
has an ordinary Python timeout. The behaviour a caller sees must be the same
either way, so the behavioural tests run in both modes (``mode`` fixture).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from invariants import MARGIN, round_trip, within

import gocp
from gocp import _conn
from gocp.testing import FaultProxy, RequestReplyServer

KERNEL = _conn._KERNEL_TIMEOUTS
linux_only = pytest.mark.skipif(not KERNEL, reason="kernel timeouts are used on 64-bit Linux only")


@pytest.fixture(params=["kernel", "python"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with kernel timeouts (where the platform has them) and with Python's."""
    if request.param == "kernel":
        if not KERNEL:
            pytest.skip("kernel timeouts are used on 64-bit Linux only")
    else:
        monkeypatch.setattr(_conn, "_KERNEL_TIMEOUTS", False)
    return str(request.param)


@contextlib.contextmanager
def one_member(address: Any, **options: Any) -> Iterator[tuple[gocp.Pool, gocp.PersistentConn]]:
    with gocp.new(address, size=1, **options) as pool:
        conn = pool.get()
        try:
            yield pool, conn
        finally:
            if conn._lent:
                pool.put(conn)


def bounds(conn: gocp.PersistentConn) -> tuple[float | None, float | None, float | None]:
    """(Python timeout, kernel receive bound, kernel send bound) of the member's socket now.

    Reads the private socket so as not to expose it (which would switch its mode). The
    kernel keeps its bounds in clock ticks (1 to 10 ms), so they are rounded to 10 ms."""
    sock = conn._sock
    assert sock is not None
    receive, send = _conn.kernel_timeout(sock)
    return sock.gettimeout(), _ticks(receive), _ticks(send)


def _ticks(bound: float | None) -> float | None:
    return None if bound is None else round(bound, 2)


def read_line(conn: gocp.PersistentConn) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += conn.recv(64)
    return line


# -- which mechanism bounds the socket --------------------------------------------------------


@linux_only
def test_members_are_blocking_sockets_bounded_by_the_kernel(echo_server):
    with one_member(echo_server.address, io_timeout=2.5) as (_pool, conn):
        assert round_trip(conn) == b"ping"
        assert bounds(conn) == (None, 2.5, 2.5)
        assert conn.gettimeout() == 2.5


@linux_only
def test_io_timeout_none_leaves_the_kernel_unbounded(echo_server):
    with one_member(echo_server.address, io_timeout=None) as (_pool, conn):
        assert round_trip(conn) == b"ping"
        assert bounds(conn) == (None, None, None)


@linux_only
def test_settimeout_changes_the_kernel_bound_until_put(echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=3) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        conn.settimeout(0.25)
        assert bounds(conn) == (None, 0.25, 0.25)
        pool.put(conn)
        conn = pool.get()
        assert bounds(conn) == (None, 3.0, 3.0)
        assert conn.gettimeout() == 3.0
        pool.put(conn)


def test_python_mode_uses_socket_timeouts(echo_server, monkeypatch):
    monkeypatch.setattr(_conn, "_KERNEL_TIMEOUTS", False)
    with one_member(echo_server.address, io_timeout=2.5) as (_pool, conn):
        assert round_trip(conn) == b"ping"
        assert bounds(conn) == (2.5, None, None)


@linux_only
def test_exposed_socket_has_a_python_timeout_until_put(echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=3) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        sock = conn.socket
        assert sock is not None
        assert sock.gettimeout() == 3.0  # what a socket user expects to read
        conn.settimeout(0.5)
        assert sock.gettimeout() == 0.5
        assert round_trip(conn) == b"ping"  # the member's own I/O works in this mode too
        pool.put(conn)
        conn = pool.get()
        assert bounds(conn) == (None, 3.0, 3.0)  # back to kernel bounds, the lend's change undone
        assert round_trip(conn) == b"ping"
        pool.put(conn)


@linux_only
def test_put_broken_undoes_the_exposure(echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=3) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        assert conn.connected
        pool.put(conn, broken=True)
        conn = pool.get()
        assert round_trip(conn) == b"ping"  # a new socket
        assert bounds(conn) == (None, 3.0, 3.0)
        pool.put(conn)


def test_makefile_on_the_exposed_socket_times_out_instead_of_returning_part(mode):
    """A buffered reader over a blocking socket would take the kernel's EAGAIN for
    "no data yet" and return half a line; the exposed socket must raise instead."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with one_member(listener.getsockname(), io_timeout=0.3) as (_pool, conn):
            conn.sendall(b"hello\n")  # dials; the connection waits in the backlog
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"half a li")  # and then nothing
                sock = conn.socket
                assert sock is not None
                reader = sock.makefile("rb")
                with within(0.3, MARGIN, at_least=0.25), pytest.raises(TimeoutError):
                    reader.readline()
                reader.close()
    finally:
        listener.close()


@linux_only
def test_a_periodic_timer_keeps_the_bound(rr_server: RequestReplyServer):
    """Signals from a periodic timer (a sampling profiler) would restart a kernel-timed
    wait from zero each time; with one armed, members dial with Python timeouts, whose
    deadline holds across the restarts."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    ticks = [0]

    def tick(signum: int, frame: object) -> None:
        ticks[0] += 1

    previous = signal.signal(signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        with one_member(rr_server.address, io_timeout=0.3) as (_pool, conn):
            rr_server.fail_next(1, "stall")
            conn.sendall(b"req-1 x\n")
            assert bounds(conn) == (0.3, None, None)
            with within(0.3, MARGIN, at_least=0.29), pytest.raises(gocp.IOTimeout):
                conn.recv(64)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ticks[0] >= 5  # the signals did keep coming during the wait


@linux_only
def test_settimeout_none_after_taking_the_socket_leaves_no_kernel_bound(echo_server):
    with one_member(echo_server.address, io_timeout=0.5) as (_pool, conn):
        assert round_trip(conn) == b"ping"
        sock = conn.socket
        assert sock is not None
        conn.settimeout(None)
        # A blocking socket with a kernel bound left on it would time out (and a makefile
        # reader would return half a line): both bounds must be gone.
        assert sock.gettimeout() is None
        assert _conn.kernel_timeout(sock) == (None, None)


def test_put_after_the_holder_closed_the_taken_socket(mode, echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=3) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        conn.settimeout(1.0)
        sock = conn.socket
        assert sock is not None
        sock.close()  # not how it should be done, but a Go user does close OriginalConn
        pool.put(conn)  # the slot comes back
        assert pool.stats().idle == 1
        conn = pool.get(timeout=0)
        assert round_trip(conn) == b"ping"  # on a new socket
        assert conn.gettimeout() == 3.0
        pool.put(conn)


def test_what_the_holder_sets_on_the_taken_socket_is_undone_at_put(mode, echo_server):
    with gocp.new(echo_server.address, size=1, io_timeout=2.0) as pool:
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        sock = conn.socket
        assert sock is not None
        sock.settimeout(7.0)  # on the raw socket, not with conn.settimeout
        pool.put(conn)
        conn = pool.get()
        assert round_trip(conn) == b"ping"
        assert bounds(conn) == ((None, 2.0, 2.0) if mode == "kernel" else (2.0, None, None))
        pool.put(conn)


@linux_only
def test_a_timer_armed_after_the_dial_applies_from_the_next_lend(rr_server, monkeypatch):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    monkeypatch.setattr(_conn, "_TIMER_RECHECK", 0.0)  # read the timers at every lend
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    try:
        with gocp.new(rr_server.address, size=1, io_timeout=0.3) as pool:
            conn = pool.get()
            conn.sendall(b"warm-up x\n")
            assert read_line(conn) == b"warm-up 1\n"
            assert bounds(conn) == (None, 0.3, 0.3)  # dialled with kernel timeouts
            pool.put(conn)
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            conn = pool.get()
            rr_server.fail_next(1, "stall")
            conn.sendall(b"req-1 x\n")
            assert bounds(conn) == (0.3, None, None)
            with within(0.3, MARGIN, at_least=0.29), pytest.raises(gocp.IOTimeout):
                conn.recv(64)
            pool.put(conn)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the bound holds, in both modes -----------------------------------------------------------


def test_stalled_reply_raises_io_timeout(mode, rr_server: RequestReplyServer):
    with one_member(rr_server.address, io_timeout=0.2) as (pool, conn):
        conn.sendall(b"warm-up x\n")
        assert read_line(conn) == b"warm-up 1\n"
        rr_server.fail_next(1, "stall")
        conn.sendall(b"req-1 x\n")
        with within(0.2, MARGIN, at_least=0.19), pytest.raises(gocp.IOTimeout) as info:
            conn.recv(64)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert "timed out" in str(info.value.__cause__)
        assert "no progress within 0.2s" in str(info.value)
        assert conn.connected is False
        conn.sendall(b"req-2 x\n")
        assert read_line(conn) == b"req-2 1\n"
        assert rr_server.applied("req-1") == 1
        assert pool.stats().broken == 1


def test_settimeout_bounds_a_stalled_recv_into(mode, rr_server: RequestReplyServer):
    with one_member(rr_server.address, io_timeout=30) as (_pool, conn):
        conn.settimeout(0.15)
        rr_server.fail_next(1, "stall")
        conn.sendall(b"req-1 x\n")
        with within(0.15, MARGIN, at_least=0.14), pytest.raises(gocp.IOTimeout):
            conn.recv_into(bytearray(64))


def test_stalled_send_raises_io_timeout(mode):
    # Nobody accepts or reads: once both kernels' buffers are full the send stalls.
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with one_member(listener.getsockname(), io_timeout=0.2) as (_pool, conn):
            payload = bytearray(64 << 20)
            with within(5.0), pytest.raises(gocp.IOTimeout) as info:
                conn.sendall(payload)
            assert isinstance(info.value.__cause__, TimeoutError)
            assert conn.connected is False
            payload.clear()  # the error (kept here) holds no view of the caller's buffer
    finally:
        listener.close()


def test_sendall_bounds_each_wait_not_the_whole_transfer(mode):
    """24 MiB through a proxy limited to 16 MiB/s takes over a second, far more than
    ``io_timeout``, and succeeds: the timeout bounds each wait for progress (a Python
    socket timeout alone would bound the whole ``sendall``)."""
    listener = socket.socket()
    listener.settimeout(10)  # the sink's accept and reads are bounded too

    def sink() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(10)
            while peer.recv(1 << 20):
                pass

    reader = threading.Thread(target=sink)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        reader.start()
        with FaultProxy(listener.getsockname()) as proxy:
            proxy.set_bandwidth(16 << 20, direction="up")
            with one_member(proxy.address, io_timeout=0.3) as (pool, conn):
                with within(10.0, at_least=0.35):
                    conn.sendall(bytes(24 << 20))
                pool.put(conn, broken=True)  # ends the sink's connection
    finally:
        if reader.is_alive():
            reader.join(15)
        listener.close()
    assert not reader.is_alive()


def test_tiny_timeout_still_bounds(mode, rr_server: RequestReplyServer):
    # A bound below the kernel's tick (or a microsecond) must not turn into "no bound".
    with one_member(rr_server.address, io_timeout=1e-7) as (_pool, conn):
        rr_server.fail_next(1, "stall")
        conn.sendall(b"req-1 x\n")  # loopback has room: the send itself never waits
        with within(0.0), pytest.raises(gocp.IOTimeout):
            conn.recv(64)


# -- the timeval encoding ---------------------------------------------------------------------


@given(st.floats(min_value=1e-9, max_value=1e9))
def test_timeval_never_shortens_and_never_means_forever(seconds: float):
    whole, micro = _conn._TIMEVAL.unpack(_conn._timeval(seconds))
    assert 0 <= micro < 1_000_000
    assert (whole, micro) != (0, 0)  # zero would mean "no bound"
    encoded = whole + micro / 1e6
    assert encoded >= seconds - 1e-9 * max(1.0, seconds)
    assert encoded - seconds <= 1e-6 + 1e-9 * seconds


def test_timeval_of_none_is_no_bound():
    assert _conn._TIMEVAL.unpack(_conn._timeval(None)) == (0, 0)
