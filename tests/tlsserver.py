"""A TLS echo server on loopback, with certificates made by ``trustme``, for tests of TLS pools.

``TLSEchoServer(context)`` listens on 127.0.0.1 (a free port, kept across restarts) and
echoes what each connection sends, one thread per connection. The test chooses how
connections end (``stop``, ``restart``, ``kill_connections``):

- ``"close_notify"``: a TLS ``close_notify`` alert, then a FIN (a clean TLS shutdown);
- ``"fin"``: a FIN with no ``close_notify`` (a server that was killed);
- ``"reset"``: an RST.

``stall = True`` makes it read requests and never answer (for ``io_timeout`` and
``abort``). ``handshakes`` counts completed handshakes, ``server_names`` records the name
each client sent (SNI; ``None`` when it sent none), ``failed_handshakes`` the errors of those
that failed (a client that rejected the certificate). Every call returns within a bound and
leaves no thread or descriptor behind once ``stop`` returns.

``certificates()`` makes a CA and a server certificate for ``localhost``, ``127.0.0.1`` and
``::1`` (or the names given); ``client_context(ca)`` a client context that trusts ``ca``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
from types import TracebackType
from typing import Literal, Self

import trustme

__all__ = ["Ending", "TLSEchoServer", "certificates", "client_context", "server_context"]

_JOIN_BOUND = 5.0
Ending = Literal["close_notify", "fin", "reset"]


def certificates(*names: str) -> tuple[trustme.CA, trustme.LeafCert]:
    """A new CA and a server certificate it signed for ``names`` (default: loopback names)."""
    ca = trustme.CA()
    return ca, ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")))


def server_context(
    cert: trustme.LeafCert, *, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context (host names checked, certificates required) trusting only ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    return context


class _Conn:
    __slots__ = ("ending", "sock", "thread", "wake_r", "wake_w")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.wake_r, self.wake_w = socket.socketpair()
        self.ending: Ending = "fin"
        self.thread: threading.Thread | None = None


class TLSEchoServer:
    """See the module docstring."""

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.stall = False
        self.accepted = 0
        self.handshakes = 0
        self.server_names: list[str | None] = []
        self.failed_handshakes: list[BaseException] = []
        self.received = 0  # application bytes received, all connections together
        self.errors: list[BaseException] = []  # bugs of the server itself: a test sees none
        self.context = context
        context.sni_callback = self._sni

    # -- state ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._conns)

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        with self._lock:
            self.server_names.append(name)

    # -- control ----------------------------------------------------------------------

    def start(self) -> Self:
        if self._acceptor is not None:
            return self
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"tls-accept-{self._port}", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, ending: Ending = "fin") -> None:
        """Stop listening and end every connection as ``ending`` says; join every thread."""
        acceptor = self._acceptor
        if acceptor is not None:
            assert self._wake_w is not None
            self._wake_w.send(b"x")
            acceptor.join(_JOIN_BOUND)
            if acceptor.is_alive():  # pragma: no cover - a bug in the accept loop
                raise RuntimeError("TLS test server: accept thread did not stop")
            self._acceptor = None
            for sock in (self._wake_r, self._wake_w, self._listener):
                if sock is not None:
                    sock.close()
            self._wake_r = self._wake_w = self._listener = None
        self.kill_connections(ending)

    def restart(self, ending: Ending = "fin") -> None:
        self.stop(ending)
        self.start()

    def kill_connections(self, ending: Ending = "fin") -> None:
        """End every current connection as ``ending`` says (still listening)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.ending = ending
            with contextlib.suppress(OSError):
                conn.wake_w.send(b"x")
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(_JOIN_BOUND)
                if conn.thread.is_alive():  # pragma: no cover
                    raise RuntimeError("TLS test server: connection thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the threads ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None
        assert wake is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(listener, selectors.EVENT_READ)
                sel.register(wake, selectors.EVENT_READ)
                while True:
                    ready = [key.fileobj for key, _ in sel.select()]
                    if wake in ready:
                        return
                    try:
                        raw, _ = listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    raw.setblocking(False)
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock = self.context.wrap_socket(
                        raw, server_side=True, do_handshake_on_connect=False
                    )
                    conn = _Conn(sock)
                    conn.thread = threading.Thread(
                        target=self._serve, args=(conn,), name="tls-conn", daemon=True
                    )
                    with self._lock:
                        self.accepted += 1
                        self._conns.append(conn)
                    conn.thread.start()
        except BaseException as exc:  # pragma: no cover - a bug; the test sees it in errors
            self.errors.append(exc)

    def _serve(self, conn: _Conn) -> None:
        sock = conn.sock
        handshaken = False
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(conn.wake_r, selectors.EVENT_READ)
                sel.register(sock, selectors.EVENT_READ)
                while True:
                    if not (handshaken and sock.pending()):
                        ready = [key.fileobj for key, _ in sel.select()]
                        if conn.wake_r in ready:
                            return
                    if not handshaken:
                        try:
                            sock.do_handshake()
                        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            continue
                        except OSError as exc:  # the client rejected us, or left
                            with self._lock:
                                self.failed_handshakes.append(exc)
                            conn.ending = "fin"
                            return
                        handshaken = True
                        with self._lock:
                            self.handshakes += 1
                        continue
                    try:
                        data = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    except OSError:
                        conn.ending = "fin"
                        return
                    if not data:  # the client closed
                        conn.ending = "fin"
                        return
                    with self._lock:
                        self.received += len(data)
                    if not self.stall:
                        self._send(sock, data)
        except BaseException as exc:  # pragma: no cover - a bug; the test sees it in errors
            self.errors.append(exc)
        finally:
            self._end(conn, handshaken)

    @staticmethod
    def _send(sock: ssl.SSLSocket, data: bytes) -> None:
        sock.settimeout(_JOIN_BOUND)
        try:
            sock.sendall(data)
        finally:
            sock.setblocking(False)

    def _end(self, conn: _Conn, handshaken: bool) -> None:
        sock = conn.sock
        with contextlib.suppress(OSError):
            if conn.ending == "close_notify" and handshaken:
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    sock.unwrap()  # sends close_notify; does not wait for the client's
            elif conn.ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self._conns.remove(conn)
            sock.close()
            conn.wake_r.close()
            conn.wake_w.close()
