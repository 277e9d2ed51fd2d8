"""gocp.testing.FaultProxy's fault table (issue 14): named faults that stack, aimed at
chosen connections, with seeded probabilities; the toxiproxy-like kinds."""

from __future__ import annotations

import contextlib
import math
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable

import attrs
import pytest
from test_proxy import (  # noqa: F401 - fixtures
    ADDRESS,
    IO_TIMEOUT,
    accept,
    connect,
    connect_and_recv,
    fixture_proxy,
    fixture_raw_proxy,
    fixture_upstream,
    recv_exactly,
    recv_until_eof,
    round_trip,
)

from gocp.testing import (
    ActiveFault,
    Bandwidth,
    Blackhole,
    EchoServer,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Timeout,
)


def delays_after(proxy: FaultProxy, mark: int) -> list[float]:
    return [e.seconds for e in proxy.events if e.what == "delay" and e.seq > mark]


def timed_round_trip(proxy: FaultProxy, client: socket.socket) -> list[float]:
    """One round trip; the delays the proxy logged for it."""
    mark = proxy.mark()
    round_trip(client, b"x")
    return delays_after(proxy, mark)


# -- names, stacking, removal ---------------------------------------------------------------


def test_named_faults_stack_and_are_removed_one_by_one(proxy: FaultProxy) -> None:
    assert proxy.add_fault(Latency(0.03), direction="down", name="a") == "a"
    assert proxy.add_fault(Latency(0.05), direction="down") == "latency-1"
    proxy.set_latency(0.01, direction="down")
    names = [fault.name for fault in proxy.faults]
    assert names == ["a", "latency-1", "set_latency:down"]
    with connect(proxy) as client:
        assert timed_round_trip(proxy, client) == [pytest.approx(0.09)]  # they add up
        proxy.remove_fault("a")
        assert timed_round_trip(proxy, client) == [pytest.approx(0.06)]
        proxy.add_fault(Latency(0.02), direction="down", name="latency-1")  # replaces it
        assert [fault.name for fault in proxy.faults] == ["latency-1", "set_latency:down"]
        assert timed_round_trip(proxy, client) == [pytest.approx(0.03)]
        proxy.heal()
        assert timed_round_trip(proxy, client) == []
    assert proxy.faults == ()
    with pytest.raises(ValueError, match=r"^name: no fault named 'a' \(in force: \[\]\)"):
        proxy.remove_fault("a")


def test_set_calls_are_faults_under_reserved_names(proxy: FaultProxy) -> None:
    proxy.set_latency(0.1, jitter=0.02, direction="up")
    proxy.blackhole("down")
    proxy.cut_after(10, direction="up")
    by_name = {fault.name: fault.fault for fault in proxy.faults}
    latency = by_name.pop("set_latency:up")
    assert isinstance(latency, Latency)  # its jitter is around its mean: the same range
    assert (latency.seconds, latency.jitter) == (pytest.approx(0.11), pytest.approx(0.01))
    assert by_name == {"blackhole:down": Blackhole(), "cut_after:up": LimitData(10)}
    proxy.set_latency(0, direction="up")
    proxy.blackhole("down", enabled=False)
    proxy.cut_after(None, direction="up")
    assert proxy.faults == ()


def test_the_fault_table_is_a_snapshot_of_frozen_values(proxy: FaultProxy) -> None:
    name = proxy.add_fault(Bandwidth(1e6), direction="up", conn="new", probability=0.5)
    (fault,) = proxy.faults
    assert fault == ActiveFault(
        name=name,
        fault=Bandwidth(1e6),
        direction="up",
        conn="new",
        probability=0.5,
        per="connection",
        added=fault.added,
    )
    assert fault.added <= time.monotonic()
    assert "faults=1>" in repr(proxy)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fault.name = "other"  # type: ignore[misc]


def test_limit_data_faults_count_apart(raw_proxy: FaultProxy, upstream: socket.socket) -> None:
    raw_proxy.add_fault(LimitData(10), direction="up")
    raw_proxy.add_fault(LimitData(4), direction="up", name="small")
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(b"0123456789abc")
        assert recv_until_eof(server) == b"0123"
    cut = raw_proxy.wait_for_event("cut")
    assert cut.nbytes == 4
    assert raw_proxy.wait_for_event("close", conn=cut.conn).detail == "cut by small (up)"


# -- aimed at connections -------------------------------------------------------------------


