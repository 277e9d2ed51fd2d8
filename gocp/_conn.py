"""PersistentConn: a pool member that owns one TCP connection and redials it when it breaks."""

from __future__ import annotations

import errno
import math
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING

from ._address import Address
from ._config import check_timeout
from ._errors import ConnectionBroken, IOTimeout

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ._pool import Pool

__all__ = ["PersistentConn"]

Socket = socket.socket

_monotonic = time.monotonic
_SO_KEEPALIVE_OPTS = [
    name for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT") if hasattr(socket, name)
]


#: On 64-bit little-endian Linux a member's ``io_timeout`` is the kernel's SO_RCVTIMEO and
#: SO_SNDTIMEO on a blocking socket: each recv or send is one system call. A Python socket
#: timeout polls before every call instead (two system calls, two GIL hand-offs).
#: Little-endian only: where tv_usec is an int (sparc64) a big-endian long would read as 0.
_KERNEL_TIMEOUTS = (
    sys.platform == "linux"
    and struct.calcsize("@l") == 8
    and sys.byteorder == "little"
    and hasattr(socket, "SO_RCVTIMEO")
)
_TIMEVAL = struct.Struct("@ll")  # struct timeval: tv_sec, tv_usec (long, or int + padding)
_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


def _timeval(seconds: float | None) -> bytes:
    """``seconds`` as a ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO; zero means no bound,
    so a positive bound is rounded up to at least one microsecond."""
    if seconds is None:
        return _TIMEVAL.pack(0, 0)
    whole = int(seconds)
    micro = math.ceil((seconds - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    if not whole and not micro:
        micro = 1
    return _TIMEVAL.pack(whole, micro)


def _set_kernel_timeout(sock: Socket, seconds: float | None) -> None:
    value = _timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _interval_timer_armed() -> bool:
    """Whether a periodic interval timer is armed (``signal.setitimer`` with an interval,
    as sampling profilers arm one).

    A signal interrupts a kernel-timed wait and Python restarts it with the
    whole timeout again, so signals that keep coming could stretch the wait
    without end; Python's own timeouts keep one deadline across restarts. A
    one-shot alarm (``pytest-timeout``, a request deadline) restarts a wait
    at most once, so it does not count.
    """
    return any(
        signal.getitimer(which)[1] > 0
        for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
    )


_TIMER_RECHECK = 1.0  # seconds between two reads of the interval timers
_timer_cache = [0.0, False]  # [when to read them again, whether one was armed]


def _timers_armed(fresh: bool = False) -> bool:
    """``_interval_timer_armed()``, read again at most every ``_TIMER_RECHECK`` seconds."""
    now = _monotonic()
    if fresh or now >= _timer_cache[0]:
        _timer_cache[1] = _interval_timer_armed()
        _timer_cache[0] = now + _TIMER_RECHECK
    return bool(_timer_cache[1])


def kernel_timeout(sock: Socket) -> tuple[float | None, float | None]:
    """The (receive, send) bounds the kernel applies to a blocking ``sock``; ``None``: none."""
    bounds = []
    for name in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        whole, micro = _TIMEVAL.unpack(sock.getsockopt(socket.SOL_SOCKET, name, _TIMEVAL.size))
        bounds.append(whole + micro / 1e6 if whole or micro else None)
    return bounds[0], bounds[1]


_TCP_INFO = getattr(socket, "TCP_INFO", None)
_ESTABLISHED = b"\x01"  # tcpi_state, the first byte of Linux's struct tcp_info
_IPPROTO_TCP = socket.IPPROTO_TCP


def _stale_by_poll(sock: Socket) -> bool:
    """True if the peer closed or reset ``sock`` (or it failed) while it sat idle,
    where Linux's TCP_INFO is missing: poll without waiting (any readable event means
    EOF, an error, or unsolicited bytes: all unsafe to send after)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, errored = select.select([sock], [], [sock], 0)
    return bool(readable or errored)


class PersistentConn:
    """One member of a ``gocp.Pool``: a connected-socket look-alike that survives breaks.

    It is lent by ``Pool.get`` and must be given back with ``Pool.put``.
    Its methods behave like a connected socket's, with these differences:

    - The socket is made on first use, and again after a break: an I/O
      error or the peer closing raises ``gocp.ConnectionBroken`` (the
      ``OSError`` as ``__cause__``; a timeout raises ``gocp.IOTimeout``, both
      ``ConnectionBroken`` and ``TimeoutError``), the socket is dropped, and
      the next operation dials a new one. The failed operation is never
      re-sent: the caller decides whether its request is safe to repeat.
    - Dialling failures raise ``gocp.DialError``; until the pool's backoff
      delay has passed, operations raise ``DialError`` at once (with
      ``retry_in``) instead of dialling.
    - Before the first send of each lend, a connection that the peer closed
      while it sat idle (a server restart) is replaced by a new one. Nothing
      had been sent on it, so this is safe; the caller never sees it.
    - ``recv`` never returns ``b""`` for a closed peer: it raises.
    - ``settimeout`` lasts until the member is put back; the pool then
      restores its ``io_timeout``.
    - On 64-bit little-endian Linux the kernel keeps the timeout (SO_RCVTIMEO and
      SO_SNDTIMEO on a blocking socket), so each send or recv is one system
      call; a Python socket timeout would poll before every call. It bounds
      each wait for progress: a large ``sendall`` that keeps moving may take
      longer in all. ``conn.socket`` switches the socket to an ordinary Python
      timeout until the member is put back. While a periodic interval timer
      is armed (``signal.setitimer`` with an interval, as sampling profilers
      arm one) members use Python timeouts instead, since each signal would
      restart the kernel's wait from zero; this is checked when a member
      dials and, at most once a second, at the first send of a lend. Other
      signals that a handler catches and that keep arriving at the thread
      blocked in a call (faster than the timeout) can stretch its wait.
    """

    __module__ = "gocp"
    __slots__ = (
        "__weakref__",
        "_aborted",
        "_dirty",
        "_exposed",
        "_fresh",
        "_holder",
        "_kernel",
        "_lent",
        "_mutex",
        "_pool",
        "_sock",
        "_timeout",
        "index",
    )

    def __init__(self, pool: Pool, index: int) -> None:
        self._pool = pool
        self.index = index
        self._lent = False
        self._fresh = False  # lent and not yet used since: check for staleness first
        self._aborted = False  # abort() shut the current socket down
        self._holder = 0  # thread ident of the last borrower (for fork)
        self._sock: Socket | None = None
        self._timeout = pool.options.io_timeout
        self._dirty = False  # this lend changed the timeout or exposed the socket: put restores
        self._exposed = False  # the raw socket was handed out: it uses Python's timeouts
        self._kernel = False  # the socket's timeout is the kernel's (see _configure)
        self._mutex = threading.Lock()  # orders _drop against abort(); never held during I/O

    # -- what the caller sees -------------------------------------------------

    @property
    def address(self) -> Address:
        """The ``(host, port)`` this member connects to."""
        return self._pool.address

    @property
    def socket(self) -> Socket | None:
        """The live socket, or ``None`` while disconnected (Go's ``OriginalConn``).

        Use it for options or for I/O the member does not wrap; do not close it
        (call ``Pool.put(conn, broken=True)`` instead), and set its timeout
        with ``conn.settimeout``. Until the member is put back the socket has
        an ordinary Python timeout, so a stall raises ``TimeoutError`` there
        too (and ``makefile`` readers behave as usual). Touching it counts as
        using the member: a ``with pool.connection()`` block that then raises
        puts the member back broken.
        """
        self._fresh = False
        sock = self._sock
        if sock is not None:
            self._dirty = True  # whatever the caller sets on it is undone at put
            if self._kernel:
                self._use_python_timeouts(sock)
                self._exposed = True
        return sock

    @property
    def connected(self) -> bool:
        """Whether the member holds a socket now (it may still be dead until used)."""
        return self._sock is not None

    def __repr__(self) -> str:
        state = "lent" if self._lent else "idle"
        link = "connected" if self._sock is not None else "disconnected"
        return f"<gocp.PersistentConn #{self.index} {self._pool.address_text} {state} {link}>"

    def settimeout(self, timeout: float | None) -> None:
        """Bound each wait of this lend's I/O (seconds > 0, or ``None`` for no bound)."""
        seconds = check_timeout("timeout", timeout)
        if seconds == 0:
            raise ValueError("timeout: must be > 0 or None (non-blocking mode is not supported)")
        self._timeout = seconds
        self._dirty = True
        sock = self._sock
        if sock is not None:
            self._apply_timeout(sock)

    def gettimeout(self) -> float | None:
        """The current I/O timeout in seconds, or ``None``."""
        return self._timeout

    def sendall(self, data: ReadableBuffer) -> None:
        """Send all of ``data``; raises ``ConnectionBroken`` or ``DialError`` (see class doc)."""
        sock = self._sock
        if sock is None or self._fresh:
            sock = self._for_send()
        try:
            if self._kernel:  # the kernel bounds each send: each wait for progress
                sock.sendall(data)
            else:  # a Python timeout would bound the whole sendall: bound each step
                with memoryview(data) as whole, whole.cast("B") as view:
                    sent, total = 0, view.nbytes
                    while sent < total:
                        sent += sock.send(view[sent:])
        except OSError as exc:
            raise self._broke("sendall", exc)  # noqa: B904 (_broke sets the cause)

    def send(self, data: ReadableBuffer) -> int:
        """Send some of ``data``; return how many bytes were sent.

        With kernel timeouts (see the class doc) the socket is blocking, so this
        waits, as a blocking socket's ``send`` does, until all of ``data`` is
        queued or a wait for buffer space runs past the timeout.
        """
        sock = self._sock
        if sock is None or self._fresh:
            sock = self._for_send()
        try:
            return sock.send(data)
        except OSError as exc:
            raise self._broke("send", exc)  # noqa: B904 (_broke sets the cause)

    def recv(self, bufsize: int) -> bytes:
        """Receive up to ``bufsize`` bytes; a peer that closed raises ``ConnectionBroken``."""
        sock = self._sock
        if sock is None:
            sock = self._dial()
        self._fresh = False
        try:
            data = sock.recv(bufsize)
        except OSError as exc:
            raise self._broke("recv", exc)  # noqa: B904 (_broke sets the cause)
        if not data and bufsize:
            raise self._broke("recv", None)
        return data

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0) -> int:
        """Receive into ``buffer``; a peer that closed raises ``ConnectionBroken``."""
        sock = self._sock
        if sock is None:
            sock = self._dial()
        self._fresh = False
        try:
            count = sock.recv_into(buffer, nbytes)
        except OSError as exc:
            raise self._broke("recv_into", exc)  # noqa: B904 (_broke sets the cause)
        if not count and (nbytes or memoryview(buffer).nbytes):
            raise self._broke("recv_into", None)
        return count

    def abort(self) -> None:
        """Break the connection now, from any thread; the holder's blocked I/O wakes.

        A watchdog uses it to cancel a stuck request: ``shutdown`` wakes a
        thread blocked in ``recv`` (a plain ``close`` would not), which then
        raises ``ConnectionBroken``; the member redials on its next use.
        Does nothing while disconnected.
        """
        with self._mutex:
            sock = self._sock
            if sock is not None:
                self._aborted = True
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already shut down, or never fully connected

    # -- the machinery -----------------------------------------------------------

    def _for_send(self) -> Socket:
        """The socket to send on: dial if there is none; drop a stale one first."""
        sock = self._sock
        if sock is not None and self._fresh:
            self._fresh = False
            if (
                self._kernel
                and (_timer_cache[1] or _monotonic() >= _timer_cache[0])  # _timers_armed()'s
                and _timers_armed()  # fast path, inlined: this runs on every lend
            ):
                self._use_python_timeouts(sock)  # for this socket's life
            # On Linux, read the TCP state: getsockopt keeps the GIL, where a poll per
            # lend would hand the interpreter to another thread on every request.
            if _TCP_INFO is not None:
                try:
                    stale = sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, 1) != _ESTABLISHED
                except OSError:
                    stale = True
            else:
                stale = _stale_by_poll(sock)
            if stale:
                # Nothing of this lend was sent: a socket the peer closed or
                # reset while idle (a server restart) is replaced. Safe.
                self._drop()
                self._pool._event_stale(self)
                sock = None
        if sock is None:
            sock = self._dial()
        return sock

    def _dial(self) -> Socket:
        pool = self._pool
        options = pool.options
        started = pool._dial_permit(self)
        # From the permit on, every path reports an outcome, or the probe would stick.
        try:
            sock = _connect(pool.address, started + options.dial_timeout)
            try:
                self._configure(sock)
            except BaseException:
                sock.close()
                raise
            with self._mutex:
                self._sock = sock
            self._fresh = False
            pool._dial_succeeded(self)
            return sock
        except OSError as exc:
            raise pool._dial_failed(self, started, exc) from exc
        except BaseException:
            pool._dial_abandoned(self)  # e.g. KeyboardInterrupt mid-connect
            raise

    def _configure(self, sock: Socket) -> None:
        options = self._pool.options
        if options.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if options.keepalive is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            idle = max(1, int(options.keepalive))
            interval = max(1, idle // 3)
            values = {"TCP_KEEPIDLE": idle, "TCP_KEEPINTVL": interval, "TCP_KEEPCNT": 3}
            for name in _SO_KEEPALIVE_OPTS:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), values[name])
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                # Keepalive never probes while sent data waits for an ACK: bound that
                # too, so a request in flight to a vanished peer fails within the
                # same idle + 3 probes instead of the ~15 min retransmission limit.
                limit_ms = (idle + 3 * interval) * 1000
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, limit_ms)
        # Kernel timeouts, unless an interval timer's signals could keep restarting them
        # (read again at the first send of each lend, at most once a second).
        self._kernel = _KERNEL_TIMEOUTS and not _timers_armed(fresh=True)
        self._exposed = False
        if self._kernel:
            sock.settimeout(None)  # blocking: the kernel enforces the bound
        self._apply_timeout(sock)

    def _apply_timeout(self, sock: Socket) -> None:
        if self._kernel:
            _set_kernel_timeout(sock, self._timeout)
        else:
            sock.settimeout(self._timeout)

    def _use_python_timeouts(self, sock: Socket) -> None:
        """Switch a kernel-timed socket to an ordinary Python timeout."""
        _set_kernel_timeout(sock, None)  # or a blocking call would still see the kernel's
        sock.settimeout(self._timeout)
        self._kernel = False

    def _restore(self, timeout: float | None) -> None:
        """At put: undo what the lend changed (the timeout, the exposed socket's mode)."""
        self._timeout = timeout
        sock = self._sock
        if sock is not None:
            if self._exposed and _KERNEL_TIMEOUTS and not _timers_armed():
                sock.settimeout(None)
                self._kernel = True
            self._apply_timeout(sock)
        self._exposed = self._dirty = False

    def _broke(self, op: str, exc: OSError | None) -> ConnectionBroken:
        """Drop the socket after a failure and build the error to raise (``exc`` its cause)."""
        if exc is not None and exc.errno in _AGAIN:
            # SO_RCVTIMEO/SO_SNDTIMEO ran out on a blocking socket: say it as Python's own
            # socket timeout does, rather than "Resource temporarily unavailable".
            timeout = TimeoutError("timed out")
            timeout.__cause__ = exc
            exc = timeout
        aborted = self._aborted
        self._drop()
        address = self._pool.address_text
        if aborted:
            error: ConnectionBroken = ConnectionBroken(
                f"{op} on {address}: aborted", address=address
            )
        elif exc is None:
            error = ConnectionBroken(
                f"{op} on {address}: peer closed the connection", address=address
            )
        elif isinstance(exc, TimeoutError) and exc.errno is None:
            # A timeout of ours (errno None), not the kernel's ETIMEDOUT, which means
            # the peer stopped answering keepalive or acknowledgements.
            error = IOTimeout(
                f"{op} on {address}: no progress within {self._timeout}s; connection dropped",
                address=address,
            )
        else:
            error = ConnectionBroken(f"{op} on {address}: {exc}", address=address)
        error.__cause__ = exc
        self._pool._event_broken(self, op, exc if exc is not None else error)
        return error

    def _drop(self) -> None:
        """Close and forget the socket, without waiting on the network; any thread."""
        with self._mutex:
            sock, self._sock = self._sock, None
            self._aborted = False
        if sock is not None:
            try:
                sock.close()
            except OSError as exc:
                self._pool._event_close_failed(self, exc)

    def _forget_after_fork(self) -> None:
        """In a forked child: release the descriptor without any I/O (the parent keeps its
        connection) and make the lock usable again."""
        self._mutex = threading.Lock()
        self._timeout = self._pool.options.io_timeout
        self._aborted = self._fresh = self._dirty = self._exposed = self._kernel = False
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # the parent still holds the file: no FIN, no RST


def _connect(address: Address, deadline: float) -> Socket:
    """Connect to ``address`` trying each resolved address, all within ``deadline``."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        remaining = deadline - _monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if last is None:
        last = TimeoutError(f"connect to {host}:{port} timed out")
    raise last
