"""gocp.testing.FaultProxy and no_backoff, against real loopback servers and sockets."""

from __future__ import annotations

import json
import math
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import attrs
import pytest

import gocp
from gocp import _backoff
from gocp.testing import EchoServer, FaultProxy, ProxyEvent, no_backoff

IO_TIMEOUT = 5.0


# -- helpers ---------------------------------------------------------------------------


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=IO_TIMEOUT)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def round_trip(sock: socket.socket, message: bytes) -> float:
    """Send ``message`` through an echo and read it back; return the seconds it took."""
    started = time.monotonic()
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
    return time.monotonic() - started


def fill(sock: socket.socket, cap: int = 64 << 20) -> int:
    """Send on a non-blocking socket until no progress for 0.3 s (or ``cap`` bytes); count."""
    chunk = b"x" * 65536
    sent = 0
    while sent < cap:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 0.3)
            if not writable:
                break
    return sent


def kinds(proxy: FaultProxy, conn: int) -> list[str]:
    return [e.what for e in proxy.events if e.conn == conn]


@pytest.fixture(name="proxy")
def fixture_proxy(echo_server: EchoServer) -> Iterator[FaultProxy]:
    """A started proxy in front of ``echo_server``; no "error" event by the end."""
    with FaultProxy(echo_server.address, seed=1) as started:
        yield started
    assert [e for e in started.events if e.what == "error"] == []


