"""Real Thrift (thriftpy2) and gRPC (grpcio) servers on loopback, for tests of pools of clients.

Both servers listen on 127.0.0.1 (a free port, picked by the first ``start``),
can be stopped and restarted on the same port, count every call their
handlers run (so a test can prove nothing was applied twice), and leave no
thread or descriptor of theirs behind once ``stop`` returns.

- ``ThriftServer``: service ``Echo`` of ``thrift_module`` (an inline IDL),
  one thread per connection; ``thrift_client(address)`` makes a client.
- ``GrpcServer``: generic unary-unary handlers (no code generation) for
  ``ECHO``, ``PING`` and ``SLEEP``; ``grpc_channel(target)`` makes a channel
  and ``grpc_echo(channel, payload)`` calls ``ECHO``.

The gRPC runtime is process-wide: while any gRPC server or open channel
exists, the C core keeps native threads (``event_engine`` workers,
``grpc_global_timer``, ``lifeguard``; not Python threads) and four
descriptors (two epoll, two eventfd); it releases them all when the last
one is closed and freed. Tests that use gRPC request the session fixture
``grpc_runtime`` (``grpc_server`` does), which holds one idle channel for
the whole session so that those process-wide resources exist before any
test's leak baseline is taken, instead of coming and going with each test.

Fixtures ``thrift_server``, ``grpc_server`` and ``grpc_runtime``: a test module
imports ``fixture_thrift_server``, ``fixture_grpc_server`` and
``fixture_grpc_runtime`` (the names the fixtures are defined under).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import Any, Self

import grpc
import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TClient, TProcessor
from thriftpy2.transport import TBufferedTransportFactory, TSocket, TTransportException

__all__ = [
    "ECHO",
    "PING",
    "SLEEP",
    "GrpcServer",
    "TTransportException",
    "ThriftServer",
    "fixture_grpc_runtime",
    "fixture_grpc_server",
    "fixture_thrift_server",
    "grpc_channel",
    "grpc_echo",
    "thrift_client",
    "thrift_module",
]

_JOIN_BOUND = 5.0  # every stop returns (or raises) within about this
_SLEEP_BOUND = 10.0  # the longest a ``sleep`` call sleeps, whatever it asks for

# -- Thrift ----------------------------------------------------------------------------

THRIFT_IDL = """
service Echo {
    string ping(),
    string echo(1: string text),
    i64 add(1: i64 a, 2: i64 b),
    void sleep(1: double seconds),
}
"""

thrift_module: ModuleType = thriftpy2.load_fp(
    io.StringIO(THRIFT_IDL), module_name="gocp_test_thrift"
)


def thrift_client(address: tuple[str, int], timeout: float = 2.0) -> TClient:
    """A thriftpy2 client of ``Echo``, connected to ``address``; close it with ``.close()``.

    ``timeout`` (seconds) bounds the connect and every socket read and write.
    Errors: ``TTransportException`` (refused; or the server closed the
    connection: ``END_OF_FILE``; or a timeout), or a plain ``OSError`` such as
    ``ConnectionResetError`` (thriftpy2 passes some socket errors through).
    """
    host, port = address
    return make_client(thrift_module.Echo, host, port, timeout=max(1, round(timeout * 1000)))


class _Interrupted(Exception):
    """A ``sleep`` cut short by ``stop`` or ``kill_connections``: the connection ends unanswered."""


class _ThriftConn:
    __slots__ = ("interrupt", "sock", "thread")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.interrupt = threading.Event()
        self.thread: threading.Thread | None = None


class _EchoHandler:
    """The service's methods, for one connection."""

    def __init__(self, server: ThriftServer, conn: _ThriftConn) -> None:
        self._server = server
        self._conn = conn

    def ping(self) -> str:
        self._server._count("ping")
        return "pong"

    def echo(self, text: str) -> str:
        self._server._count("echo")
        return text

    def add(self, a: int, b: int) -> int:
        self._server._count("add")
        return a + b

    def sleep(self, seconds: float) -> None:
        self._server._count("sleep")
        if self._conn.interrupt.wait(min(max(seconds, 0.0), _SLEEP_BOUND)):
            raise _Interrupted


