"""Invariant checks shared by the reliability suite, the soak and the model test.

What "nothing lost" means for a client pool (``FAULTS.md``):

- a slot is never lost: after any faults the pool is back to its full size
  of usable members (``assert_full_pool``);
- no member is ever lent to two callers at once (``LendTracker``);
- the library never sends a request twice (``assert_applied_once`` against
  ``RequestReplyServer``);
- every blocking call returns within its bound plus a small margin
  (``within``).

Descriptor and thread leaks are checked by the autouse ``no_leaks`` fixture
of ``conftest.py``.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gocp
from gocp.testing import RequestReplyServer

__all__ = [
    "MARGIN",
    "LendTracker",
    "Timer",
    "assert_applied_once",
    "assert_full_pool",
    "echo_round_trip",
    "new_request_id",
    "recv_exactly",
    "recv_line",
    "request",
    "rr_round_trip",
    "within",
]

# Slack allowed on top of a configured bound for scheduling on a loaded
# 2-core machine (the suite may run next to other test processes).
MARGIN = 1.0

_ids = itertools.count()
_ids_lock = threading.Lock()


def new_request_id(prefix: str = "r") -> str:
    """A request id never used before in this process."""
    with _ids_lock:
        return f"{prefix}{next(_ids)}"


# -- I/O helpers on a lent member ------------------------------------------------


def round_trip(conn: gocp.PersistentConn, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` to an echo server and return what came back (as many bytes)."""
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += conn.recv(len(payload) - len(received))
    return received


def unused_address() -> tuple[str, int]:
    """A loopback port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()


def recv_exactly(conn: gocp.PersistentConn, count: int) -> bytes:
    """Read exactly ``count`` bytes with a recv loop (replies may arrive in pieces)."""
    chunks = bytearray()
    while len(chunks) < count:
        chunks += conn.recv(min(65536, count - len(chunks)))
    return bytes(chunks)


def recv_line(conn: gocp.PersistentConn, limit: int = 4096) -> bytes:
    """Read one ``\\n``-terminated line (the only thing in flight on this member)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        line += conn.recv(limit)
        if len(line) > limit:
            raise AssertionError(f"reply line too long: {bytes(line[:80])!r}...")
    return bytes(line)


def request(conn: gocp.PersistentConn, request_id: str, body: str = "x") -> int:
    """One request/reply exchange with a ``RequestReplyServer``; the times it was applied."""
    conn.sendall(f"{request_id} {body}\n".encode())
    reply = recv_line(conn)
    got_id, times = reply.decode().split()
    if got_id != request_id:
        raise AssertionError(f"reply to {got_id!r} received for request {request_id!r}")
    return int(times)