@pytest.fixture(name="upstream")
def fixture_upstream() -> Iterator[socket.socket]:
    """A bare listening socket: the test accepts and reads the server side itself."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT)
        yield listener


@pytest.fixture(name="raw_proxy")
def fixture_raw_proxy(upstream: socket.socket) -> Iterator[FaultProxy]:
    """A started proxy in front of ``upstream``; no "error" event by the end."""
    with FaultProxy(upstream.getsockname()[:2], seed=1) as started:
        yield started
    assert [e for e in started.events if e.what == "error"] == []


def accept(upstream: socket.socket) -> socket.socket:
    server, _ = upstream.accept()
    server.settimeout(IO_TIMEOUT)
    return server


# -- forwarding, lifecycle, events -----------------------------------------------------


def test_forwards_and_logs_one_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        round_trip(client, b"hello")
        assert proxy.connections == 1
        first = proxy.wait_for_event("accept")
    proxy.wait_for_event("close", conn=first.conn)
    assert proxy.connections == 0
    # The client's FIN goes up, the echo server closes, its FIN comes down.
    assert kinds(proxy, first.conn) == ["accept", "connect", "eof", "eof", "close"]
    eofs = [e.direction for e in proxy.events if e.what == "eof"]
    assert eofs == ["up", "down"]
    events = proxy.events
    assert events[0].what == "listen"
    assert events[0].conn == 0
    assert [e.time for e in events] == sorted(e.time for e in events)
    with connect(proxy) as client:
        round_trip(client, b"again")
    assert proxy.wait_for_event("accept", conn=first.conn + 1).conn == first.conn + 1


def test_event_is_frozen_and_wait_for_event_times_out(proxy: FaultProxy) -> None:
    event = proxy.events[0]
    assert isinstance(event, ProxyEvent)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.what = "other"  # type: ignore[misc]
    with pytest.raises(TimeoutError, match="'cut'"):
        proxy.wait_for_event("cut", timeout=0.05)


def test_stop_closes_everything_is_idempotent_and_restarts_on_the_same_port(
    echo_server: EchoServer,
) -> None:
    proxy = FaultProxy(echo_server.address)
    proxy.set_latency(0.1)  # settings may precede start() and survive a restart
    assert "unbound" in repr(proxy)
    assert proxy.start().start() is proxy  # a second start does nothing
    address = proxy.address
    assert proxy.address_text == f"127.0.0.1:{address[1]}"
    assert f"{proxy.address_text} -> " in repr(proxy)
    client = connect(proxy)
    with client:
        assert round_trip(client, b"a") >= 0.2
        proxy.stop()
        assert not proxy.running
        assert proxy.connections == 0
        assert recv_until_eof(client) == b""  # FIN, not RST
    proxy.stop()
    proxy.start()
    try:
        assert proxy.address == address
        with connect(proxy) as client:
            assert round_trip(client, b"b") >= 0.2
            proxy.stop(reset=True)
            with pytest.raises(ConnectionResetError):
                client.recv(16)
    finally:
        proxy.stop()
    assert [e.what for e in proxy.events].count("stop") == 2


def connect_and_recv(proxy: FaultProxy) -> bytes:
    with connect(proxy) as client:
        return client.recv(16)


def test_upstream_down_resets_the_client(echo_server: EchoServer) -> None:
    echo_server.stop()
    with FaultProxy(echo_server.address) as proxy:
        # The RST may even beat the end of the client's connect() call.
        with pytest.raises(ConnectionResetError):
            connect_and_recv(proxy)
        failed = proxy.wait_for_event("upstream_failed")
        assert "ConnectionRefusedError" in failed.detail
        proxy.wait_for_event("reset", conn=failed.conn)  # logged once its sockets are closed
        assert kinds(proxy, failed.conn) == ["accept", "upstream_failed", "reset"]


# -- latency, jitter, bandwidth, slicing ------------------------------------------------


def test_latency_applies_live_and_per_direction(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        round_trip(client, b"warm")
        proxy.set_latency(0.15)  # to the connection already open
        assert round_trip(client, b"slow") >= 0.3
    proxy.set_latency(0)
    proxy.set_latency(0.25, direction="down")
    with connect(proxy) as client:
        assert round_trip(client, b"down only") >= 0.25
        conn = [e.conn for e in proxy.events if e.what == "accept"][-1]
    delays = [e for e in proxy.events if e.what == "delay" and e.conn == conn]
    assert [e.direction for e in delays] == ["down"]
    assert delays[0].seconds == 0.25


def test_jitter_never_reorders(proxy: FaultProxy) -> None:
    proxy.set_latency(0.005, jitter=0.05)
    messages = [b"%03d;" % i for i in range(60)]
    with connect(proxy) as client:
        for message in messages:
            client.sendall(message)
        assert recv_exactly(client, sum(map(len, messages))) == b"".join(messages)
    assert any(e.what == "delay" for e in proxy.events)


def jitter_delays(address: tuple[str, int], seed: int) -> list[tuple[str, float]]:
    with FaultProxy(address, seed=seed) as proxy:
        proxy.set_latency(0.0, jitter=0.02)
        with connect(proxy) as client:
            for i in range(5):
                round_trip(client, b"m%d" % i)
    return [(e.direction, e.seconds) for e in proxy.events if e.what == "delay"]


def test_same_seed_replays_the_same_jitter(echo_server: EchoServer) -> None:
    first = jitter_delays(echo_server.address, seed=7)
    again = jitter_delays(echo_server.address, seed=7)
    other = jitter_delays(echo_server.address, seed=8)
    assert len(first) == 10  # one chunk per direction per round trip
    assert first == again
    assert first != other
    assert all(0.0 <= seconds < 0.02 for _, seconds in first + other)


def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    proxy.set_bandwidth(50_000, direction="down")
    payload = os.urandom(20_000)
    with connect(proxy) as client:
        # 20 kB at 50 kB/s, paced in 1 kB pieces: at least 0.38 s after the first piece.
        assert round_trip(client, payload) >= 0.3
    assert proxy.wait_for_event("slice").direction == "down"  # paced in pieces


def test_slice_splits_writes(raw_proxy: FaultProxy, upstream: socket.socket) -> None:
    raw_proxy.set_slice(100, direction="up")
    payload = os.urandom(10_240)
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(payload)
        assert recv_exactly(server, len(payload)) == payload
    raw_proxy.wait_for_event("close")  # every chunk's event is logged before the close
    slices = [e for e in raw_proxy.events if e.what == "slice"]
    assert sum(e.nbytes for e in slices) == len(payload)
    for event in slices:
        assert event.direction == "up"
        assert event.pieces == math.ceil(event.nbytes / 100)


# -- cuts, resets, kills ---------------------------------------------------------------


def test_cut_after_down_delivers_exactly_n_then_eof(proxy: FaultProxy) -> None:
    proxy.cut_after(100, direction="down")
    payload = os.urandom(150)
    with connect(proxy) as client:
        client.sendall(payload)
        assert recv_until_eof(client) == payload[:100]
    cut = proxy.wait_for_event("cut")
    assert (cut.direction, cut.nbytes) == ("down", 100)
    proxy.wait_for_event("close", conn=cut.conn)
    assert kinds(proxy, cut.conn)[-2:] == ["cut", "close"]
    assert proxy.connections == 0


def test_cut_after_up_is_exact_per_connection_and_counts_from_now(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    raw_proxy.cut_after(100)  # "up" by default; applies to each new connection
    payload = os.urandom(150)
    for _ in range(2):
        with connect(raw_proxy) as client, accept(upstream) as server:
            client.sendall(payload)
            assert recv_until_eof(server) == payload[:100]
            assert client.recv(16) == b""  # the client gets a FIN too
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(payload[:30])
        assert recv_exactly(server, 30) == payload[:30]
        raw_proxy.cut_after(50)  # 50 more from now on this connection
        client.sendall(payload)
        assert recv_until_eof(server) == payload[:50]
    assert [e.nbytes for e in raw_proxy.events if e.what == "cut"] == [100, 100, 50]


def test_cut_at_a_chunk_boundary_and_at_zero_for_new_connections(proxy: FaultProxy) -> None:
    proxy.cut_after(4, direction="down")
    with connect(proxy) as client:
        client.sendall(b"four")
        assert recv_until_eof(client) == b"four"  # cut right after the 4th byte
    proxy.cut_after(0)
    with connect(proxy) as client:
        assert recv_until_eof(client) == b""  # cut before anything went through
    assert [e.nbytes for e in proxy.events if e.what == "cut"] == [4, 0]


def test_cut_after_zero_cuts_open_connections_now(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        round_trip(client, b"x")
        proxy.cut_after(0, direction="both")
        assert recv_until_eof(client) == b""
    assert proxy.wait_for_event("cut").nbytes == 0


def test_reset_now_resets_both_sides(raw_proxy: FaultProxy, upstream: socket.socket) -> None:
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(b"hi")
        assert recv_exactly(server, 2) == b"hi"
        raw_proxy.reset()
        assert raw_proxy.connections == 0
        with pytest.raises(ConnectionResetError):
            client.recv(16)
        with pytest.raises(ConnectionResetError):
            server.recv(16)
    assert raw_proxy.wait_for_event("reset").detail == "reset()"


def test_reset_after_delay_returns_at_once(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        called = time.monotonic()
        proxy.reset(after=0.5)
        round_trip(client, b"still alive")  # the call did not wait for the reset
        event = proxy.wait_for_event("reset")
        assert event.time - called >= 0.5
        with pytest.raises(ConnectionResetError):
            client.recv(16)


def test_kill_all_closes_or_resets_current_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as one, connect(proxy) as two:
        round_trip(one, b"1")
        round_trip(two, b"2")
        proxy.kill_all()
        assert proxy.connections == 0  # it returns once they are closed
        assert recv_until_eof(one) == b""
        assert recv_until_eof(two) == b""
    with connect(proxy) as three:  # the listener keeps accepting
        round_trip(three, b"3")
        proxy.kill_all(reset=True)
        with pytest.raises(ConnectionResetError):
            three.recv(16)
    assert [e.what for e in proxy.events if e.what in ("close", "reset")] == [
        "close",
        "close",
        "reset",
    ]


def test_server_fin_and_reset_are_passed_on(echo_server: EchoServer, proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        round_trip(client, b"x")
        echo_server.kill_connections()
        assert recv_until_eof(client) == b""
        client.close()
        assert proxy.wait_for_event("close").detail == "both sides closed"
    with connect(proxy) as client:
        round_trip(client, b"y")
        echo_server.kill_connections(reset=True)
        with pytest.raises(ConnectionResetError):
            client.recv(16)
    assert proxy.wait_for_event("reset").detail.startswith("server: ConnectionResetError")


# -- blackhole, stall, slow close --------------------------------------------------------


def test_blackhole_swallows_data_and_keeps_the_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        round_trip(client, b"before")
        proxy.blackhole()
        client.sendall(b"lost")
        assert proxy.wait_for_event("drop").nbytes == 4
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)
        assert proxy.connections == 1
        client.settimeout(IO_TIMEOUT)
        proxy.heal()
        round_trip(client, b"after")  # the lost bytes never come back


def test_blackhole_holds_a_fin_until_heal(raw_proxy: FaultProxy, upstream: socket.socket) -> None:
    with connect(raw_proxy) as client, accept(upstream) as server:
        raw_proxy.blackhole("up")
        client.sendall(b"lost")
        client.shutdown(socket.SHUT_WR)
        raw_proxy.wait_for_event("drop")
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.recv(16)  # neither the bytes nor the FIN arrive
        server.settimeout(IO_TIMEOUT)
        raw_proxy.heal()
        assert server.recv(16) == b""  # the FIN was held, the bytes were not


def test_stall_up_fills_the_senders_buffers_then_lets_all_through(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    with connect(raw_proxy) as client, accept(upstream) as server:
        raw_proxy.stall("up")
        client.setblocking(False)
        sent = fill(client)
        assert 0 < sent < 64 << 20  # sending stopped: backpressure, not the cap
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.recv(1)
        server.settimeout(IO_TIMEOUT)
        raw_proxy.heal()
        received = 0
        while received < sent:
            chunk = server.recv(1 << 20)
            assert chunk, f"EOF after {received} of {sent} bytes"
            received += len(chunk)
        assert received == sent


def test_stall_down_holds_replies_until_heal(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        proxy.stall("down")
        client.sendall(b"ping")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(16)
        client.settimeout(IO_TIMEOUT)
        proxy.stall("down", enabled=False)
        assert recv_exactly(client, 4) == b"ping"


def test_slow_close_delays_the_fin(raw_proxy: FaultProxy, upstream: socket.socket) -> None:
    raw_proxy.slow_close(0.3)
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(b"bye")
        closed = time.monotonic()
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(server) == b"bye"
        assert time.monotonic() - closed >= 0.3


# -- listener -----------------------------------------------------------------------------


def test_refuse_then_accept_on_the_same_port(proxy: FaultProxy) -> None:
    address = proxy.address
    with connect(proxy) as old:
        round_trip(old, b"old")
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=IO_TIMEOUT).close()
        round_trip(old, b"lives on")
        assert proxy.connections == 1
        proxy.accept()
        assert proxy.address == address
        with connect(proxy) as new:
            round_trip(new, b"new")
    what = [e.what for e in proxy.events if e.conn == 0]
    assert what == ["listen", "refuse", "listen"]


# -- heal ------------------------------------------------------------------------------


def test_heal_releases_held_data_and_clears_every_fault(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        proxy.set_latency(30)
        client.sendall(b"held")
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(16)
        client.settimeout(IO_TIMEOUT)
        proxy.set_bandwidth(1)
        proxy.set_slice(1)
        proxy.cut_after(4, direction="both")
        proxy.slow_close(30)
        proxy.reset(after=0.2)
        proxy.heal()
        assert recv_exactly(client, 4) == b"held"  # no 30 s wait, no cut
        proxy.set_latency(0.2)  # a round trip of >= 0.4 s outlives the cancelled reset
        round_trip(client, b"x")
        proxy.heal()
        payload = os.urandom(2000)
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
    event = proxy.wait_for_event("close")
    assert event.detail == "both sides closed"  # closed promptly: no slow close, no cut
    assert not any(e.what in ("cut", "reset") for e in proxy.events)


# -- churn ------------------------------------------------------------------------------


def churn(address: tuple[str, int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=0.3) as client:
                client.sendall(b"x" * 3000)
                client.recv(65536)
        except OSError:
            pass


def test_random_faults_under_churn_end_every_connection_cleanly(echo_server: EchoServer) -> None:
    """Regression: ending a connection mid-dial or refusing mid-accept once leaked tasks."""
    rng = random.Random(5)
    sides = ["up", "down", "both"]
    stop = threading.Event()
    with FaultProxy(echo_server.address, seed=5) as proxy:
        actions = [
            lambda: proxy.kill_all(reset=rng.random() < 0.5),
            lambda: proxy.reset(after=rng.uniform(0, 0.05)),
            lambda: (proxy.refuse(), proxy.accept()),
            lambda: proxy.set_latency(rng.uniform(0, 0.02), rng.uniform(0, 0.02)),
            lambda: proxy.set_slice(rng.randint(1, 500), rng.choice(sides)),
            lambda: proxy.cut_after(rng.randint(0, 4000), rng.choice(sides)),
            lambda: proxy.blackhole(rng.choice(sides)),
            lambda: proxy.stall(rng.choice(sides)),
            lambda: proxy.set_bandwidth(rng.choice([50_000, None])),
            lambda: proxy.slow_close(rng.uniform(0, 0.05)),
            proxy.heal,
        ]
        threads = [threading.Thread(target=churn, args=(proxy.address, stop)) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(300):
                rng.choice(actions)()
        finally:
            stop.set()
            for thread in threads:
                thread.join(IO_TIMEOUT)
    counts = {
        what: sum(e.what == what for e in proxy.events)
        for what in ("accept", "close", "reset", "error")
    }
    assert counts["accept"] > 10
    assert counts["accept"] == counts["close"] + counts["reset"]  # one final event each
    assert counts["error"] == 0


# -- arguments -------------------------------------------------------------------------


ADDRESS = ("127.0.0.1", 9)

BAD_CALLS = [
    (lambda p: FaultProxy(("127.0.0.1", "x")), TypeError, "upstream"),
    (lambda p: FaultProxy("no-port"), ValueError, "upstream"),
    (lambda p: FaultProxy(ADDRESS, seed="1"), TypeError, "seed"),
    (lambda p: FaultProxy(ADDRESS, seed=True), TypeError, "seed"),
    (lambda p: FaultProxy(ADDRESS, host=1), TypeError, "host"),
    (lambda p: FaultProxy(ADDRESS, host=""), ValueError, "host"),
    (lambda p: FaultProxy(ADDRESS, connect_timeout=0), ValueError, "connect_timeout"),
    (lambda p: p.set_latency(-1), ValueError, "seconds"),
    (lambda p: p.set_latency("1"), TypeError, "seconds"),
    (lambda p: p.set_latency(1, jitter=float("nan")), ValueError, "jitter"),
    (lambda p: p.set_latency(1, direction="sideways"), ValueError, "direction"),
    (lambda p: p.set_bandwidth(0), ValueError, "bytes_per_second"),
    (lambda p: p.set_bandwidth("fast"), TypeError, "bytes_per_second"),
    (lambda p: p.set_slice(0), ValueError, "max_bytes"),
    (lambda p: p.set_slice(1.5), TypeError, "max_bytes"),
    (lambda p: p.cut_after(-1), ValueError, "nbytes"),
    (lambda p: p.cut_after(True), TypeError, "nbytes"),
    (lambda p: p.cut_after(1, direction="UP"), ValueError, "direction"),
    (lambda p: p.reset(after=-0.1), ValueError, "after"),
    (lambda p: p.slow_close(float("inf")), ValueError, "seconds"),
    (lambda p: p.blackhole("left"), ValueError, "direction"),
    (lambda p: p.stall(enabled=1), TypeError, "enabled"),
    (lambda p: p.kill_all(reset="yes"), TypeError, "reset"),
    (lambda p: p.wait_for_event("cut", timeout=-1), ValueError, "timeout"),
    (lambda p: p.wait_for_event("x"), ValueError, "what"),
    (lambda p: p.wait_for_event("cut", conn=-1), ValueError, "conn"),
    (lambda p: p.wait_for_event("cut", after=1.5), TypeError, "after"),
    (lambda p: p.stop(reset=1), TypeError, "reset"),
    (lambda p: FaultProxy(ADDRESS, port=-1), ValueError, "port"),
    (lambda p: FaultProxy(ADDRESS, port=65536), ValueError, "port"),
    (lambda p: FaultProxy(ADDRESS, port=True), TypeError, "port"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD_CALLS)
def test_bad_arguments_name_the_argument(call: object, error: type, name: str) -> None:
    proxy = FaultProxy(ADDRESS)  # not started: checks come first, and leave nothing behind
    with pytest.raises(error, match=rf"^{name}: "):
        call(proxy)  # type: ignore[operator]


@pytest.mark.parametrize("action", ["refuse", "accept", "kill_all", "reset"])
def test_actions_need_a_running_proxy(action: str) -> None:
    proxy = FaultProxy(ADDRESS)
    with pytest.raises(RuntimeError, match="before start"):
        _ = proxy.address
    with pytest.raises(RuntimeError, match=rf"FaultProxy.{action}\(\): the proxy is not running"):
        getattr(proxy, action)()
    proxy.stop()  # idempotent, also before start


# -- with a gocp pool ----------------------------------------------------------------------


def test_pool_member_redials_after_a_proxy_reset(proxy: FaultProxy) -> None:
    with gocp.new(proxy.address, size=1, io_timeout=IO_TIMEOUT) as pool:
        conn = pool.get(timeout=1)
        try:
            conn.sendall(b"one")
            assert conn.recv(16) == b"one"
            proxy.reset()
            with pytest.raises(gocp.ConnectionBroken) as info:
                conn.recv(16)
            assert isinstance(info.value.__cause__, ConnectionResetError)
            conn.sendall(b"two")
            assert conn.recv(16) == b"two"
        finally:
            pool.put(conn)
        stats = pool.stats()
        assert (stats.dials, stats.broken) == (2, 1)
    assert proxy.wait_for_event("accept", conn=2).conn == 2


def test_no_backoff_makes_the_next_dial_real(proxy: FaultProxy) -> None:
    options = {"retry_min": 5.0, "retry_max": 10.0, "dial_timeout": 2.0}
    with gocp.new(proxy.address, size=1, **options) as pool:
        proxy.refuse()
        conn = pool.get(timeout=1)
        try:
            with no_backoff():
                with pytest.raises(gocp.DialError):
                    conn.sendall(b"x")
                dials = pool.stats().dials
                with pytest.raises(gocp.DialError) as second:
                    conn.sendall(b"x")
                assert pool.stats().dials == dials + 1  # a real attempt, refused again
                assert isinstance(second.value.__cause__, ConnectionRefusedError)
            with pytest.raises(gocp.DialError) as backing_off:
                conn.sendall(b"x")  # the switch is off again: retry_min=5 applies
            assert pool.stats().dials == dials + 1
            assert backing_off.value.retry_in > 1.0
            proxy.accept()
            with no_backoff():
                conn.sendall(b"ok")
                assert conn.recv(16) == b"ok"
        finally:
            pool.put(conn)


def test_no_backoff_restores_the_previous_setting() -> None:
    assert _backoff.set_no_wait(False) is False  # read the switch: off between tests

    def fail_inside() -> None:
        with no_backoff():
            assert _backoff._no_wait is True
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail_inside()
    assert _backoff._no_wait is False
    with no_backoff():
        with no_backoff():
            pass
        assert _backoff._no_wait is True  # the inner block restored "on"
    assert _backoff._no_wait is False


# -- out of descriptors ------------------------------------------------------------------

OUT_OF_DESCRIPTORS = """
import json, os, resource, socket, time
from gocp.testing import FaultProxy