class ThriftServer:
    """A threaded thriftpy2 server of ``thrift_module.Echo`` on loopback.

    ``ping()`` returns ``"pong"``, ``echo(text)`` returns ``text``,
    ``add(a, b)`` returns ``a + b``, ``sleep(seconds)`` returns after
    ``min(seconds, 10)`` seconds, or never answers if the server is stopped
    (or its connections killed) first.

    ``calls`` counts the calls each method's handler ran (whether or not the
    reply reached the client); ``connections`` counts the connections
    accepted, ``active`` those open now. ``errors`` lists unexpected errors
    of the connection threads (a test should see none). Counters persist
    across restarts.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._conns: dict[socket.socket, _ThriftConn] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = False
        self._connections = 0
        self.errors: list[BaseException] = []

    # -- state, from any thread ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; the port stays the same across restarts."""
        return self._host, self._port

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    @property
    def calls(self) -> dict[str, int]:
        """Calls run per method name, e.g. ``{"ping": 2, "echo": 1}``."""
        with self._lock:
            return dict(self._calls)

    @property
    def connections(self) -> int:
        """Connections accepted so far (all starts together)."""
        with self._lock:
            return self._connections

    @property
    def active(self) -> int:
        """Connections open on the server side now."""
        with self._lock:
            return len(self._conns)

    def _count(self, method: str) -> None:
        with self._lock:
            self._calls[method] += 1

    # -- control --------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop) and serve in background threads."""
        if self._acceptor is not None:
            return self
        listener = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"gocp-thrift-accept-{self._port}", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, *, reset: bool = False) -> None:
        """Close the listener and every connection, then join every thread.

        Clients see the break at once: a FIN (their next read gets
        end-of-file), or an RST with ``reset``. A ``sleep`` in progress ends
        unanswered. Idempotent; raises ``RuntimeError`` if a thread is still
        alive after about 5 seconds.
        """
        acceptor = self._acceptor
        if acceptor is None:
            return
        with self._lock:
            self._stopping = True
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        acceptor.join(_JOIN_BOUND)
        if acceptor.is_alive():  # pragma: no cover - a bug in the accept loop
            raise RuntimeError("thrift test server: accept thread did not stop")
        self._acceptor = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        self._end_connections(reset=reset)

    def restart(self, *, reset: bool = False) -> None:
        """``stop`` then ``start`` on the same port."""
        self.stop(reset=reset)
        self.start()

    def kill_connections(self, *, reset: bool = False) -> None:
        """Close every current connection (as ``stop`` does) but keep listening."""
        self._end_connections(reset=reset)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the threads ----------------------------------------------------------------------

    def _end_connections(self, *, reset: bool) -> None:
        """Wake every connection thread (it closes its own socket) and join them."""
        with self._lock:
            conns = list(self._conns.values())
            for conn in conns:
                conn.interrupt.set()
                with contextlib.suppress(OSError):
                    if reset:
                        conn.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        conn.sock.shutdown(socket.SHUT_RD)  # wakes the reader, sends nothing
                    else:
                        conn.sock.shutdown(socket.SHUT_RDWR)  # FIN now
        deadline = time.monotonic() + _JOIN_BOUND
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
                if conn.thread.is_alive():  # pragma: no cover - a stuck write
                    raise RuntimeError("thrift test server: connection thread did not stop")

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None
        assert wake is not None
        try:
            with contextlib.closing(listener), selectors.DefaultSelector() as sel:
                sel.register(listener, selectors.EVENT_READ)
                sel.register(wake, selectors.EVENT_READ)
                while True:
                    ready = [key.fileobj for key, _ in sel.select()]
                    with self._lock:
                        if self._stopping:
                            return
                    if listener in ready:
                        self._accept(listener)
        except BaseException as exc:  # pragma: no cover - a bug; the test sees it in errors
            self.errors.append(exc)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _ThriftConn(sock)
        conn.thread = threading.Thread(
            target=self._serve_connection,
            args=(conn,),
            name=f"gocp-thrift-conn-{self._port}",
            daemon=True,
        )
        with self._lock:
            self._conns[sock] = conn
            self._connections += 1
            conn.thread.start()  # under the lock: _end_connections joins only started threads

    def _serve_connection(self, conn: _ThriftConn) -> None:
        transport = TBufferedTransportFactory().get_transport(TSocket(sock=conn.sock))
        protocol = TBinaryProtocolFactory().get_protocol(transport)
        processor = TProcessor(thrift_module.Echo, _EchoHandler(self, conn))
        try:
            while not conn.interrupt.is_set():
                processor.process(protocol, protocol)
        except (TTransportException, OSError, _Interrupted):
            pass  # the client left, or the server is ending this connection
        except Exception as exc:  # pragma: no cover - a bug; the test sees it in errors
            self.errors.append(exc)
        finally:
            with self._lock:  # closed under the lock: _end_connections never sees a reused fd
                del self._conns[conn.sock]
                conn.sock.close()