@contextmanager
def request_in_thread(conn: gocp.PersistentConn, request_id: str) -> Iterator[dict[str, object]]:
    """Run ``request(conn, request_id)`` in a thread for the ``with`` block, which makes it
    fail; on a clean exit, assert the thread ended within 5 s. The yielded dict gets
    ``reply``, or ``error`` and ``at`` (the monotonic time the error surfaced)."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def holder() -> None:
        try:
            outcome["reply"] = request(conn, request_id)
        except BaseException as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()
        finally:
            done.set()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        yield outcome
        assert done.wait(5.0), "the request in the thread did not end"
    finally:
        thread.join(5.0)


def echo_round_trip(conn: gocp.PersistentConn, payload: bytes | None = None) -> None:
    """Send ``payload`` to an ``EchoServer`` and check it comes back intact."""
    data = payload if payload is not None else f"ping {new_request_id('e')}\n".encode()
    conn.sendall(data)
    back = recv_exactly(conn, len(data))
    if back != data:
        raise AssertionError(f"echo mismatch: sent {data[:40]!r}, got {back[:40]!r}")


def rr_round_trip(server: RequestReplyServer) -> Callable[[gocp.PersistentConn], None]:
    """A round trip against ``server`` that checks the request was applied exactly once."""

    def round_trip(conn: gocp.PersistentConn) -> None:
        request_id = new_request_id("check")
        times = request(conn, request_id)
        if times != 1 or server.applied(request_id) != 1:
            raise AssertionError(
                f"{request_id} applied {server.applied(request_id)} times (reply said {times})"
            )

    return round_trip


# -- invariants --------------------------------------------------------------------


def assert_full_pool(
    pool: gocp.Pool,
    round_trip: Callable[[gocp.PersistentConn], None] | None,
    *,
    recover_within: float = 5.0,
) -> None:
    """Assert the pool is back to its full size of usable, distinct members.

    Gauges: ``idle == size``, nothing lent or waiting. Then every
    member is taken at once (``get(timeout=0)`` must succeed ``size`` times,
    with ``size`` distinct objects) and does one ``round_trip`` (skipped when
    ``None``). A ``DialError`` (nothing was sent, so retrying is safe) is
    retried until ``recover_within`` seconds have passed: a member that is
    still backing off after an outage is usable, just not yet.
    """
    stats = pool.stats()
    assert not stats.closed, "pool is closed"
    assert (stats.idle, stats.in_use, stats.waiting) == (stats.size, 0, 0), (
        f"pool not back to full size: {stats}"
    )
    members = [pool.get(timeout=0) for _ in range(stats.size)]
    try:
        assert len({id(member) for member in members}) == stats.size, (
            f"a member was lent twice: {members}"
        )
        try:
            extra = pool.get(timeout=0)
        except gocp.PoolTimeout:
            pass
        else:
            pool.put(extra)
            raise AssertionError(f"pool lent more than size={stats.size} members")
        if round_trip is not None:
            deadline = time.monotonic() + recover_within
            for member in members:
                broke = False
                while True:
                    try:
                        round_trip(member)
                        break
                    except gocp.ConnectionBroken:
                        # A connection made before the recovery may still be closed by a
                        # proxy healing its faults, once; the member then redials. A second
                        # break is a defect.
                        if broke:
                            raise
                        broke = True
                    except gocp.DialError:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.005)  # polling with a deadline
    finally:
        for member in members:
            pool.put(member)
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.waiting) == (stats.size, 0, 0), stats


def assert_applied_once(server: RequestReplyServer, request_ids: list[str] | set[str]) -> None:
    """Each of ``request_ids`` (each sent once) was applied exactly once."""
    counts = server.applied_counts()
    wrong = {rid: counts.get(rid, 0) for rid in request_ids if counts.get(rid, 0) != 1}
    assert not wrong, f"requests not applied exactly once: {wrong}"


class LendTracker:
    """Wraps ``get``/``put`` and fails if one member is ever held by two callers."""

    def __init__(self, pool: gocp.Pool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}
        self.violations: list[str] = []

    def get(self, timeout: float | None = None) -> gocp.PersistentConn:
        conn = self.pool.get(timeout)
        who = threading.current_thread().name
        with self._lock:
            other = self._held.get(id(conn))
            if other is not None:
                self.violations.append(f"{conn!r} lent to {who} while held by {other}")
            self._held[id(conn)] = who
        return conn

    def put(self, conn: gocp.PersistentConn, broken: bool = False) -> None:
        with self._lock:
            self._held.pop(id(conn), None)
        self.pool.put(conn, broken=broken)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)


class Timer:
    """Elapsed monotonic time of a block: ``with Timer() as t: ...; t.elapsed``."""

    elapsed: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._start


@contextmanager
def within(bound: float, margin: float = MARGIN, *, at_least: float = 0.0) -> Iterator[Timer]:
    """Assert the block took at most ``bound + margin`` seconds, whether or not it raised.

    ``at_least`` also asserts a lower bound (e.g. a timeout did not fire early).
    The block's own exception propagates once the timing check has passed.
    """
    timer = Timer()
    start = time.monotonic()
    try:
        yield timer
    finally:
        timer.elapsed = time.monotonic() - start
        assert timer.elapsed <= bound + margin, (
            f"blocking call took {timer.elapsed:.3f}s, bound {bound}s + margin {margin}s"
        )
        assert timer.elapsed >= at_least, (
            f"call returned after {timer.elapsed:.3f}s, before its bound {at_least}s"
        )
