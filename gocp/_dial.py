"""Connect to a host name that may resolve to several addresses, within one deadline.

``connect`` implements the connection part of RFC 8305 ("Happy Eyeballs v2"): the name is
resolved once, the addresses are put in the order of RFC 8305 section 4 (duplicates removed,
address families interleaved starting with the family of the resolver's first answer), and
attempts are started one after another: the next one when the current one fails, or when
``attempt_delay`` passes without a connection, while earlier attempts keep running. The
first attempt to connect wins.

Guarantees:

- Every wait is bounded by ``deadline`` (an absolute time on ``clock``). Name resolution is
  the exception: ``resolve`` is a blocking call that cannot be interrupted, so its time
  counts against the deadline but may overrun it; when the deadline has passed once it
  returns, ``TimeoutError`` is raised before any socket is created.
- The socket returned is connected, in blocking mode, with no timeout and no option set:
  the caller configures it.
- Every other socket this call created is closed before it returns or raises, on every
  path, including ``BaseException`` (``KeyboardInterrupt``) and a malformed answer from
  ``resolve``. No thread is started.
- Errors: ``socket.gaierror`` from ``resolve`` propagates unchanged. When every attempt
  fails, the error of the last attempt is raised, with its type and errno (for example
  ``ConnectionRefusedError``) and a message naming ``host:port`` and, when several
  addresses were tried, each address with its error. When the deadline passes first,
  ``TimeoutError`` (errno ``ETIMEDOUT``) names ``host:port``, the time allowed (from the
  call to the deadline) and the addresses still pending. A malformed answer from
  ``resolve`` raises ``TypeError`` or ``ValueError`` before any socket is created, an
  empty one ``OSError``.

``handshake`` then wraps the connected socket in TLS and completes the handshake by the same
deadline: every wait for the peer is bounded by it, and the socket is closed on any failure.
"""

from __future__ import annotations

__all__ = [
    "all_failed",
    "checked_infos",
    "connect",
    "handshake",
    "order_addresses",
    "timed_out",
]

import errno
import math
import os
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

AddrInfo = tuple[Any, ...]
"""One ``getaddrinfo`` entry: ``(family, type, proto, canonname, sockaddr)``."""

# poll() has no descriptor-number limit and, unlike epoll, needs no descriptor of its own.
_Selector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)

# connect_ex() results meaning "the connection proceeds in the background".
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR})

# Bound on one wait, so that a far (or infinite) deadline never overflows poll()'s timeout.
_MAX_WAIT = 3600.0


def order_addresses(infos: Iterable[AddrInfo]) -> list[AddrInfo]:
    """Return ``infos`` in RFC 8305 section 4 order, without duplicates.

    The first entry stays first; then address families alternate, in the order in which
    they first appear, each family keeping the resolver's order. Two entries are
    duplicates when they have the same family and socket address.
    """
    seen: set[tuple[Any, Any]] = set()
    by_family: dict[int, deque[AddrInfo]] = {}
    for info in infos:
        key = (info[0], info[4])
        if key in seen:
            continue
        seen.add(key)
        by_family.setdefault(info[0], deque()).append(info)
    ordered: list[AddrInfo] = []
    queues = list(by_family.values())  # a dict keeps first-appearance order
    while queues:
        for queue in queues:
            ordered.append(queue.popleft())
        queues = [queue for queue in queues if queue]
    return ordered


def _checked(host: str, port: int, infos: object) -> list[AddrInfo]:
    """Return the resolver's answer as a list, or raise ``TypeError``/``ValueError``."""
    if not isinstance(infos, list | tuple):
        raise TypeError(
            f"connect to {_hostport(host, port)}: resolve returned "
            f"{type(infos).__name__}, expected a list of getaddrinfo tuples"
        )
    for info in infos:
        if not (
            isinstance(info, tuple)
            and len(info) == 5
            and all(isinstance(field, int) and not isinstance(field, bool) for field in info[:3])
            and isinstance(info[4], tuple)
            and len(info[4]) >= 2
            and isinstance(info[4][0], str)
            and isinstance(info[4][1], int)
        ):
            raise TypeError(
                f"connect to {_hostport(host, port)}: resolve returned {info!r}, "
                "expected (family, type, proto, canonname, sockaddr)"
            )
        if info[1] != socket.SOCK_STREAM:
            raise ValueError(
                f"connect to {_hostport(host, port)}: resolve returned {info!r}, "
                "expected a SOCK_STREAM address"
            )
    return list(infos)