# -- gRPC ------------------------------------------------------------------------------

SERVICE = "gocp.test.Echo"
ECHO = f"/{SERVICE}/Echo"  # bytes in, the same bytes out
PING = f"/{SERVICE}/Ping"  # anything in, b"pong" out
SLEEP = f"/{SERVICE}/Sleep"  # b"<seconds>" in, b"slept" out after min(seconds, 10)

# Reconnect quickly after a server restart (gRPC's default first backoff is 1 s).
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


def _identity(data: bytes) -> bytes:
    return data


def grpc_channel(
    target: str, *, fast_reconnect: bool = True, options: tuple[tuple[str, Any], ...] = ()
) -> grpc.Channel:
    """An insecure channel to ``target``; ``fast_reconnect`` shortens the reconnect backoff.

    Close it (``with`` or ``.close()``): an open channel holds gRPC's runtime.
    """
    return grpc.insecure_channel(
        target, options=[*(FAST_RECONNECT if fast_reconnect else ()), *options]
    )


def grpc_echo(
    channel: grpc.Channel, payload: bytes, timeout: float = 2.0, *, method: str = ECHO
) -> bytes:
    """One unary call of ``method`` (default ``ECHO``) on ``channel``; raises ``grpc.RpcError``."""
    call = channel.unary_unary(
        method, request_serializer=_identity, response_deserializer=_identity
    )
    reply: bytes = call(payload, timeout=timeout)
    return reply