def failures(proxy):
    return [(e.what, e.detail) for e in proxy.events if "Errno 24" in e.detail]

upstream = socket.create_server(("127.0.0.1", 0), backlog=64)  # never accepts: no fd there
with FaultProxy(upstream.getsockname()[:2]) as proxy:
    clients = [socket.socket() for _ in range(20)]  # made first: they need no new fd
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 5, hard))
    connected = 0
    for client in clients:
        client.settimeout(5)
        client.connect(proxy.address)
        connected += 1
        deadline = time.monotonic() + 5
        while not any(e.conn == connected and e.what == "connect" for e in proxy.events):
            if failures(proxy):
                break
            assert time.monotonic() < deadline, "neither dialled nor failed"
            time.sleep(0.005)  # polling, with a deadline
        if failures(proxy):
            break  # its accept failed (it waits in the backlog), or its dial (it is reset)
    for client in clients:
        client.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    mark = proxy.mark()
    with socket.create_connection(proxy.address, timeout=5):
        proxy.wait_for_event("connect", after=mark, timeout=5)
print(json.dumps({"failures": failures(proxy), "connected": connected}))
"""


def test_the_proxy_survives_running_out_of_descriptors() -> None:
    """In a child process whose descriptor limit is lowered: accepts and upstream sockets
    fail with EMFILE (logged, retried; the clients of failed dials are reset), and once
    descriptors are free again the proxy accepts and dials as before."""
    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failures"], "the limit was never reached"
    for what, detail in result["failures"]:  # at the accept, or at the upstream's socket
        assert (what, detail.split(": [")[0]) in {
            ("error", "accept: OSError"),
            ("upstream_failed", "OSError"),
        }
    assert 1 <= result["connected"] < 20
