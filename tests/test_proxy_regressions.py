"""Regressions of gocp.testing.FaultProxy (issue 14): each test failed before its fix."""

from __future__ import annotations

import inspect
import os
import socket
import threading
import time

import pytest
from test_proxy import (  # noqa: F401 - fixtures
    IO_TIMEOUT,
    accept,
    connect,
    fixture_proxy,
    fixture_raw_proxy,
    fixture_upstream,
    recv_exactly,
    recv_until_eof,
    round_trip,
)

import gocp.testing
from gocp.testing import EchoServer, FaultProxy

# -- 1. the event log is searched by position, not by length ----------------------------


def test_wait_for_event_still_finds_events_once_the_log_is_full(proxy: FaultProxy) -> None:
    """Regression: at 10,000 kept events the search position stopped moving, so every
    later event was missed."""
    proxy.set_latency(0, jitter=1e-6)  # one "delay" event per chunk
    with connect(proxy) as client:
        for _ in range(5_100):  # one chunk each way per round trip: > 10,000 events
            round_trip(client, b"x")
    assert len(proxy.events) == 10_000  # the log is full: the oldest events are gone
    closed = proxy.wait_for_event("close", conn=1, timeout=IO_TIMEOUT)
    assert closed == proxy.events[-1]
    assert closed.seq > 10_000


# -- 2. control calls and stop stay prompt whatever the traffic -------------------------


def sliced_load(proxy: FaultProxy, count: int) -> list[socket.socket]:
    """``count`` clients, each with 64 KiB on its way through a 1-byte slicer."""
    clients = []
    payload = os.urandom(65536)
    for _ in range(count):
        client = socket.create_connection(proxy.address, timeout=IO_TIMEOUT)
        clients.append(client)
        client.setblocking(False)
        try:
            client.send(payload)
        except BlockingIOError:
            pass
    proxy.wait_for_event("connect", conn=count, timeout=IO_TIMEOUT)
    return clients


def timed(call: object) -> float:
    started = time.monotonic()
    call()  # type: ignore[operator]
    return time.monotonic() - started


def test_control_calls_and_stop_stay_prompt_under_sliced_traffic(
    echo_server: EchoServer,
) -> None:
    """Regression: 150-200 connections sliced to 1 byte kept the proxy thread from
    control calls (``set_latency`` raised "no answer within 5.0s", ``heal`` took 3 s)
    and from stopping ("FaultProxy thread did not stop")."""
    proxy = FaultProxy(echo_server.address, seed=2)
    proxy.set_slice(1)
    clients: list[socket.socket] = []
    try:
        with proxy:
            clients = sliced_load(proxy, 150)
            mark = proxy.mark()
            assert timed(lambda: proxy.set_latency(0.001, direction="up")) < 0.5
            with connect(proxy) as probe:  # a new connection gets through, with the latency
                probe.settimeout(30.0)  # its turn among 150 sliced streams, on a busy CI
                probe.sendall(b"!")
                assert recv_exactly(probe, 1) == b"!"
                conn = proxy.wait_for_event("accept", after=mark).conn
                assert proxy.wait_for_event("delay", conn=conn, after=mark).seconds == 0.001
            assert timed(proxy.kill_all) < 2.0  # every connection closed meanwhile
            clients += sliced_load(proxy, 150)  # ids 152..301: the probe was 151
            assert timed(proxy.heal) < 2.0
            proxy.set_slice(1)
            stop_started = time.monotonic()
        assert time.monotonic() - stop_started < 2.0
    finally:
        for client in clients:
            client.close()
    assert not proxy.running
    assert proxy.connections == 0
    assert [e for e in proxy.events if e.what == "error"] == []


# -- 3. waiting for what happens from now on ---------------------------------------------


def test_wait_for_event_after_a_mark_skips_older_events(proxy: FaultProxy) -> None:
    """Regression: the search always covered the whole log (kept across restarts), so a
    second reset's wait returned the first one's event."""
    with connect(proxy) as first:
        round_trip(first, b"1")
        proxy.reset()
    mark = proxy.mark()
    with connect(proxy) as second:
        round_trip(second, b"2")
        proxy.reset()
    assert proxy.wait_for_event("reset").conn == 1  # the default still looks at all
    event = proxy.wait_for_event("reset", after=mark)
    assert (event.conn, event.seq > mark) == (2, True)
    mark = proxy.mark()
    proxy.stop()
    proxy.start()
    assert proxy.wait_for_event("listen", after=mark).seq == mark + 2  # after "stop"
    seqs = [e.seq for e in proxy.events]
    assert seqs == list(range(1, len(seqs) + 1))