class GrpcServer:
    """A grpcio server on loopback with generic handlers for ``ECHO``, ``PING`` and ``SLEEP``.

    ``calls`` counts the calls each handler ran, by method name (``"Echo"``,
    ``"Ping"``, ``"Sleep"``), whether or not the reply reached the client;
    counters persist across restarts. ``SLEEP`` ends early, unanswered, when
    the call is cancelled (client deadline, or ``stop``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, workers: int = 8) -> None:
        self._host = host
        self._port = port
        self._workers = workers
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._server: grpc.Server | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []  # gRPC's own Python threads, joined by stop
        self._handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    behavior, request_deserializer=_identity, response_serializer=_identity
                )
                for name, behavior in (
                    ("Echo", self._echo),
                    ("Ping", self._ping),
                    ("Sleep", self._sleep),
                )
            },
        )

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; the port stays the same across restarts."""
        return self._host, self._port

    @property
    def target(self) -> str:
        """``"127.0.0.1:port"``, for ``grpc.insecure_channel``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def calls(self) -> dict[str, int]:
        """Calls run per method name, e.g. ``{"Echo": 2, "Ping": 1}``."""
        with self._lock:
            return dict(self._calls)

    def _count(self, method: str) -> None:
        with self._lock:
            self._calls[method] += 1

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Echo")
        return request

    def _ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Ping")
        return b"pong"

    def _sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._count("Sleep")
        ended = threading.Event()
        context.add_callback(ended.set)  # runs when the call ends: cancelled, deadline, stop
        ended.wait(min(max(float(request or b"0"), 0.0), _SLEEP_BOUND))
        return b"slept"

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop) and serve."""
        if self._server is not None:
            return self
        executor = concurrent.futures.ThreadPoolExecutor(
            self._workers, thread_name_prefix="gocp-grpc-handler"
        )
        # No SO_REUSEPORT (gRPC's default on Linux): a restart must get the port to itself.
        server = grpc.server(executor, handlers=[self._handler], options=[("grpc.so_reuseport", 0)])
        try:
            # grpcio raises RuntimeError("Failed to bind to address ...") if the port is taken
            port = server.add_insecure_port(self.target)
            if port == 0 or (self._port and port != self._port):  # older grpcio returned 0
                raise RuntimeError(f"Failed to bind to address {self.target}")
            with _new_threads() as started:
                server.start()
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=True)
            raise
        self._port = port
        self._server, self._executor, self._threads = server, executor, started
        return self

    def stop(self, grace: float = 0.0) -> None:
        """Stop serving: calls in progress get ``grace`` seconds, then are cancelled.

        Returns once the server has shut down, its handler and internal Python
        threads have ended and it is freed (then gRPC can release its runtime
        if nothing else uses it); raises ``RuntimeError`` if that takes more
        than ``grace`` + about 5 seconds. Idempotent.
        """
        server, executor = self._server, self._executor
        if server is None or executor is None:
            return
        with _new_threads() as started:
            done = server.stop(grace)
            finished = done.wait(grace + _JOIN_BOUND)
        executor.shutdown(wait=True)  # handlers end: SLEEP wakes when its call is cancelled
        deadline = time.monotonic() + _JOIN_BOUND
        threads = [*self._threads, *started]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._server = self._executor = None
        self._threads = []
        del server, executor
        if not finished or any(t.is_alive() for t in threads):  # pragma: no cover
            raise RuntimeError("grpc test server did not stop")

    def restart(self, grace: float = 0.0) -> None:
        """``stop`` then ``start`` on the same port."""
        self.stop(grace)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The Python threads grpcio starts: ``server.start`` one polling its completion queue,
# ``server.stop(grace)`` one cancelling the calls left after ``grace``. Both end soon after
# the server stops; ``stop`` joins them so that none is left when it returns.
_GRPC_THREADS = ("(_serve)", "(cancel_all_calls_after_grace)")


@contextlib.contextmanager
def _new_threads() -> Iterator[list[threading.Thread]]:
    """Collects gRPC's Python threads started inside the block (not other threads)."""
    before = set(threading.enumerate())
    started: list[threading.Thread] = []
    try:
        yield started
    finally:
        started.extend(
            t for t in threading.enumerate() if t not in before and t.name.endswith(_GRPC_THREADS)
        )


# -- fixtures --------------------------------------------------------------------------


# Fixtures, named so that a test module can import them without shadowing its arguments:
#     from realservers import fixture_grpc_runtime, fixture_grpc_server, fixture_thrift_server


@pytest.fixture(scope="session", name="grpc_runtime")
def fixture_grpc_runtime() -> Iterator[None]:
    """Holds gRPC's process-wide runtime (native threads, 4 descriptors) for the session.

    An idle channel that never connects: it only keeps the runtime from being
    torn down and set up again around every test, which would put its
    descriptors inside each test's leak baseline window.
    """
    with grpc.insecure_channel("127.0.0.1:9"):
        yield


@pytest.fixture(name="thrift_server")
def fixture_thrift_server() -> Iterator[ThriftServer]:
    with ThriftServer() as server:
        yield server
    assert not server.errors


@pytest.fixture(name="grpc_server")
def fixture_grpc_server(grpc_runtime: None) -> Iterator[GrpcServer]:
    with GrpcServer() as server:
        yield server
