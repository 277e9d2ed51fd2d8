"""The reliability suite: one scenario per fault of FAULTS.md and per "nothing lost" guarantee.

Each scenario drives a real pool over real loopback sockets into a fault and
asserts what the user must see (which error, with which cause, within which
bound), then that nothing was lost: the pool is back to its full size of
usable members (``assert_full_pool``), no request the caller sent once was
applied twice (``RequestReplyServer.applied``), and no thread or descriptor
is left behind (the autouse ``no_leaks`` fixture).
"""

from __future__ import annotations

import json
import random
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from invariants import (
    MARGIN,
    LendTracker,
    assert_full_pool,
    echo_round_trip,
    new_request_id,
    recv_exactly,
    request,
    request_in_thread,
    rr_round_trip,
    within,
)

import gocp
from gocp.testing import FaultProxy, RequestReplyServer

TESTS_DIR = str(Path(__file__).resolve().parent)
FAST_RETRY = {"retry_min": 0.01, "retry_max": 0.05}


def run_child(script: str, *args: str, timeout: float = 30.0, prefix: list[str] | None = None):
    """Run ``script`` in a fresh Python process; return the JSON object on its last stdout line."""
    command = [*(prefix or []), sys.executable, "-c", textwrap.dedent(script), TESTS_DIR, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


# -- connection refused, connect timeout, DNS failure -------------------------------------


def test_connection_refused_raises_dial_error_with_retry_in(rr_server):
    """A server that is down: DialError caused by ConnectionRefusedError, at once, with
    ``retry_in`` within the backoff bounds; while backing off no dial is made; the slot
    goes back; the pool recovers by itself once the server is up."""
    rr_server.stop()
    with gocp.new(rr_server.address, size=2, retry_min=0.2, retry_max=0.4) as pool:
        conn = pool.get(timeout=0)
        with within(0.0), pytest.raises(gocp.DialError) as info:
            conn.sendall(b"refused-1 x\n")
        error = info.value
        assert isinstance(error.__cause__, ConnectionRefusedError)
        assert isinstance(error, ConnectionError)
        assert error.address == rr_server.address_text
        assert 0.2 <= error.retry_in <= 0.4 + 1e-6
        assert "refused" in str(error).lower()

        dials = pool.stats().dials
        with within(0.0), pytest.raises(gocp.DialError) as again:
            conn.sendall(b"refused-2 x\n")
        assert 0 < again.value.retry_in <= 0.4
        assert pool.stats().dials == dials, "dialled during the backoff window"
        pool.put(conn)
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.dial_failures) == (2, 0, 1)

        rr_server.start()
        assert_full_pool(pool, rr_round_trip(rr_server))
    assert rr_server.applied("refused-1") == rr_server.applied("refused-2") == 0