# -- 4. seeded replay across restarts ----------------------------------------------------


def test_the_same_seed_replays_the_same_delays_after_a_restart(echo_server: EchoServer) -> None:
    """Regression: draws were seeded by connection id, which keeps counting across a
    restart, so the same traffic after a restart got other delays."""
    proxy = FaultProxy(echo_server.address, seed=3)
    proxy.set_latency(0, jitter=0.01)
    runs = []
    for _ in range(2):
        with proxy:
            before = len(proxy.events)
            with connect(proxy) as client:
                for i in range(3):
                    round_trip(client, b"m%d" % i)
            events = proxy.events[before:]
            runs.append([(e.direction, e.seconds) for e in events if e.what == "delay"])
    assert len(runs[0]) == 6
    assert runs[0] == runs[1]


# -- 5. bandwidth holds at high rates -----------------------------------------------------


@pytest.mark.parametrize("rate", [1e7, 1e8])
def test_bandwidth_limit_holds_at_high_rates(
    raw_proxy: FaultProxy, upstream: socket.socket, rate: float
) -> None:
    """Regression: timers firing late were not made up for: 1e8 B/s gave 49 MB/s, 1e7
    gave 88% of the limit."""
    raw_proxy.set_bandwidth(rate, direction="up")
    payload = bytes(int(rate * 0.4))  # 0.4 s at the limit
    with connect(raw_proxy) as client, accept(upstream) as server:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        try:
            first = len(server.recv(1 << 20))
            started = time.monotonic()
            received = first
            while received < len(payload):
                chunk = server.recv(1 << 20)
                assert chunk
                received += len(chunk)
            elapsed = time.monotonic() - started
        finally:
            sender.join(IO_TIMEOUT)
    measured = (len(payload) - first) / elapsed
    assert 0.9 * rate < measured < 1.1 * rate


# -- 6. after stop, names, defaults, docstrings -------------------------------------------


def test_after_stop_every_action_raises_and_close_stops(echo_server: EchoServer) -> None:
    """Regression: after ``stop``, ``reset`` and ``kill_all`` did nothing while ``refuse``
    and ``accept`` raised; ``close`` did not exist."""
    proxy = FaultProxy(echo_server.address).start()
    proxy.close()
    assert not proxy.running
    for action in (proxy.reset, proxy.kill_all, proxy.refuse, proxy.accept):
        with pytest.raises(RuntimeError, match="not running"):
            action()
    proxy.set_latency(0.1)  # settings still work, for the next start
    proxy.close(reset=True)  # idempotent


def test_wait_for_an_unknown_kind_fails_at_once(proxy: FaultProxy) -> None:
    """Regression: ``wait_for_event("nonsense")`` waited its whole timeout."""
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^what: not a kind of event: 'nonsense'"):
        proxy.wait_for_event("nonsense", timeout=5.0)
    assert time.monotonic() - started < 1.0


def test_cut_after_defaults_to_both_directions_like_every_fault(
    raw_proxy: FaultProxy, upstream: socket.socket
) -> None:
    """Regression: ``cut_after`` alone defaulted to ``"up"``; a reply was never cut."""
    raw_proxy.cut_after(100)
    reply = os.urandom(150)
    with connect(raw_proxy) as client, accept(upstream) as server:
        client.sendall(b"request")
        assert recv_exactly(server, 7) == b"request"
        server.sendall(reply)
        assert recv_until_eof(client) == reply[:100]
    assert raw_proxy.wait_for_event("cut").direction == "down"
    directions = inspect.signature(FaultProxy.cut_after).parameters["direction"].default
    assert directions == "both"


def public_members(obj: object) -> list[tuple[str, object]]:
    """The public methods and properties of a class and of its bases in gocp."""
    if not inspect.isclass(obj):
        return []
    members: dict[str, object] = {}
    for cls in reversed(obj.__mro__):
        if cls.__module__.startswith("gocp"):
            members.update(
                (name, value)
                for name, value in vars(cls).items()
                if not name.startswith("_") and (callable(value) or isinstance(value, property))
            )
    return sorted(members.items())


@pytest.mark.parametrize("name", gocp.testing.__all__)
def test_every_public_name_and_member_has_a_docstring(name: str) -> None:
    """Regression: ``fail_next`` and ``applied_counts`` had none."""
    obj = getattr(gocp.testing, name)
    assert inspect.getdoc(obj), name
    missing = [member for member, value in public_members(obj) if not inspect.getdoc(value)]
    assert missing == [], f"{name}: no docstring on {missing}"
