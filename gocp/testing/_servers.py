"""Loopback test servers: echo and request/reply, restartable on the same port.

Each server runs one thread with a selector; every call from the test
(``stop``, ``restart``, ``kill_connections``...) returns within a bound and
leaves no thread or descriptor behind once ``stop`` or ``close`` returns.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections import Counter
from types import TracebackType
from typing import Literal, Self

__all__ = ["EchoServer", "RequestReplyServer"]

_JOIN_BOUND = 5.0
Fault = Literal["reset", "close", "stall"]


def close_socket(sock: socket.socket, *, reset: bool = False) -> None:
    """Close ``sock``; with ``reset`` the peer gets an RST (``SO_LINGER`` on, 0 s), not a FIN."""
    if reset:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Conn:
    __slots__ = ("inbox", "outbox", "sock", "stalled")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.stalled = False


class _LoopServer:
    """A single-threaded selector server; subclasses say what to answer."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self._pending: list[tuple[str, bool]] = []
        self._stopping = False
        self.accepted = 0

    # -- control, from the test's thread ------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; the port stays the same across restarts."""
        return self._host, self._port

    @property
    def address_text(self) -> str:
        """``address`` as ``"host:port"`` (``"[v6]:port"`` for IPv6)."""
        return (
            f"{self._host}:{self._port}"
            if ":" not in self._host
            else f"[{self._host}]:{self._port}"
        )

    @property
    def running(self) -> bool:
        """Whether the server thread runs (between ``start`` and ``stop``)."""
        return self._thread is not None

    @property
    def active(self) -> int:
        """Connections currently open on the server side."""
        with self._lock:
            return len(self._conns)

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop) and serve in a thread."""
        if self._thread is not None:
            return self
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
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
        self._wake_r.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"gocp-test-server-{self._port}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, *, reset: bool = False) -> None:
        """Close the listener and every connection (RST if ``reset``), then join the thread.

        New connections are refused until ``start``. Idempotent.
        """
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
            self._pending.append(("stop", reset))
        self._wake()
        thread.join(_JOIN_BOUND)
        if thread.is_alive():  # pragma: no cover - a bug in the loop
            raise RuntimeError("test server thread did not stop")
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    def restart(self, *, reset: bool = False) -> None:
        """``stop`` then ``start`` on the same port."""
        self.stop(reset=reset)
        self.start()

    close = stop

    def kill_connections(self, *, reset: bool = False) -> None:
        """Close the current connections (RST if ``reset``), keep listening."""
        with self._lock:
            self._pending.append(("kill", reset))
        self._wake()
        self._sync()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop -----------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

    def _sync(self) -> None:
        """Wait until the loop has handled every pending command."""
        done = threading.Event()
        with self._lock:
            self._pending.append(("sync", False))
            self._sync_event = done
        self._wake()
        if self._thread is not None and not done.wait(_JOIN_BOUND):  # pragma: no cover
            raise RuntimeError("test server did not answer")

    def _run(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None
        assert wake is not None
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(wake, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, events in sel.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept(sel, listener)
                    elif key.data == "wake":
                        try:
                            wake.recv(4096)
                        except OSError:
                            pass
                    else:
                        self._service(sel, key.data, events)
                if self._commands(sel):
                    return
        finally:
            sel.close()
            listener.close()
            with self._lock:
                conns = list(self._conns.values())
                self._conns.clear()
            for conn in conns:
                conn.sock.close()

    def _commands(self, sel: selectors.BaseSelector) -> bool:
        with self._lock:
            pending, self._pending = self._pending, []
        for command, reset in pending:
            if command in ("stop", "kill"):
                with self._lock:
                    conns = list(self._conns.values())
                    self._conns.clear()
                for conn in conns:
                    sel.unregister(conn.sock)
                    close_socket(conn.sock, reset=reset)
                if command == "stop":
                    return True
            elif command == "sync":
                self._sync_event.set()
        return False

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        with self._lock:
            self._conns[sock] = conn
            self.accepted += 1
        sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, sel: selectors.BaseSelector, conn: _Conn, *, reset: bool = False) -> None:
        with self._lock:
            self._conns.pop(conn.sock, None)
        sel.unregister(conn.sock)
        close_socket(conn.sock, reset=reset)

    def _service(self, sel: selectors.BaseSelector, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except OSError:
                self._close(sel, conn)
                return
            if not data:
                self._close(sel, conn)
                return
            if conn.stalled:
                return  # read and ignore: a peer that never answers
            conn.inbox += data
            action = self._handle(conn)
            if action == "reset":
                self._close(sel, conn, reset=True)
                return
            if action == "close":
                self._close(sel, conn)
                return
            if action == "stall":
                conn.stalled = True
        if conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(sel, conn)
                return
            del conn.outbox[:sent]
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        sel.modify(conn.sock, wanted, conn)

    def _handle(self, conn: _Conn) -> Fault | None:
        """Consume ``conn.inbox``, append replies to ``conn.outbox``; may ask for a fault."""
        raise NotImplementedError


class EchoServer(_LoopServer):
    """Sends back every byte it receives. ``EchoServer().start()`` or use ``with``."""

    def _handle(self, conn: _Conn) -> Fault | None:
        conn.outbox += conn.inbox
        conn.inbox.clear()
        return None


class RequestReplyServer(_LoopServer):
    """A line protocol that counts the side effects of each request.

    A request is one line ``b"<id> <anything>\\n"``; the server applies it
    (``applied[id] += 1``) and answers ``b"<id> <times applied>\\n"``. A test
    can tell whether a request was applied zero, one or two times.

    ``fail_next(n, fault, apply=True)`` makes the next ``n`` requests fail
    after being read (and applied, unless ``apply=False``): ``"reset"``
    (RST), ``"close"`` (FIN) or ``"stall"`` (never answer).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._applied: Counter[str] = Counter()
        self._faults: list[tuple[Fault, bool]] = []

    def fail_next(self, count: int = 1, fault: Fault = "reset", *, apply: bool = True) -> None:
        """Make the next ``count`` requests fail after being read: ``"reset"`` (RST),
        ``"close"`` (FIN) or ``"stall"`` (never answer, keep the connection).

        Each is applied first (counted by ``applied``) unless ``apply=False``.
        Faults queue up: a second call adds to the first.
        """
        with self._lock:
            self._faults.extend([(fault, apply)] * count)

    def applied(self, request_id: str) -> int:
        """How many times the request ``request_id`` was applied."""
        with self._lock:
            return self._applied[request_id]

    def applied_counts(self) -> dict[str, int]:
        """A copy of how many times each request id was applied (ids never applied are
        absent)."""
        with self._lock:
            return dict(self._applied)

    def duplicates(self) -> dict[str, int]:
        """Requests applied more than once."""
        with self._lock:
            return {key: n for key, n in self._applied.items() if n > 1}

    def _handle(self, conn: _Conn) -> Fault | None:
        while True:
            end = conn.inbox.find(b"\n")
            if end < 0:
                return None
            line = bytes(conn.inbox[:end])
            del conn.inbox[: end + 1]
            request_id = line.split(b" ", 1)[0].decode("ascii", "replace")
            with self._lock:
                fault, apply = self._faults.pop(0) if self._faults else (None, True)
                if apply:
                    self._applied[request_id] += 1
                times = self._applied[request_id]
            if fault is not None:
                return fault
            conn.outbox += f"{request_id} {times}\n".encode()