def test_connect_timeout_against_a_full_accept_queue():
    """A listener with ``listen(0)`` that never accepts: once its queue is full, connect
    hangs; the dial gives up at ``dial_timeout`` with DialError caused by TimeoutError."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname(), timeout=2)
        with filler, gocp.new(listener.getsockname(), size=1, dial_timeout=0.3) as pool:
            conn = pool.get(timeout=0)
            with within(0.3, at_least=0.25), pytest.raises(gocp.DialError) as info:
                conn.sendall(b"x")
            assert isinstance(info.value.__cause__, TimeoutError)
            assert not conn.connected
            pool.put(conn)
            assert pool.stats().idle == 1


def test_dns_failure_raises_dial_error_and_gives_the_slot_back():
    """``name.invalid`` never resolves: DialError caused by socket.gaierror, promptly; the
    ``connection()`` block gives the member back, so the pool stays at full size."""
    with gocp.new("name.invalid:80", size=2, **FAST_RETRY) as pool:
        with (
            within(2.0),
            pytest.raises(gocp.DialError) as info,
            pool.connection(timeout=0) as conn,
        ):
            conn.sendall(b"never sent")
        assert isinstance(info.value.__cause__, socket.gaierror)
        assert info.value.address == "name.invalid:80"
        assert info.value.retry_in > 0
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.waiting) == (2, 0, 0)
        assert stats.dial_failures == 1
        assert_full_pool(pool, None)


# -- server restart -----------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_server_restart_with_members_idle_and_lent(rr_server, reset):
    """Restart the server while members are idle and lent.

    Idle members: their stale connection is replaced before the first send of
    the next lend, and the caller never sees an error. A lent member blocked
    in ``recv`` wakes with ConnectionBroken; its request was applied once and
    is never re-sent. A lent member that was used and is idle in its holder's
    hands either works or raises ConnectionBroken without the request reaching
    the server; it redials on the next operation.
    """
    with gocp.new(rr_server.address, size=3, io_timeout=5, **FAST_RETRY) as pool:
        members = [pool.get(timeout=0) for _ in range(3)]
        for member in members:
            assert request(member, new_request_id()) == 1
        waiting, used = members[0], members[1]
        pool.put(members[2])

        stalled = new_request_id("stalled")
        rr_server.fail_next(1, "stall")
        with request_in_thread(waiting, stalled) as outcome:
            assert wait_until(lambda: rr_server.applied(stalled) == 1, 5.0)
            restarted = time.monotonic()
            rr_server.restart(reset=reset)
        assert isinstance(outcome["error"], gocp.ConnectionBroken)
        assert not isinstance(outcome["error"], TimeoutError)
        assert outcome["at"] - restarted <= MARGIN  # type: ignore[operator]

        # The idle member: the restart is invisible.
        with pool.connection(timeout=0) as conn:
            assert conn is members[2]
            assert request(conn, new_request_id()) == 1
        assert pool.stats().stale == 1

        # The used member still lent: either fine, or broken before anything arrived.
        maybe = new_request_id("maybe")
        try:
            times = request(used, maybe)
        except gocp.ConnectionBroken:
            assert rr_server.applied(maybe) == 0
        else:
            assert times == 1

        for member in (waiting, used):
            assert request(member, new_request_id()) == 1  # redialled
            pool.put(member)
        assert rr_server.applied(stalled) == 1, "the interrupted request was re-sent"
        assert rr_server.applied(maybe) <= 1
        assert_full_pool(pool, rr_round_trip(rr_server))
    assert not rr_server.duplicates()


def test_restart_of_a_pool_of_idle_members_is_invisible(echo_server):
    """Every member idle during a restart: the next lends just work, no error at all."""
    with gocp.new(echo_server.address, size=4, **FAST_RETRY) as pool:
        assert_full_pool(pool, echo_round_trip)
        echo_server.restart()
        assert_full_pool(pool, echo_round_trip, recover_within=0.0)
        assert pool.stats().stale == 4
        assert pool.stats().broken == 0


# -- reset mid-request --------------------------------------------------------------------


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "not-applied"])
@pytest.mark.parametrize("fault", ["reset", "close"])
def test_reset_mid_request_is_raised_and_never_resent(rr_server, fault, apply):
    """The server reads the request, then resets (RST) or closes (FIN): the caller gets
    ConnectionBroken (cause ConnectionResetError for RST), the request was applied as the
    server chose (once or not at all) and the library never sends it again."""
    rr_server.fail_next(1, fault, apply=apply)
    with gocp.new(rr_server.address, size=2, io_timeout=5, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        rid = new_request_id("mid")
        with within(0.0), pytest.raises(gocp.ConnectionBroken) as info:
            request(conn, rid)
        error = info.value
        assert not isinstance(error, TimeoutError)
        if fault == "reset":
            assert isinstance(error.__cause__, ConnectionResetError)
        else:
            assert error.__cause__ is None
            assert "peer closed" in str(error)
        assert not conn.connected, "a broken connection was kept"
        assert rr_server.applied(rid) == (1 if apply else 0)

        # The same member redials for the next request; the failed one is not re-sent.
        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert rr_server.applied(rid) == (1 if apply else 0)
        assert_full_pool(pool, rr_round_trip(rr_server))
    assert not rr_server.duplicates()


def test_reset_inside_connection_block_returns_member_broken(rr_server):
    """``with pool.connection()`` around a request that is reset: the error propagates,
    the member goes back (as broken) and the pool stays at full size."""
    rr_server.fail_next(1, "reset")
    with gocp.new(rr_server.address, size=2, io_timeout=5, **FAST_RETRY) as pool:
        rid = new_request_id("blk")
        with pytest.raises(gocp.ConnectionBroken), pool.connection(timeout=0) as conn:
            request(conn, rid)
        assert rr_server.applied(rid) == 1
        assert pool.stats().idle == 2
        assert_full_pool(pool, rr_round_trip(rr_server))
        assert rr_server.applied(rid) == 1


def test_one_lost_connection_counts_once_in_stats(rr_server):
    """A connection lost during I/O, then put back broken by ``Pool.connection``, is one
    broken connection in the stats (it was counted twice before 1a6b05a)."""
    rr_server.fail_next(1, "reset")
    with gocp.new(rr_server.address, size=1, io_timeout=5) as pool:
        with pytest.raises(gocp.ConnectionBroken), pool.connection(timeout=0) as conn:
            request(conn, new_request_id())
        assert pool.stats().broken == 1


# -- stalled read, stalled write ----------------------------------------------------------


def test_stalled_read_times_out_with_io_timeout(rr_server):
    """The server reads the request and never answers: IOTimeout (a ConnectionBroken and a
    TimeoutError) at ``io_timeout``, not before; applied once, never re-sent; the member
    redials; a per-lend ``settimeout`` is restored to ``io_timeout`` on put."""
    rr_server.fail_next(1, "stall")
    with gocp.new(rr_server.address, size=2, io_timeout=0.3, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        rid = new_request_id("stall")
        with within(0.3, at_least=0.25), pytest.raises(gocp.IOTimeout) as info:
            request(conn, rid)
        assert isinstance(info.value, gocp.ConnectionBroken)
        assert isinstance(info.value, TimeoutError)
        assert not conn.connected
        assert rr_server.applied(rid) == 1

        conn.settimeout(2.0)
        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert rr_server.applied(rid) == 1
        for member in [pool.get(timeout=0) for _ in range(2)]:
            assert member.gettimeout() == 0.3
            pool.put(member)
        assert_full_pool(pool, rr_round_trip(rr_server))


def test_stalled_write_to_a_peer_that_never_reads():
    """A peer that never reads, with small buffers: ``sendall`` of 4 MiB stops making
    progress and raises IOTimeout within ``io_timeout`` + margin; the slot goes back and
    the pool works again once a real server listens on that port."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections complete in the kernel; never accepted, never read
        address = listener.getsockname()
        pool = gocp.new(address, size=2, io_timeout=0.3, **FAST_RETRY)
        with pool:
            conn = pool.get(timeout=0)
            conn.sendall(b"hello")  # dials; fits in the buffers
            assert conn.connected
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            with within(0.3, at_least=0.25), pytest.raises(gocp.IOTimeout):
                conn.sendall(b"x" * (4 << 20))
            assert not conn.connected
            pool.put(conn)
            assert pool.stats().idle == 2
            listener.close()
            with RequestReplyServer(port=address[1]) as server:
                assert_full_pool(pool, rr_round_trip(server))


