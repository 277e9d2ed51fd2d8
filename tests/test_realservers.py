"""The real Thrift and gRPC test servers behave like servers a pool must survive.

Clients see a restart as a broken connection (Thrift) or a channel that
reconnects by itself (gRPC); the call counters count exactly the calls the
handlers ran, so tests of pools can prove that nothing was applied twice.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import wait_until
from realservers import (
    PING,
    SLEEP,
    GrpcServer,
    ThriftServer,
    TTransportException,
    fixture_grpc_runtime,  # noqa: F401 - defines the fixture grpc_runtime
    fixture_grpc_server,  # noqa: F401 - defines the fixture grpc_server
    fixture_thrift_server,  # noqa: F401 - defines the fixture thrift_server
    grpc_channel,
    grpc_echo,
    thrift_client,
    thrift_module,
)

# -- Thrift ----------------------------------------------------------------------------


def test_thrift_calls_are_answered_and_counted(thrift_server: ThriftServer) -> None:
    with contextlib.closing(thrift_client(thrift_server.address)) as client:
        assert client.ping() == "pong"
        assert client.echo("héllo") == "héllo"
        assert client.add(2, 40) == 42
        assert client.add(-1, 1) == 0
        assert client.sleep(0.0) is None
    assert thrift_server.calls == {"ping": 1, "echo": 1, "add": 2, "sleep": 1}
    assert thrift_server.connections == 1
    assert wait_until(lambda: thrift_server.active == 0)
    assert isinstance(thrift_module.Echo.thrift_services, list)


def test_thrift_restart_breaks_old_connections_on_the_same_port(
    thrift_server: ThriftServer,
) -> None:
    address = thrift_server.address
    with contextlib.closing(thrift_client(address)) as old:
        assert old.ping() == "pong"
        thrift_server.restart()
        assert thrift_server.address == address
        assert thrift_server.active == 0
        with pytest.raises(TTransportException) as excinfo:
            old.ping()  # the server closed the connection: the reply is end-of-file
        assert excinfo.value.type == TTransportException.END_OF_FILE
    with contextlib.closing(thrift_client(address)) as new:
        assert new.echo("again") == "again"
    assert thrift_server.calls == {"ping": 1, "echo": 1}  # the failed call never ran
    assert thrift_server.connections == 2


def test_thrift_reset_restart_and_killed_connections(thrift_server: ThriftServer) -> None:
    with contextlib.closing(thrift_client(thrift_server.address)) as old:
        old.ping()
        thrift_server.restart(reset=True)
        with pytest.raises(ConnectionResetError):  # thriftpy2 passes the socket error through
            old.ping()
    with contextlib.closing(thrift_client(thrift_server.address)) as old:
        old.ping()
        thrift_server.kill_connections()  # still listening
        with pytest.raises(TTransportException):
            old.ping()
    with contextlib.closing(thrift_client(thrift_server.address)) as new:
        new.ping()
    assert thrift_server.calls == {"ping": 3}
    assert thrift_server.connections == 3


def test_thrift_stopped_server_refuses_then_starts_again(thrift_server: ThriftServer) -> None:
    thrift_server.stop()
    assert not thrift_server.running
    with pytest.raises(TTransportException) as excinfo:
        thrift_client(thrift_server.address)
    assert excinfo.value.type == TTransportException.NOT_OPEN
    thrift_server.stop()  # idempotent
    thrift_server.start()
    with contextlib.closing(thrift_client(thrift_server.address)) as client:
        assert client.ping() == "pong"
    assert thrift_server.calls == {"ping": 1}
    assert thrift_server.connections == 1


def _call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-call")
    thread.start()
    return thread, errors


def test_thrift_slow_call_ends_unanswered_when_the_server_stops(
    thrift_server: ThriftServer,
) -> None:
    with contextlib.closing(thrift_client(thrift_server.address, timeout=10.0)) as client:
        thread, errors = _call_in_thread(lambda: client.sleep(8.0))
        assert wait_until(lambda: thrift_server.calls.get("sleep") == 1)
        started = time.monotonic()
        thrift_server.stop()
        thread.join(5.0)
        assert not thread.is_alive()
        assert time.monotonic() - started < 2.0
    assert len(errors) == 1
    assert isinstance(errors[0], TTransportException)
    assert thrift_server.calls == {"sleep": 1}


def test_thrift_client_timeout_is_a_plain_timeout_error(thrift_server: ThriftServer) -> None:
    client = thrift_client(thrift_server.address, timeout=0.1)
    with contextlib.closing(client), pytest.raises(TimeoutError):  # not wrapped by thriftpy2
        client.sleep(0.5)
    assert thrift_server.calls == {"sleep": 1}


def test_thrift_server_leaves_nothing_behind() -> None:
    threads = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    server = ThriftServer()
    with server, contextlib.closing(thrift_client(server.address)) as client:
        client.ping()
        assert len(os.listdir("/proc/self/fd")) > fds
    assert set(threading.enumerate()) == threads  # stop joined every thread
    assert len(os.listdir("/proc/self/fd")) == fds
    assert server.errors == []


# -- gRPC ------------------------------------------------------------------------------

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _EchoAttempts:
    """A predicate for ``wait_until``: one short echo call, True if it succeeded."""

    def __init__(self, channel: grpc.Channel, payload: bytes) -> None:
        self.channel = channel
        self.payload = payload
        self.successes = 0
        self.failures: list[grpc.StatusCode] = []

    def __call__(self) -> bool:
        try:
            reply = grpc_echo(self.channel, self.payload, timeout=0.5)
        except grpc.RpcError as exc:
            self.failures.append(exc.code())
            return False
        assert reply == self.payload
        self.successes += 1
        return True


def test_grpc_calls_are_answered_and_counted(grpc_server: GrpcServer) -> None:
    assert grpc_server.target == f"127.0.0.1:{grpc_server.address[1]}"
    with grpc_channel(grpc_server.target) as channel:
        assert grpc_echo(channel, b"hello") == b"hello"
        assert grpc_echo(channel, b"") == b""
        assert grpc_echo(channel, b"\x00" * 100_000) == b"\x00" * 100_000
        assert grpc_echo(channel, b"anything", method=PING) == b"pong"
        assert grpc_echo(channel, b"0", method=SLEEP) == b"slept"
    assert grpc_server.calls == {"Echo": 3, "Ping": 1, "Sleep": 1}


def test_grpc_same_channel_recovers_after_restart(grpc_server: GrpcServer) -> None:
    port = grpc_server.address[1]
    with grpc_channel(grpc_server.target) as channel:
        assert grpc_echo(channel, b"one") == b"one"
        grpc_server.restart()
        assert grpc_server.address[1] == port
        attempts = _EchoAttempts(channel, b"two")
        assert wait_until(attempts, timeout=5.0)
    assert attempts.successes == 1
    assert set(attempts.failures) <= set(_RETRYABLE)
    assert grpc_server.calls == {"Echo": 2}


@pytest.mark.parametrize("fast_reconnect", [True, False], ids=["fast-backoff", "default-backoff"])
def test_grpc_calls_fail_while_stopped_and_the_channel_reconnects(
    grpc_server: GrpcServer, fast_reconnect: bool
) -> None:
    with grpc_channel(grpc_server.target, fast_reconnect=fast_reconnect) as channel:
        assert grpc_echo(channel, b"before") == b"before"
        grpc_server.stop()
        assert not grpc_server.running
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as excinfo:
                grpc_echo(channel, b"during", timeout=0.3)
            assert excinfo.value.code() in _RETRYABLE
        assert time.monotonic() - started < 2.0
        grpc_server.start()
        # The channel retries by itself, after its reconnect backoff (about 1 s by default).
        attempts = _EchoAttempts(channel, b"after")
        assert wait_until(attempts, timeout=8.0)
    assert attempts.successes == 1
    assert set(attempts.failures) <= set(_RETRYABLE)
    assert grpc_server.calls == {"Echo": 2}  # the calls that failed never ran


def test_grpc_slow_call_is_cancelled_by_deadline_and_by_stop(grpc_server: GrpcServer) -> None:
    with grpc_channel(grpc_server.target) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as excinfo:
            grpc_echo(channel, b"8", timeout=0.2, method=SLEEP)
        assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        thread, errors = _call_in_thread(
            lambda: grpc_echo(channel, b"8", timeout=10.0, method=SLEEP)
        )
        assert wait_until(lambda: grpc_server.calls.get("Sleep") == 2)
        grpc_server.stop()  # cancels the call; the handler wakes at once
        thread.join(5.0)
        assert not thread.is_alive()
        assert time.monotonic() - started < 3.0
    assert len(errors) == 1
    assert isinstance(errors[0], grpc.RpcError)
    assert errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert grpc_server.calls == {"Sleep": 2}


def test_grpc_restart_fails_loudly_if_the_port_is_taken(grpc_runtime: None) -> None:
    with GrpcServer() as first:
        second = GrpcServer(port=first.address[1])
        with pytest.raises(RuntimeError, match="Failed to bind"):
            second.start()
        assert not second.running


def test_grpc_server_joins_its_python_threads(grpc_runtime: None) -> None:
    threads = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    server = GrpcServer()
    with server, grpc_channel(server.target) as channel:
        grpc_echo(channel, b"x")
        assert any(t.name.endswith("(_serve)") for t in threading.enumerate())
    assert set(threading.enumerate()) == threads  # nothing to wait for: stop joined them
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds)


def test_grpc_runtime_is_released_once_its_last_user_is_gone(tmp_path: Path) -> None:
    """Without ``grpc_runtime``, in a fresh process: every native gRPC thread and descriptor
    ends once the last server and channel are closed and freed."""
    script = textwrap.dedent(
        """
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        from realservers import GrpcServer, grpc_channel, grpc_echo

        def native():
            tasks = []
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/comm") as f:
                    tasks.append(f.read().strip())
            return len(os.listdir("/proc/self/fd")), sorted(tasks)

        before = native()
        with GrpcServer() as server, grpc_channel(server.target) as channel:
            grpc_echo(channel, b"x")
            during = native()
        del server, channel
        deadline = time.monotonic() + 5.0
        while native() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        print(before, during, native(), sep="\\n")
        """
    )
    path = tmp_path / "runtime.py"
    path.write_text(script)
    result = subprocess.run(
        [sys.executable, str(path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    before, during, after = result.stdout.splitlines()
    assert "grpc_global_tim" in during
    assert "event_engine" in during
    assert after == before, result.stdout
