"""The echo server (a subprocess, so it never competes with the benchmark for the GIL),
and client sockets configured as gocp configures its members."""

from __future__ import annotations

import socket
import subprocess
import sys

MSG = bytes(range(64))  # the round trip's message
IO_TIMEOUT = 30.0  # gocp's default io_timeout; every socket in the round trips gets it

_ECHO_SERVER = r"""
import os, selectors, socket, sys, threading

tls = None
if len(sys.argv) > 2:  # TLS: argv[2] is a PEM file with the key and the certificate chain
    import ssl
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[2])

def serve(conn):  # threads mode: one blocking thread per connection
    try:
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
print(listener.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)  # EOF: the benchmark is done (or died)
threads = sys.argv[1] == "threads" or tls is not None
threading.stack_size(256 * 1024)
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock is sys.stdin:
            os._exit(0)
        if sock is listener:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if threads:
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
            else:
                sel.register(conn, selectors.EVENT_READ)
            continue
        try:
            data = sock.recv(65536)
            if data:
                sock.sendall(data)
                continue
        except OSError:
            pass
        sel.unregister(sock)
        sock.close()
"""

SERVERS = {
    "epoll": "a single-threaded selector echo server in a subprocess",
    "threads": "a blocking thread-per-connection echo server in a subprocess",
}


class EchoProcess:
    """The echo server, in a child process so that it never competes for our GIL."""

    def __init__(self, mode: str, *args: str) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ECHO_SERVER, mode, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = ("127.0.0.1", int(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)


#: The echo server the scenarios share (round trips, memory), started by the first to ask.
_shared: EchoProcess | None = None


def shared_echo(mode: str) -> EchoProcess:
    """The shared echo server, started in ``mode`` (a key of SERVERS) if not yet running."""
    global _shared
    if _shared is None:
        _shared = EchoProcess(mode)
    return _shared


def close_shared_echo() -> None:
    """Stop the shared echo server, if one was started."""
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def make_sock(address: tuple[str, int], timeout: float | None = IO_TIMEOUT) -> socket.socket:
    """A socket configured as gocp configures its members (TCP_NODELAY, timeout)."""
    sock = socket.create_connection(address, timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def close_socks(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