# -- half-open peer -----------------------------------------------------------------------

HALF_OPEN_CHILD = """
    import json, shutil, subprocess, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from invariants import request
    import gocp
    from gocp.testing import RequestReplyServer

    HOST = "127.0.0.2"
    MODE = "nft" if shutil.which("nft") else "route"

    def run(*args):
        subprocess.run(args, check=True, capture_output=True)

    def drop(port, on):
        if MODE == "nft":
            if on:
                run("nft", "add table inet gocp_test")
                run("nft", "add chain inet gocp_test out { type filter hook output priority 0 ; }")
                run("nft", "add rule inet gocp_test out tcp dport %d drop" % port)
                run("nft", "add rule inet gocp_test out tcp sport %d drop" % port)
            else:
                run("nft", "delete table inet gocp_test")
        else:
            # Every packet to HOST silently discarded: the server vanishes without FIN/RST.
            run("ip", "route", "add" if on else "del", "blackhole", HOST + "/32", "table", "local")

    def scenario_a(server, port, out):
        # A request in flight to a vanished peer: io_timeout catches it.
        with gocp.new(server.address, size=1, io_timeout=0.5, keepalive=None) as pool:
            conn = pool.get(timeout=0)
            out["a_warm"] = request(conn, "ho-1")
            drop(port, True)
            started = time.monotonic()
            try:
                conn.sendall(b"ho-2 x\\n")
                out["a_sendall"] = "ok"
                conn.recv(64)
                out["a_recv"] = "returned"
            except gocp.ConnectionBroken as exc:
                out["a_error"] = type(exc).__name__
                out["a_is_timeout"] = isinstance(exc, TimeoutError)
            out["a_elapsed"] = time.monotonic() - started
            out["a_applied_during"] = server.applied("ho-2")
            drop(port, False)
            out["a_after"] = request(conn, "ho-3")
            pool.put(conn)
            out["a_idle"] = pool.stats().idle

    def scenario_b(server, port, out):
        # A holder waiting for the server, nothing in flight, io_timeout=None: keepalive.
        with gocp.new(server.address, size=1, io_timeout=None, keepalive=1) as pool:
            conn = pool.get(timeout=0)
            out["b_warm"] = request(conn, "ho-4")
            drop(port, True)
            started = time.monotonic()
            try:
                conn.recv(64)
                out["b_recv"] = "returned"
            except gocp.ConnectionBroken as exc:
                out["b_error"] = type(exc).__name__
                out["b_cause_errno"] = getattr(exc.__cause__, "errno", None)
                out["b_message"] = str(exc)
            out["b_elapsed"] = time.monotonic() - started
            drop(port, False)
            out["b_after"] = request(conn, "ho-5")
            pool.put(conn)
            out["b_idle"] = pool.stats().idle

    def scenario_c(server, port, out):
        # A request in flight, io_timeout=None, keepalive=1; a watchdog aborts at 6 s.
        with gocp.new(server.address, size=1, io_timeout=None, keepalive=1) as pool:
            conn = pool.get(timeout=0)
            out["c_warm"] = request(conn, "ho-6")
            drop(port, True)
            watchdog = threading.Timer(6.0, conn.aborter())
            watchdog.start()
            started = time.monotonic()
            try:
                conn.sendall(b"ho-7 x\\n")
                conn.recv(64)
                out["c_recv"] = "returned"
            except gocp.ConnectionBroken as exc:
                out["c_message"] = str(exc)
                out["c_cause_errno"] = getattr(exc.__cause__, "errno", None)
            out["c_elapsed"] = time.monotonic() - started
            watchdog.cancel()
            watchdog.join()
            drop(port, False)
            out["c_after"] = request(conn, "ho-8")
            pool.put(conn)

    out = {"mode": MODE}
    with RequestReplyServer(HOST) as server:
        for name in sys.argv[2]:
            {"a": scenario_a, "b": scenario_b, "c": scenario_c}[name](
                server, server.address[1], out
            )
        out["applied"] = server.applied_counts()
    print(json.dumps(out))
"""