def test_a_fault_aimed_at_one_connection_spares_the_others(proxy: FaultProxy) -> None:
    with connect(proxy) as one, connect(proxy) as two, connect(proxy) as three:
        for client in (one, two, three):
            round_trip(client, b"x")
        proxy.add_fault(ResetPeer(), conn=2)
        with pytest.raises(ConnectionResetError):
            two.recv(16)
        round_trip(one, b"still")
        round_trip(three, b"fine")
        assert proxy.connections == 2
    assert proxy.wait_for_event("reset", conn=2).detail == "reset_peer-1: ResetPeer(after=0.0)"


def test_reset_peer_for_new_connections_resets_them_before_dialling(
    echo_server: EchoServer, proxy: FaultProxy
) -> None:
    with connect(proxy) as old:
        round_trip(old, b"x")
        proxy.add_fault(ResetPeer(), conn="new")
        dialled = echo_server.accepted
        with pytest.raises(ConnectionResetError):
            connect_and_recv(proxy)
        round_trip(old, b"the old one lives")
    reset = proxy.wait_for_event("reset", conn=2)
    assert [e.what for e in proxy.events if e.conn == 2] == ["accept", "reset"]
    assert reset.detail.startswith("reset_peer-1")
    assert echo_server.accepted == dialled  # the upstream never saw it


