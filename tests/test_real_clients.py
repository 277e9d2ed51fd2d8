"""gocp.pool with real client libraries against real servers on loopback: thriftpy2
clients through a Thrift server restart, gRPC channels replaced by lifetime and idle
limits. The README's examples for both are these tests' first halves."""

from __future__ import annotations

import threading

import grpc
from conftest import wait_until
from realservers import (  # noqa: F401 - fixtures
    PING,
    GrpcServer,
    ThriftServer,
    TTransportException,
    fixture_grpc_runtime,
    fixture_grpc_server,
    fixture_thrift_server,
    grpc_channel,
    grpc_echo,
    thrift_module,
)
from thriftpy2.rpc import make_client

import gocp
from gocp.testing import FakeClock


def test_a_pool_of_thrift_clients_rides_out_a_server_restart(thrift_server: ThriftServer):
    """Eight threads share four thriftpy2 clients; the server stops and restarts on the
    same port. No reconnect code: a call that was on a connection the restart killed
    raises (gocp never re-sends it), every later call works, and the pool ends at full
    size with live clients. The ``ping`` check replaces clients found dead after idling."""
    host, port = thrift_server.address
    pool = gocp.pool(
        lambda: make_client(thrift_module.Echo, host, port, timeout=2000),
        size=4,
        check=lambda client: client.ping() == "pong",
        check_interval=0.05,
        retry_min=0.02,
        retry_max=0.2,
        dial_attempts=20,  # a get waits out the restart (within its timeout) instead of failing
    )
    restarted = threading.Event()
    stop = threading.Event()
    results: dict[str, int] = {"ok": 0, "failed": 0, "ok_after": 0}
    lock = threading.Lock()

    def work(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            text = f"{number}-{sequence}"
            after = restarted.is_set()
            try:
                with pool.connection(timeout=5) as client:
                    assert client.echo(text) == text
                outcome = "ok_after" if after else "ok"
            except (gocp.DialError, OSError, TTransportException):
                outcome = "failed"
            with lock:
                results[outcome] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    with pool:
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: results["ok"] >= 200, timeout=10)
            thrift_server.restart()
            restarted.set()
            assert wait_until(lambda: results["ok_after"] >= 200, timeout=15), results
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
        failed = results["failed"]
        assert failed <= pool.size, results  # at most each client's first call after the break
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.waiting) == (4, 0, 0)
        assert stats.dials >= 5  # the first four, and redials after the restart
        with pool.connection(timeout=1) as client:
            assert client.add(2, 3) == 5
    # No call was applied twice: the server ran exactly the echoes that succeeded.
    applied = thrift_server.calls.get("echo", 0)
    assert applied >= results["ok"] + results["ok_after"]
    assert applied <= results["ok"] + results["ok_after"] + failed


def test_grpc_channels_are_replaced_by_max_lifetime_and_idle_timeout(grpc_server: GrpcServer):
    """A pool of gRPC channels: ``max_lifetime`` replaces a channel when it is put back
    past its lifetime (never while lent), ``idle_timeout`` closes one idle too long; calls
    keep working on the new channels. An injected clock stands in for the hours."""
    clock = FakeClock()
    made: list[grpc.Channel] = []

    def dial() -> grpc.Channel:
        channel = grpc_channel(grpc_server.target)
        made.append(channel)
        return channel

    with gocp.pool(
        dial,
        size=2,
        max_lifetime=3600,
        idle_timeout=600,
        check=lambda channel: grpc_echo(channel, b"", method=PING) == b"pong",
        clock=clock,
    ) as pool:
        with pool.connection() as channel:
            assert grpc_echo(channel, b"hello") == b"hello"
            first = channel
            clock.advance(3600)  # past its lifetime while lent: it is not touched
            assert grpc_echo(channel, b"still") == b"still"
        assert pool.stats().closed_lifetime == 1  # replaced when put back
        with pool.connection() as channel:
            assert channel is not first
            assert grpc_echo(channel, b"new") == b"new"
            second = channel
        clock.advance(601)  # idle too long: the background thread closes it
        assert wait_until(lambda: pool.stats().closed_idle == 1)
        assert pool.stats().connected == 0
        with pool.connection() as channel:
            assert channel is not second
            assert grpc_echo(channel, b"again") == b"again"
        assert len(made) == 3
        member_uses = [member.uses for member in pool.stats().members]
        assert sorted(member_uses) == [0, 1]
    # close() closed every channel it made: a call on one raises (closed channel).
    for channel in made:
        try:
            grpc_echo(channel, b"x", timeout=0.5)
        except ValueError:  # "Cannot invoke RPC on closed channel!"
            continue
        raise AssertionError(f"{channel} was left open")
    assert grpc_server.calls["Echo"] == 4


def test_a_grpc_check_catches_a_stopped_server_before_lending(grpc_server: GrpcServer):
    """With a ``PING`` check, a channel idle longer than ``check_interval`` is checked
    before it is lent. While the server is down the check raises (UNAVAILABLE): the
    channel is closed and replaced by a new one in the same ``get`` (a gRPC channel
    connects lazily, so dialling it needs no server). Once the server is back, the same
    pool works with no reconnect code."""
    clock = FakeClock()
    pool = gocp.pool(
        lambda: grpc_channel(grpc_server.target),
        size=1,
        check=lambda channel: grpc_echo(channel, b"", timeout=0.5, method=PING) == b"pong",
        check_interval=10,
        clock=clock,
    )
    with pool:
        with pool.connection() as channel:
            assert grpc_echo(channel, b"a") == b"a"
        grpc_server.stop()
        clock.advance(10)
        with pool.connection() as channel:  # checked: failed (UNAVAILABLE), so replaced
            pass
        stats = pool.stats()
        assert (stats.closed_check, stats.hook_failures) == (1, 1)
        grpc_server.start()
        clock.advance(10)
        assert wait_until(lambda: _echo_ok(pool), timeout=10)
        assert pool.stats().idle == 1


def _echo_ok(pool: gocp.Pool[grpc.Channel]) -> bool:
    try:
        with pool.connection(timeout=1) as channel:
            return grpc_echo(channel, b"up", timeout=1) == b"up"
    except grpc.RpcError:
        return False