NETNS = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def _can_unshare() -> str | None:
    """None if ``unshare -rn`` works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) (util-linux, iproute2), not installed"
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make a private network namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_half_open_peer_in_a_private_network_namespace():
    """The peer vanishes without FIN or RST (every packet dropped, in a private network
    namespace: an nft drop rule when nft is installed, else a blackhole route for the
    server's address). A request in flight: ``sendall`` succeeds, ``recv`` raises IOTimeout
    at ``io_timeout``. A holder waiting with ``io_timeout=None``: TCP keepalive turns the
    silence into ConnectionBroken caused by ETIMEDOUT. Both members redial once the peer is
    reachable; no request is applied twice."""
    reason = _can_unshare()
    if reason is not None:
        pytest.skip(reason)
    result = run_child(HALF_OPEN_CHILD, "ab", prefix=NETNS, timeout=40)
    assert result["a_warm"] == 1
    assert result["a_sendall"] == "ok"
    assert "a_recv" not in result
    assert result["a_error"] == "IOTimeout"
    assert result["a_is_timeout"] is True
    assert 0.45 <= result["a_elapsed"] <= 0.5 + MARGIN
    assert result["a_applied_during"] == 0
    assert result["a_after"] == 1
    assert result["a_idle"] == 1
    # keepalive=1: 1 s of silence, then 3 probes 1 s apart
    assert "b_recv" not in result
    assert result["b_error"] in ("ConnectionBroken", "IOTimeout")
    assert result["b_cause_errno"] == 110  # ETIMEDOUT
    assert 3.0 <= result["b_elapsed"] <= 4.0 + 2 * MARGIN
    assert result["b_after"] == 1
    assert result["b_idle"] == 1
    applied = result["applied"]
    # ho-2 got an error: it may still arrive later (the dropped socket's close sends the
    # queued bytes once the path is back), but never twice.
    assert applied.get("ho-2", 0) <= 1
    assert all(applied[rid] == 1 for rid in ("ho-1", "ho-3", "ho-4", "ho-5"))


@pytest.mark.slow
def test_half_open_peer_with_a_request_in_flight_is_bounded_by_io_timeout_not_keepalive():
    """With ``io_timeout=None`` nothing bounds a request whose bytes the vanished peer
    never acknowledged: keepalive probes only an idle (fully acknowledged) connection,
    and gocp sets no TCP_USER_TIMEOUT, which would also end a live peer's zero window
    (see test_timeouts). A watchdog (``conn.aborter()``) ends the wait after 6 s, past
    the keepalive total of 4 s: the error says "aborted", not ETIMEDOUT. The request is
    never applied twice."""
    reason = _can_unshare()
    if reason is not None:
        pytest.skip(reason)
    result = run_child(HALF_OPEN_CHILD, "c", prefix=NETNS, timeout=40)
    assert result["c_warm"] == 1
    assert result["c_after"] == 1
    assert result["applied"].get("ho-7", 0) <= 1
    assert "aborted" in result["c_message"], result["c_message"]
    assert 6.0 <= result["c_elapsed"] <= 6.0 + 2 * MARGIN


@pytest.mark.slow
def test_keepalive_timeout_message_names_the_real_cause():
    """ETIMEDOUT from the kernel means a dead peer, not ``io_timeout`` running out (it is
    None here): the error must say so instead of quoting a timeout of None."""
    reason = _can_unshare()
    if reason is not None:
        pytest.skip(reason)
    result = run_child(HALF_OPEN_CHILD, "b", prefix=NETNS, timeout=40)
    assert result["b_cause_errno"] == 110
    assert "within None" not in result["b_message"], result["b_message"]


# -- partial writes and reads -------------------------------------------------------------


def test_partial_writes_and_reads_of_a_mebibyte(echo_server):
    """1 MiB through small socket buffers: ``send`` accepts only part of it (the caller
    loops), ``sendall`` sends all, ``recv`` returns pieces; the bytes arrive intact."""
    payload = random.Random(7).randbytes(1 << 20)
    with gocp.new(echo_server.address, size=1, io_timeout=5) as pool:
        with pool.connection(timeout=0) as conn:
            echo_round_trip(conn)  # dials
            assert conn.connected
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)

            view, sent, calls = memoryview(payload), 0, 0
            while sent < len(payload):
                count = conn.send(view[sent:])
                assert 0 < count <= len(payload) - sent
                sent, calls = sent + count, calls + 1
            assert calls > 1, "a 1 MiB send through a 16 KiB buffer was accepted whole"
            pieces = 0
            received = bytearray()
            while len(received) < len(payload):
                received += conn.recv(len(payload) - len(received))
                pieces += 1
            assert pieces > 1
            assert received == payload

            conn.sendall(payload)
            assert recv_exactly(conn, len(payload)) == payload
        assert_full_pool(pool, echo_round_trip)


# -- file descriptors exhausted -----------------------------------------------------------

EMFILE_CHILD = """
    import errno, json, os, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from invariants import request
    import gocp
    from gocp.testing import no_backoff

    pool = gocp.new(("127.0.0.1", int(sys.argv[2])), size=2, io_timeout=5,
                    retry_min=0.05, retry_max=0.1)
    out = {}
    a = pool.get(timeout=0)
    out["a_warm"] = request(a, "fd-a1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    files = []
    try:
        while True:
            files.append(open(os.devnull, "rb"))
    except OSError as exc:
        out["open_errno"] = exc.errno
    out["files"] = len(files)
    b = pool.get(timeout=0)
    started = time.monotonic()
    try:
        request(b, "fd-b1")
        out["b_error"] = None
    except gocp.DialError as exc:
        out["b_error"] = type(exc).__name__
        out["message"] = str(exc)
        out["cause_errno"] = getattr(exc.__cause__, "errno", None)
        out["retry_in"] = exc.retry_in
    out["b_elapsed"] = time.monotonic() - started
    out["a_still_works"] = request(a, "fd-a2")
    pool.put(b)
    pool.put(a)
    stats = pool.stats()
    out["idle_exhausted"] = stats.idle
    out["in_use_exhausted"] = stats.in_use
    for f in files:
        f.close()
    recovered = []
    with no_backoff():  # redial at once instead of waiting out the backoff window
        for _ in range(2):
            conn = pool.get(timeout=0)
            recovered.append(request(conn, "fd-r%d" % len(recovered)))
            pool.put(conn)
    out["recovered"] = recovered
    out["idle_after"] = pool.stats().idle
    pool.close()
    print(json.dumps(out))
"""


def test_file_descriptors_exhausted(rr_server):
    """In a child process at its RLIMIT_NOFILE: dialling raises DialError naming EMFILE
    (errno 24), promptly; the member that is already connected keeps working; the slot
    goes back (pool at full size); once descriptors are freed, every member works."""
    result = run_child(EMFILE_CHILD, str(rr_server.address[1]))
    assert result["a_warm"] == 1
    assert result["open_errno"] == 24
    assert result["b_error"] == "DialError"
    assert result["cause_errno"] == 24
    assert "Errno 24" in result["message"] or "Too many open files" in result["message"]
    assert result["retry_in"] > 0
    assert result["b_elapsed"] <= MARGIN
    assert result["a_still_works"] == 1
    assert (result["idle_exhausted"], result["in_use_exhausted"]) == (2, 0)
    assert result["recovered"] == [1, 1]
    assert result["idle_after"] == 2
    assert rr_server.applied("fd-b1") == 0
    assert not rr_server.duplicates()


# -- fork ---------------------------------------------------------------------------------

FORK_CHILD = """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from invariants import request
    import gocp

    pool = gocp.new(("127.0.0.1", int(sys.argv[2])), size=2, io_timeout=5)
    a, b = pool.get(timeout=0), pool.get(timeout=0)
    request(a, "parent-a1")
    request(b, "parent-b1")
    ports = sorted(m.socket.getsockname()[1] for m in (a, b))
    pool.put(b)  # at the fork: b idle, a lent
    before = pool.stats()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code, out = 1, {}
        try:
            os.close(read_end)
            stats = pool.stats()
            out["start"] = [stats.idle, stats.in_use, stats.connected]
            out["inherited_socket"] = [not a.connected, not b.connected]
            c1, c2 = pool.get(timeout=0), a  # a: still lent to this (the forking) thread
            try:
                pool.get(timeout=0)
                out["third"] = "lent"
            except gocp.PoolTimeout:
                out["third"] = "timeout"
            out["replies"] = [request(c1, "child-1"), request(c2, "child-2")]
            out["ports"] = sorted(m.socket.getsockname()[1] for m in (c1, c2))
            pool.put(c1)
            pool.put(c2)
            pool.close()
            code = 0
        except BaseException as exc:
            out["error"] = repr(exc)
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"child": json.loads(data), "code": os.waitstatus_to_exitcode(status),
                      "ports": ports}), flush=True)
    sys.stdin.readline()  # the test looks at the server side meanwhile
    replies = [request(a, "parent-a2")]
    pool.put(a)
    members = [pool.get(timeout=0), pool.get(timeout=0)]
    replies += [request(m, "parent-%d" % i) for i, m in enumerate(members)]
    after_ports = sorted(m.socket.getsockname()[1] for m in members)
    for m in members:
        pool.put(m)
    after = pool.stats()
    pool.close()
    print(json.dumps({"replies": replies, "ports": after_ports,
                      "dials": after.dials - before.dials, "stale": after.stale,
                      "broken": after.broken, "idle": after.idle}))