def _hostport(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _label(info: AddrInfo) -> str:
    sockaddr = info[4]
    host = str(sockaddr[0])
    if info[0] == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3] and "%" not in host:
        host = f"{host}%{sockaddr[3]}"
    return _hostport(host, sockaddr[1])


def _describe(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror is not None:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


def _all_failed(host: str, port: int, failures: list[tuple[AddrInfo, OSError]]) -> OSError:
    """The error to raise when every attempt failed: the last one's type and errno."""
    info, last = failures[-1]
    target = _hostport(host, port)
    if len(failures) == 1:
        where = target if _label(info) == target else f"{target} ({_label(info)})"
        message = f"connect to {where} failed: {last.strerror or _describe(last)}"
    else:
        tried = "; ".join(f"{_label(i)}: {_describe(e)}" for i, e in failures)
        message = f"connect to {target} failed, {len(failures)} addresses tried: {tried}"
    if last.errno is None:
        return type(last)(message)
    try:
        return type(last)(last.errno, message)
    except TypeError:  # an OSError subclass with another signature
        return OSError(last.errno, message)


def _timed_out(
    host: str,
    port: int,
    *,
    allowed: float,
    pending: list[AddrInfo] | None,
    untried: Iterable[AddrInfo],
    failures: list[tuple[AddrInfo, OSError]],
) -> TimeoutError:
    parts = [f"connect to {_hostport(host, port)} timed out after {allowed:.3g}s"]
    if pending is None:
        parts.append("the deadline passed during name resolution")
    elif pending:
        parts.append("pending: " + ", ".join(_label(info) for info in pending))
    untried = list(untried)
    if untried:
        parts.append("not tried: " + ", ".join(_label(info) for info in untried))
    if failures:
        parts.append("failed: " + "; ".join(f"{_label(i)}: {_describe(e)}" for i, e in failures))
    return TimeoutError(errno.ETIMEDOUT, "; ".join(parts))


def connect(
    host: str,
    port: int,
    deadline: float,
    *,
    resolve: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo,
    clock: Callable[[], float] = time.monotonic,
    attempt_delay: float = 0.25,
) -> socket.socket:
    """Connect to ``host:port`` by ``deadline`` (absolute, on ``clock``); see the module doc.

    ``resolve(host, port, type=socket.SOCK_STREAM)`` is called once, not bounded by the
    deadline. ``attempt_delay`` is RFC 8305's "Connection Attempt Delay".
    """
    if math.isnan(deadline):
        raise ValueError("connect: deadline is NaN")
    if not attempt_delay >= 0:
        raise ValueError(f"connect: attempt_delay must be >= 0, got {attempt_delay!r}")
    started = clock()
    candidates = deque(
        order_addresses(_checked(host, port, resolve(host, port, type=socket.SOCK_STREAM)))
    )
    if not candidates:
        raise OSError(f"connect to {_hostport(host, port)}: resolve returned no address")
    if clock() >= deadline:
        raise _timed_out(
            host, port, allowed=deadline - started, pending=None, untried=candidates, failures=[]
        )

    failures: list[tuple[AddrInfo, OSError]] = []
    pending: dict[socket.socket, AddrInfo] = {}  # running attempts, in start order
    next_start = -math.inf  # when the next attempt starts, at the latest; now for the first
    selector = _Selector()

    def failed(sock: socket.socket | None, info: AddrInfo, exc: OSError) -> None:
        nonlocal next_start
        if sock is not None:
            if sock in selector.get_map():
                selector.unregister(sock)  # before close: the number may be reused at once
            sock.close()
            pending.pop(sock, None)  # after close: until then the finally clause owns it
        failures.append((info, exc))
        next_start = -math.inf  # a failed attempt starts the next one at once

    try:
        # A statement before the loop: in CPython 3.11 and 3.12, an interrupt at a
        # ``continue`` that jumps back to a loop opening the ``try`` would find no
        # handler and skip the ``finally`` that closes the attempts.
        winner: socket.socket | None = None
        while True:
            now = clock()
            if now >= deadline:
                raise _timed_out(
                    host,
                    port,
                    allowed=deadline - started,
                    pending=list(pending.values()),
                    untried=candidates,
                    failures=failures,
                )
            if candidates and (not pending or now >= next_start):
                info = candidates.popleft()
                next_start = now + attempt_delay
                try:
                    sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
                except OSError as exc:
                    failed(None, info, exc)
                    continue
                pending[sock] = info
                try:
                    sock.setblocking(False)
                    code = sock.connect_ex(info[4])
                except OSError as exc:
                    failed(sock, info, exc)
                    continue
                if code == 0:
                    winner = sock
                elif code in _IN_PROGRESS:
                    selector.register(sock, selectors.EVENT_WRITE)
                else:
                    failed(sock, info, OSError(code, os.strerror(code)))
            elif not pending:  # nothing running, nothing left to try
                raise _all_failed(host, port, failures)
            else:
                wait_until = min(deadline, next_start) if candidates else deadline
                timeout = min(max(wait_until - now, 0.0), _MAX_WAIT)
                ready = {key.fileobj for key, _events in selector.select(timeout)}
                # Several may be ready at once: settle them in start order.
                for sock in [s for s in pending if s in ready]:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        winner = sock
                        break
                    failed(sock, pending[sock], OSError(code, os.strerror(code)))
            if winner is not None:
                winner.setblocking(True)  # blocking, no timeout
                return winner
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    finally:
        try:
            selector.close()
            for sock in pending:
                if sock is not winner:
                    sock.close()
        except BaseException:  # interrupted while returning the winner: it is nobody's
            if winner is not None:
                winner.close()
            raise


def handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str | None,
    deadline: float,
    *,
    label: str,
    clock: Callable[[], float] = time.monotonic,
) -> ssl.SSLSocket:
    """Wrap the connected ``sock`` in TLS and complete the handshake by ``deadline`` (on ``clock``).

    Returns the ``ssl.SSLSocket`` (it owns the descriptor now), in blocking mode with no timeout.
    ``sock`` (or what wraps it) is closed on every failure, ``BaseException`` included.
    Errors are those of the handshake, unchanged: ``ssl.SSLCertVerificationError`` for a
    certificate that does not verify (its message says why: an unknown authority, a host name
    mismatch, an expired certificate), another ``ssl.SSLError`` or ``OSError`` for a peer that
    is not a TLS server or hung up. When the deadline passes first, ``TimeoutError`` (errno
    ``ETIMEDOUT``) names ``label`` and the time allowed.
    """
    started = clock()
    try:
        tls = context.wrap_socket(
            sock, server_hostname=server_hostname, do_handshake_on_connect=False
        )
    except BaseException:
        sock.close()  # a no-op once wrap_socket took the descriptor over (it closes its own)
        raise
    try:
        tls.setblocking(False)
        with _Selector() as selector:
            selector.register(tls, selectors.EVENT_READ)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    events = selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    events = selectors.EVENT_WRITE
                now = clock()
                if now >= deadline:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"TLS handshake with {label} timed out after "
                        f"{max(deadline - started, 0.0):.3g}s",
                    )
                selector.modify(tls, events)
                selector.select(min(deadline - now, _MAX_WAIT))
        tls.setblocking(True)
        return tls
    except BaseException:
        tls.close()
        raise


# The pieces the asyncio connect (gocp._aio_connect) shares with ``connect``.
checked_infos = _checked
all_failed = _all_failed
timed_out = _timed_out