def test_a_removed_reset_peer_never_fires(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        name = proxy.add_fault(ResetPeer(after=0.2))
        proxy.remove_fault(name)
        with pytest.raises(TimeoutError):
            proxy.wait_for_event("reset", timeout=0.4)
        round_trip(client, b"alive")


def test_reset_peer_after_a_delay_counts_from_the_accept(proxy: FaultProxy) -> None:
    proxy.add_fault(ResetPeer(after=0.2), conn="new")
    with connect(proxy) as client:
        round_trip(client, b"works at first")
        with pytest.raises(ConnectionResetError):
            client.recv(16)
    accepted = proxy.wait_for_event("accept")
    reset = proxy.wait_for_event("reset", conn=accepted.conn)
    assert reset.time - accepted.time >= 0.2


def test_timeout_drops_then_closes_both_sides(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    raw_proxy.add_fault(Timeout(0.2), direction="down")
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(b"request")
        assert recv_exactly(server, 7) == b"request"  # the other direction still flows
        server.sendall(b"lost")
        assert recv_until_eof(client) == b""  # the reply dropped, then a FIN
        assert recv_until_eof(server) == b""
    drop = raw_proxy.wait_for_event("drop")
    assert (drop.direction, drop.nbytes) == ("down", 4)
    close = raw_proxy.wait_for_event("close", conn=drop.conn)
    assert close.detail == "timeout-1: Timeout(after=0.2)"
    assert close.time - raw_proxy.wait_for_event("accept").time >= 0.2


def test_timeout_zero_drops_until_removed(proxy: FaultProxy) -> None:
    name = proxy.add_fault(Timeout(), direction="down")
    with connect(proxy) as client:
        client.sendall(b"lost")
        assert proxy.wait_for_event("drop").nbytes == 4
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(16)
        client.settimeout(IO_TIMEOUT)
        proxy.remove_fault(name)
        round_trip(client, b"back")


# -- probabilities --------------------------------------------------------------------------


def reset_pattern(address: tuple[str, int], seed: int) -> list[bool]:
    """Which of 16 new connections a ``ResetPeer`` of probability 0.5 resets."""
    pattern = []
    with FaultProxy(address, seed=seed) as proxy:
        proxy.add_fault(ResetPeer(), conn="new", probability=0.5, name="flaky")
        for _ in range(16):
            try:
                with connect(proxy) as client:
                    round_trip(client, b"x")
            except ConnectionError:
                pattern.append(True)
            else:
                pattern.append(False)
    resets = {e.conn for e in proxy.events if e.what == "reset"}  # all logged once stopped
    assert resets == {conn for conn, hit in enumerate(pattern, start=1) if hit}
    return pattern


def delay_pattern(address: tuple[str, int], seed: int) -> list[bool]:
    """Which of 20 requests a 10 ms latency of probability 0.5 per chunk holds."""
    with FaultProxy(address, seed=seed) as proxy:
        proxy.add_fault(Latency(0.01), direction="up", probability=0.5, per="chunk")
        with connect(proxy) as client:
            return [bool(timed_round_trip(proxy, client)) for _ in range(20)]


@pytest.mark.parametrize(
    ("pattern", "seeds", "bounds"),
    [(reset_pattern, (4, 5), (3, 13)), (delay_pattern, (6, 7), (4, 16))],
    ids=["per connection", "per chunk"],
)
def test_a_probability_is_drawn_per_connection_or_per_chunk_and_seeded(
    echo_server: EchoServer,
    pattern: Callable[[tuple[str, int], int], list[bool]],
    seeds: tuple[int, int],
    bounds: tuple[int, int],
) -> None:
    seed, other_seed = seeds
    first = pattern(echo_server.address, seed)
    assert first == pattern(echo_server.address, seed)
    assert first != pattern(echo_server.address, other_seed)
    assert bounds[0] <= sum(first) <= bounds[1]


# -- the toxiproxy-like kinds ---------------------------------------------------------------


def test_slicer_varies_its_sizes_and_waits_between_pieces(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    raw_proxy.add_fault(Slicer(10, size_variation=4, delay=0.005), direction="up")
    payload = os.urandom(300)
    sizes = []
    with connect(raw_proxy) as client, accept(upstream) as server:
        started = time.monotonic()
        client.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            chunk = server.recv(1024)
            assert chunk
            sizes.append(len(chunk))
            received += chunk
        elapsed = time.monotonic() - started
    assert bytes(received) == payload
    event = raw_proxy.wait_for_event("slice")
    assert math.ceil(300 / 14) <= event.pieces <= math.ceil(300 / 6)
    assert elapsed >= (event.pieces - 1) * 0.005
    assert min(sizes[:-1]) >= 6  # a read may join pieces, never split one
    assert len(set(sizes)) > 1


def test_slow_close_applies_to_one_direction(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    raw_proxy.slow_close(0.3, direction="up")
    with connect(raw_proxy) as client, accept(upstream) as server:
        closed = time.monotonic()
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(server) == b""
        assert time.monotonic() - closed >= 0.3
        closed = time.monotonic()
        server.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b""
        assert time.monotonic() - closed < 0.3  # the server's FIN went on at once
    assert [fault.fault for fault in raw_proxy.faults] == [SlowClose(0.3)]


def test_latency_jitter_spreads_around_the_mean(proxy: FaultProxy) -> None:
    proxy.add_fault(Latency(0.02, jitter=0.015))
    mark = proxy.mark()
    with connect(proxy) as client:
        for _ in range(10):
            round_trip(client, b"x")
    delays = delays_after(proxy, mark)
    assert len(delays) == 20
    assert all(0.005 <= delay <= 0.035 for delay in delays)
    assert min(delays) < 0.02 < max(delays)


def test_stall_on_one_connection_holds_only_it(proxy: FaultProxy) -> None:
    with connect(proxy) as one, connect(proxy) as two:
        round_trip(one, b"1")
        round_trip(two, b"2")
        name = proxy.add_fault(Stall(), conn=1, direction="down")
        one.sendall(b"held")
        round_trip(two, b"flows")
        one.settimeout(0.2)
        with pytest.raises(TimeoutError):
            one.recv(16)
        one.settimeout(IO_TIMEOUT)
        proxy.remove_fault(name)
        assert recv_exactly(one, 4) == b"held"


# -- the listener ---------------------------------------------------------------------------


def test_heal_leaves_a_refused_listener_closed(proxy: FaultProxy) -> None:
    proxy.refuse()
    proxy.heal()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=IO_TIMEOUT).close()
    proxy.accept()
    with connect(proxy) as client:
        round_trip(client, b"x")


# -- arguments ------------------------------------------------------------------------------

BAD_FAULTS = [
    (lambda: Latency(-1), ValueError, "seconds"),
    (lambda: Latency(0.1, jitter="x"), TypeError, "jitter"),
    (lambda: Bandwidth(0), ValueError, "bytes_per_second"),
    (lambda: Slicer(0), ValueError, "average_size"),
    (lambda: Slicer(5, size_variation=5), ValueError, "size_variation"),
    (lambda: Slicer(5, delay=float("nan")), ValueError, "delay"),
    (lambda: LimitData(-1), ValueError, "nbytes"),
    (lambda: LimitData(1.0), TypeError, "nbytes"),
    (lambda: SlowClose(float("inf")), ValueError, "seconds"),
    (lambda: ResetPeer(-0.1), ValueError, "after"),
    (lambda: Timeout("1"), TypeError, "after"),
]


@pytest.mark.parametrize(("make", "error", "name"), BAD_FAULTS)
def test_bad_fault_parameters_name_the_field(make: object, error: type, name: str) -> None:
    with pytest.raises(error, match=rf"^{name}: "):
        make()  # type: ignore[operator]


BAD_OPTIONS = [
    ({"fault": "latency"}, TypeError, "fault"),
    ({"name": ""}, ValueError, "name"),
    ({"name": 3}, TypeError, "name"),
    ({"direction": "left"}, ValueError, "direction"),
    ({"conn": 0}, ValueError, "conn"),
    ({"conn": "old"}, TypeError, "conn"),
    ({"conn": True}, TypeError, "conn"),
    ({"probability": 0}, ValueError, "probability"),
    ({"probability": 1.5}, ValueError, "probability"),
    ({"probability": "half"}, TypeError, "probability"),
    ({"per": "byte"}, ValueError, "per"),
    ({"fault": Stall(), "per": "chunk"}, ValueError, "per"),
    ({"fault": ResetPeer(), "per": "chunk"}, ValueError, "per"),
]


@pytest.mark.parametrize(("options", "error", "name"), BAD_OPTIONS)
def test_bad_add_fault_options_name_the_argument(options: dict, error: type, name: str) -> None:
    proxy = FaultProxy(ADDRESS)  # not started: checks come first
    fault = options.pop("fault", Latency(0.1))
    with pytest.raises(error, match=rf"^{name}: "):
        proxy.add_fault(fault, **options)
    assert proxy.faults == ()
    with pytest.raises(TypeError, match=r"^name: "):
        proxy.remove_fault(None)  # type: ignore[arg-type]


# -- integrity while faults switch --------------------------------------------------------


def switch_faults(proxy: FaultProxy, stop: threading.Event, seed: int) -> None:
    """Switch lossless faults at random until ``stop``, then heal."""
    rng = random.Random(seed)
    sides = ["up", "down", "both"]
    switches = [
        lambda: proxy.set_latency(rng.uniform(0, 0.005), rng.uniform(0, 0.005), rng.choice(sides)),
        lambda: proxy.set_slice(rng.randint(1, 5000), rng.choice(sides)),
        lambda: proxy.set_bandwidth(rng.choice([2e6, 2e7, None]), rng.choice(sides)),
        lambda: proxy.stall(rng.choice(sides), enabled=rng.random() < 0.5),
        lambda: proxy.add_fault(
            Slicer(50, size_variation=40), name="slicer", per="chunk", probability=0.5
        ),
        lambda: proxy.add_fault(Latency(0.002, jitter=0.002), name="lag", conn=rng.randint(1, 40)),
        proxy.heal,
    ]
    while not stop.wait(0.002):  # pacing the switches, not waiting for anything
        rng.choice(switches)()
    proxy.heal()


def echo_all(proxy: FaultProxy, payloads: list[bytes], deadline: float) -> list[bytes]:
    """Send each payload on its own connection through the echo; return what came back."""
    clients = [connect(proxy) for _ in payloads]
    selector = selectors.DefaultSelector()
    try:
        outgoing = {}
        received = {}
        for client, payload in zip(clients, payloads, strict=True):
            client.setblocking(False)
            outgoing[client] = memoryview(payload)
            received[client] = bytearray()
            selector.register(client, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while any(len(received[c]) < len(p) for c, p in zip(clients, payloads, strict=True)):
            assert time.monotonic() < deadline, "the echoes did not come back in time"
            for key, events in selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if events & selectors.EVENT_WRITE and outgoing[sock]:
                    with contextlib.suppress(BlockingIOError):
                        outgoing[sock] = outgoing[sock][sock.send(outgoing[sock][:65536]) :]
                    if not outgoing[sock]:
                        selector.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    with contextlib.suppress(BlockingIOError):
                        data = sock.recv(1 << 20)
                        assert data, "EOF before the whole echo"
                        received[sock] += data
        return [bytes(received[client]) for client in clients]
    finally:
        selector.close()
        for client in clients:
            client.close()


def test_forty_streams_stay_byte_exact_while_faults_switch(echo_server: EchoServer) -> None:
    payloads = [random.Random(i).randbytes(128 * 1024) for i in range(40)]
    stop = threading.Event()
    with FaultProxy(echo_server.address, seed=9) as proxy:
        switcher = threading.Thread(target=switch_faults, args=(proxy, stop, 9))
        switcher.start()
        try:
            echoes = echo_all(proxy, payloads, time.monotonic() + 20)
        finally:
            stop.set()
            switcher.join(IO_TIMEOUT)
    assert echoes == payloads
    finals = [e.what for e in proxy.events if e.what in ("close", "reset")]
    assert finals == ["close"] * 40
    assert [e for e in proxy.events if e.what == "error"] == []