"""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child process did not answer in time"
    return proc.stdout.readline()


def test_fork_child_redials_and_parent_connections_survive(rr_server):
    """``os.fork`` while the pool holds connected sockets (one member lent, one idle).
    In the child none is connected; the member the forking thread held stays lent to
    it (never lent twice), the other is idle; both dial their own connections; the
    child exits. The parent's two connections are the
    same ones (same local ports, no redial, nothing stale or broken) and work, and the
    server saw no FIN/RST on them. Run in a child Python process: forking the threaded
    pytest process would warn (filterwarnings=error)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FORK_CHILD), TESTS_DIR, str(rr_server.address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(_read_line(proc, 20))
        child = first["child"]
        assert first["code"] == 0, child
        # The member the forking thread held stays lent to it; the other is idle again.
        assert child["start"] == [1, 1, 0]
        assert child["third"] == "timeout"  # never lent twice
        assert child["inherited_socket"] == [True, True]
        assert child["replies"] == [1, 1]
        assert not set(child["ports"]) & set(first["ports"])
        # The server still holds exactly the parent's two connections (the child's own
        # were closed when it closed its pool): the inherited ones were not shut down.
        assert wait_until(lambda: rr_server.active == 2, 5.0), rr_server.active
        assert rr_server.accepted == 4

        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        second = json.loads(_read_line(proc, 20))
        assert second["replies"] == [1, 1, 1]
        assert second["ports"] == first["ports"]
        assert (second["dials"], second["stale"], second["broken"]) == (0, 0, 0)
        assert second["idle"] == 2
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    assert "Traceback" not in stderr, stderr
    assert rr_server.accepted == 4
    assert not rr_server.duplicates()


# -- aborting a lent member; close never touches lent members -----------------------------


def test_abort_wakes_a_holder_blocked_in_recv(rr_server):
    """A watchdog aborts a lent member from another thread while its holder is blocked in
    ``recv`` (server stalled, ``io_timeout=None``): the holder wakes within ~1 s with
    ConnectionBroken (not a timeout); the request was applied once and is not re-sent;
    the member redials for its next request."""
    rr_server.fail_next(1, "stall")
    with gocp.new(rr_server.address, size=2, io_timeout=None, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        rid = new_request_id("abort")
        with request_in_thread(conn, rid) as outcome:
            assert wait_until(lambda: rr_server.applied(rid) == 1, 5.0)
            aborted = time.monotonic()
            conn.abort()
        assert outcome["at"] - aborted <= MARGIN  # type: ignore[operator]
        error = outcome["error"]
        assert isinstance(error, gocp.ConnectionBroken)
        assert not isinstance(error, TimeoutError)
        assert "abort" in str(error)
        assert not conn.connected

        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert rr_server.applied(rid) == 1
        assert_full_pool(pool, rr_round_trip(rr_server))


def test_close_never_touches_lent_members():
    """``pool.close()`` while a holder is blocked in ``recv`` and another caller waits in
    ``get``: close returns at once, the waiter wakes with PoolClosed, the holder's
    connection stays open and keeps working (it receives what the server sends after the
    close), and is closed (FIN) when put back."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        pool = gocp.new(listener.getsockname(), size=1, io_timeout=5)
        conn = pool.get(timeout=0)
        got: dict[str, object] = {}
        received = threading.Event()
        waiter_done = threading.Event()

        def holder() -> None:
            try:
                got["data"] = conn.recv(64)
            except BaseException as exc:
                got["data"] = exc
            finally:
                received.set()

        def waiter() -> None:
            started = time.monotonic()
            try:
                pool.get(timeout=10)
            except BaseException as exc:
                got["waiter"] = exc
            got["waited"] = time.monotonic() - started
            waiter_done.set()

        threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
        for thread in threads:
            thread.start()
        try:
            peer, _ = listener.accept()  # the holder's dial
            with peer:
                # accept() can return before the holder's thread has stored its socket.
                assert wait_until(lambda: conn.connected, 5.0)
                assert wait_until(lambda: pool.stats().waiting == 1, 5.0)
                with within(0.0, margin=0.5):
                    pool.close()
                assert waiter_done.wait(5.0)
                assert isinstance(got["waiter"], gocp.PoolClosed)
                assert not received.is_set()
                assert conn.connected

                peer.sendall(b"after close")
                assert received.wait(5.0)
                assert got["data"] == b"after close"
                conn.sendall(b"still mine")
                peer.settimeout(5)
                assert peer.recv(64) == b"still mine"

                pool.put(conn)
                assert not conn.connected
                assert peer.recv(64) == b"", "member not closed when put back to a closed pool"
        finally:
            for thread in threads:
                thread.join(5.0)
            pool.close()
        with pytest.raises(gocp.PoolClosed):
            pool.get(timeout=0)


# -- callers timing out in get while members are returned ---------------------------------


def test_get_timeouts_keep_fifo_order_and_lose_no_slot(echo_server):
    """Three callers queue for the only member; the middle one times out (PoolTimeout at
    its timeout, not before). When the member comes back it goes to the first caller, then
    to the third: first come, first served, and the timed-out caller took no slot."""
    with gocp.new(echo_server.address, size=1) as pool:
        held = pool.get(timeout=0)
        order: list[str] = []
        errors: dict[str, BaseException] = {}
        elapsed: dict[str, float] = {}

        def caller(name: str, timeout: float) -> None:
            started = time.monotonic()
            try:
                conn = pool.get(timeout=timeout)
            except BaseException as exc:
                errors[name] = exc
            else:
                order.append(name)
                echo_round_trip(conn)
                pool.put(conn)
            elapsed[name] = time.monotonic() - started

        specs = [("first", 10.0), ("impatient", 0.3), ("third", 10.0)]
        threads = []
        for index, (name, timeout) in enumerate(specs):
            thread = threading.Thread(target=caller, args=(name, timeout), name=name)
            thread.start()
            threads.append(thread)
            assert wait_until(lambda n=index + 1: pool.stats().waiting == n, 5.0)
        try:
            threads[1].join(5.0)
            assert isinstance(errors["impatient"], gocp.PoolTimeout)
            assert errors["impatient"].timeout == 0.3
            assert 0.3 <= elapsed["impatient"] <= 0.3 + MARGIN
            assert pool.stats().waiting == 2
            pool.put(held)
        finally:
            for thread in threads:
                thread.join(5.0)
        assert order == ["first", "third"]
        assert set(errors) == {"impatient"}
        stats = pool.stats()
        assert stats.timeouts == 1
        assert_full_pool(pool, echo_round_trip)


def test_get_timeouts_racing_with_returns_lose_no_slot(echo_server):
    """Eight threads hammer a pool of three with tiny ``get`` timeouts while members come
    back: every PoolTimeout arrives within its bound, no member is ever lent to two
    callers, the counters agree with what the callers saw, and the pool ends full."""
    with gocp.new(echo_server.address, size=3, io_timeout=5) as pool:
        tracker = LendTracker(pool)
        stop_at = time.monotonic() + 1.5
        counts = {"ok": 0, "timeouts": 0, "late": 0}
        lock = threading.Lock()
        failures: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while time.monotonic() < stop_at:
                    timeout = rng.choice([0, 0.0005, 0.002, 0.01, 0.05])
                    started = time.monotonic()
                    try:
                        conn = tracker.get(timeout)
                    except gocp.PoolTimeout:
                        late = time.monotonic() - started > timeout + MARGIN
                        with lock:
                            counts["timeouts"] += 1
                            counts["late"] += late
                        continue
                    try:
                        echo_round_trip(conn)
                    finally:
                        tracker.put(conn)
                    with lock:
                        counts["ok"] += 1
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        assert not failures, failures
        assert not tracker.violations, tracker.violations
        assert counts["late"] == 0
        assert counts["ok"] > 0
        assert counts["timeouts"] > 0, "the race was not exercised"
        stats = pool.stats()
        assert stats.lends == counts["ok"]
        assert stats.timeouts == counts["timeouts"]
        assert_full_pool(pool, echo_round_trip)


# -- leaked connection --------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="leak_timeout reports a member its holder dropped but does not reclaim it "
    "(reclaiming could hand one connection to two holders): its slot stays lent",
)
def test_leaked_member_is_reclaimed(echo_server):
    import gc
    import weakref

    with gocp.new(echo_server.address, size=2) as pool:
        conn = pool.get(timeout=0)
        echo_round_trip(conn)
        ref = weakref.ref(conn)
        del conn
        gc.collect()
        try:
            assert wait_until(lambda: pool.stats().idle == 2, 1.0), "leaked slot not reclaimed"
        finally:
            leaked = ref()
            if leaked is not None and pool.stats().in_use:
                pool.put(leaked)  # clean up so the descriptor is not leaked by the test


# -- through the FaultProxy ---------------------------------------------------------------


@pytest.fixture
def rr_proxy(rr_server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``rr_server``."""
    with FaultProxy(rr_server.address, seed=1) as proxy:
        yield proxy


@pytest.fixture
def echo_proxy(echo_server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``echo_server``."""
    with FaultProxy(echo_server.address, seed=2) as proxy:
        yield proxy


@pytest.mark.parametrize(
    ("direction", "applied"), [("both", 0), ("up", 0), ("down", 1)], ids=["both", "up", "down"]
)
def test_blackholed_peer_is_caught_by_io_timeout(rr_server, rr_proxy, direction, applied):
    """The proxy keeps both sockets open and forwards nothing (the kernel still ACKs, so
    keepalive would never fire): the request raises IOTimeout at ``io_timeout``; it reached
    the server only if the blackhole was on the way back; after ``heal`` the member redials
    and the request is never re-sent."""
    with gocp.new(rr_proxy.address, size=2, io_timeout=0.3, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        assert request(conn, new_request_id()) == 1
        rr_proxy.blackhole(direction)
        rid = new_request_id("bh")
        with within(0.3, at_least=0.25), pytest.raises(gocp.IOTimeout):
            request(conn, rid)
        assert rr_proxy.wait_for_event("drop").nbytes > 0
        assert not conn.connected
        assert rr_server.applied(rid) == applied
        rr_proxy.heal()
        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert_full_pool(pool, rr_round_trip(rr_server))
        assert rr_server.applied(rid) == applied
    assert not rr_server.duplicates()


def test_stalled_write_through_the_proxy(rr_server, rr_proxy):
    """The proxy stops reading from the client: ``sendall`` of a 16 MiB request fills the
    buffers and raises IOTimeout within ``io_timeout`` + margin; the incomplete request is
    never applied; after ``heal`` every member works."""
    with gocp.new(rr_proxy.address, size=2, io_timeout=0.3, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        assert request(conn, new_request_id()) == 1
        assert conn.connected
        conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        rr_proxy.stall("up")
        rid = new_request_id("big")
        line = f"{rid} ".encode() + b"x" * (16 << 20) + b"\n"
        with within(0.3, at_least=0.25), pytest.raises(gocp.IOTimeout):
            conn.sendall(line)
        assert not conn.connected
        assert rr_server.applied(rid) == 0
        pool.put(conn)
        rr_proxy.heal()
        assert_full_pool(pool, rr_round_trip(rr_server))
        # sendall gave up before the final newline left the process: whatever part of the
        # request still flows once the proxy reads again, it can never be applied.
        assert rr_server.applied(rid) == 0
    assert not rr_server.duplicates()


def test_sliced_stream_through_the_proxy(echo_server, echo_proxy):
    """The proxy forwards in writes of at most 1000 bytes each way: a 1 MiB ``sendall``
    arrives intact, read back with a recv loop."""
    echo_proxy.set_slice(1000, direction="both")
    payload = random.Random(11).randbytes(1 << 20)
    with gocp.new(echo_proxy.address, size=2, io_timeout=5) as pool:
        with pool.connection(timeout=0) as conn:
            conn.sendall(payload)
            # How many reads it takes depends on how much piled up in the receive
            # buffer meanwhile; what matters is that the recv loop gets every byte.
            assert recv_exactly(conn, len(payload)) == payload
        # Chunks of more than 1000 bytes were written in pieces (the echoed stream may
        # come back from the server in chunks small enough to need no slicing).
        slices = [e for e in echo_proxy.events if e.what == "slice"]
        assert slices
        assert all(e.pieces == -(-e.nbytes // 1000) for e in slices), slices[:3]
        assert_full_pool(pool, echo_round_trip)


def test_sliced_requests_through_the_proxy(rr_server, rr_proxy):
    """Requests and replies split into 3-byte segments: each still applied exactly once."""
    rr_proxy.set_slice(3, direction="both")
    with gocp.new(rr_proxy.address, size=2, io_timeout=5) as pool:
        sent = []
        for _ in range(20):
            with pool.connection(timeout=1) as conn:
                rid = new_request_id("sl")
                assert request(conn, rid, body="y" * 50) == 1
                sent.append(rid)
        for rid in sent:
            assert rr_server.applied(rid) == 1
        assert_full_pool(pool, rr_round_trip(rr_server))


@pytest.mark.parametrize(("direction", "applied"), [("up", 0), ("down", 1)])
def test_stream_cut_mid_request(rr_server, rr_proxy, direction, applied):
    """The proxy cuts the stream after a few bytes (FIN both ways): in the request (never
    complete, never applied) or in the reply (applied once); either way the caller gets
    ConnectionBroken and the request is never re-sent."""
    with gocp.new(rr_proxy.address, size=2, io_timeout=5, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        assert request(conn, new_request_id()) == 1
        rr_proxy.cut_after(5, direction=direction)
        rid = new_request_id("cut")
        with within(0.0), pytest.raises(gocp.ConnectionBroken) as info:
            request(conn, rid, body="z" * 40)
        assert not isinstance(info.value, TimeoutError)
        assert rr_proxy.wait_for_event("cut").nbytes == 5
        assert rr_server.applied(rid) == applied
        rr_proxy.cut_after(None, direction=direction)
        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert_full_pool(pool, rr_round_trip(rr_server))
        assert rr_server.applied(rid) == applied
    assert not rr_server.duplicates()


def test_proxy_reset_wakes_a_blocked_reader(rr_server, rr_proxy):
    """``reset(after=0.2)`` while the holder waits for a stalled reply: it wakes with
    ConnectionBroken caused by ConnectionResetError within 0.2 s + margin; applied once."""
    rr_server.fail_next(1, "stall")
    with gocp.new(rr_proxy.address, size=1, io_timeout=10, **FAST_RETRY) as pool:
        conn = pool.get(timeout=0)
        rid = new_request_id("rst")
        conn.sendall(f"{rid} x\n".encode())
        assert wait_until(lambda: rr_server.applied(rid) == 1, 5.0)
        rr_proxy.reset(after=0.2)
        with within(0.2), pytest.raises(gocp.ConnectionBroken) as info:
            conn.recv(64)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert request(conn, new_request_id()) == 1
        pool.put(conn)
        assert rr_server.applied(rid) == 1
        assert_full_pool(pool, rr_round_trip(rr_server))


def test_refusing_proxy_then_accepting_again(rr_server, rr_proxy):
    """All connections killed and new ones refused: idle members find their connection
    stale, try to redial and raise DialError (ConnectionRefusedError) at once; nothing
    was sent. Once the proxy accepts again the pool recovers with no help."""
    with gocp.new(rr_proxy.address, size=3, io_timeout=5, **FAST_RETRY) as pool:
        assert_full_pool(pool, rr_round_trip(rr_server))
        rr_proxy.refuse()
        rr_proxy.kill_all()
        assert wait_until(lambda: rr_proxy.connections == 0, 5.0)
        rid = new_request_id("refused")
        with (
            pool.connection(timeout=0) as conn,
            within(0.0),
            pytest.raises(gocp.DialError) as info,
        ):
            request(conn, rid)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert pool.stats().idle == 3
        rr_proxy.accept()
        assert_full_pool(pool, rr_round_trip(rr_server))
        assert rr_server.applied(rid) == 0


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_killed_connections_of_idle_members_are_replaced_silently(rr_server, rr_proxy, reset):
    """Every connection killed while the members sit idle: the next lends just work."""
    with gocp.new(rr_proxy.address, size=3, io_timeout=5, **FAST_RETRY) as pool:
        assert_full_pool(pool, rr_round_trip(rr_server))
        rr_proxy.kill_all(reset=reset)
        assert wait_until(lambda: rr_proxy.connections == 0, 5.0)
        assert_full_pool(pool, rr_round_trip(rr_server), recover_within=0.0)
        stats = pool.stats()
        assert (stats.stale, stats.broken, stats.dial_failures) == (3, 0, 0)


def test_latency_and_jitter(rr_server, rr_proxy):
    """Added latency slows each round trip by at least twice the latency and no more than
    latency + jitter each way (+ margin); a latency beyond ``io_timeout`` is an IOTimeout
    although the request is applied (once) when it finally arrives."""
    rr_proxy.set_latency(0.1, jitter=0.05, direction="both")
    with gocp.new(rr_proxy.address, size=1, io_timeout=1.0, **FAST_RETRY) as pool:
        with pool.connection(timeout=0) as conn:
            assert request(conn, new_request_id()) == 1  # dial
            with within(0.3, at_least=0.2):
                assert request(conn, new_request_id()) == 1
        rr_proxy.set_latency(0.6, direction="up")
        rid = new_request_id("late")
        with pool.connection(timeout=0) as conn:
            conn.settimeout(0.3)
            with within(0.3, at_least=0.25), pytest.raises(gocp.IOTimeout):
                request(conn, rid)
        assert wait_until(lambda: rr_server.applied(rid) == 1, 5.0)
        rr_proxy.heal()
        assert_full_pool(pool, rr_round_trip(rr_server))
        assert rr_server.applied(rid) == 1


def test_bandwidth_limit_is_slow_but_not_a_timeout(echo_server, echo_proxy):
    """At 2 MiB/s a 1 MiB echo takes about half a second, more than ``io_timeout=0.2``, and
    still succeeds: the timeout bounds each wait for progress, not the whole transfer."""
    echo_proxy.set_bandwidth(2 << 20, direction="both")
    payload = random.Random(5).randbytes(1 << 20)
    with gocp.new(echo_proxy.address, size=1, io_timeout=0.2) as pool:
        with pool.connection(timeout=0) as conn, within(1.0, at_least=0.4):
            conn.sendall(payload)
            assert recv_exactly(conn, len(payload)) == payload
        echo_proxy.heal()
        assert_full_pool(pool, echo_round_trip)


def test_close_and_put_broken_are_prompt_against_slow_closing_peers(echo_server, echo_proxy):
    """The proxy holds every FIN for 5 s and blackholes: ``put(broken=True)`` and
    ``pool.close()`` never wait on the network."""
    with gocp.new(echo_proxy.address, size=3, io_timeout=5) as pool:
        assert_full_pool(pool, echo_round_trip)
        echo_proxy.slow_close(5.0)
        echo_proxy.blackhole("both")
        conn = pool.get(timeout=0)
        with within(0.0, margin=0.2):
            pool.put(conn, broken=True)
        with within(0.0, margin=0.2):
            pool.close()
        assert pool.stats().connected == 0
    echo_proxy.heal()
