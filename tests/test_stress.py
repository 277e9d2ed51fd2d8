"""Many threads, one small pool, real round trips: the invariants hold under contention.

Invariants checked: no member is held by two threads at once; every round trip gets
its own bytes back; afterwards the pool is whole (size constant, every member idle and
working), the counters add up, no request was applied twice, and (autouse fixture)
no descriptor or thread is left behind.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from conftest import wait_until

import gocp

THREADS = 16
SIZE = 4

pytestmark = pytest.mark.slow


class Holders:
    """Which thread holds which member, and every time two held one at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_member: dict[int, int] = {}
        self.violations: list[str] = []
        self.members: set[int] = set()

    def take(self, conn: gocp.PersistentConn, worker: int) -> None:
        with self.lock:
            key = id(conn)
            other = self.by_member.get(key)
            if other is not None:
                self.violations.append(f"member {conn.index} held by {other} and {worker}")
            self.by_member[key] = worker
            self.members.add(key)

    def release(self, conn: gocp.PersistentConn, worker: int) -> None:
        with self.lock:
            if self.by_member.pop(id(conn), None) != worker:
                self.violations.append(f"member {conn.index} released by {worker}, not its holder")


def exchange(conn: gocp.PersistentConn, payload: bytes) -> bytes:
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += conn.recv(len(payload) - len(received))
    return received


def run_workers(target, count: int = THREADS) -> list[BaseException]:
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def run(worker: int) -> None:
        try:
            start.wait(10)
            target(worker)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(45)
    assert not any(thread.is_alive() for thread in threads), "a worker is stuck"
    return errors


def test_many_threads_share_a_small_pool(echo_server):
    iterations = 400
    holders = Holders()
    done = Counter[int]()

    with gocp.new(echo_server.address, size=SIZE, io_timeout=10) as pool:

        def work(worker: int) -> None:
            for i in range(iterations):
                conn = pool.get(timeout=20)
                holders.take(conn, worker)
                try:
                    payload = f"<{worker}:{i}>".encode()
                    reply = exchange(conn, payload)
                    assert reply == payload, (reply, payload)
                finally:
                    holders.release(conn, worker)
                    pool.put(conn)
                done[worker] += 1

        errors = run_workers(work)
        assert errors == []
        assert holders.violations == []
        assert sum(done.values()) == THREADS * iterations
        assert len(holders.members) <= SIZE

        stats = pool.stats()
        assert stats.size == SIZE
        assert (stats.idle, stats.in_use, stats.waiting) == (SIZE, 0, 0)
        assert stats.lends == THREADS * iterations
        assert stats.timeouts == 0
        assert (stats.broken, stats.dial_failures, stats.stale) == (0, 0, 0)
        assert stats.dials == stats.connected <= SIZE  # each member dialled at most once
        assert echo_server.active == stats.connected


def test_many_threads_through_resets_never_resend(rr_server):
    iterations = 200
    holders = Holders()
    lock = threading.Lock()
    seen: Counter[str] = Counter()
    ok_requests: list[str] = []
    progress = [0]
    workers_done = threading.Event()

    with gocp.new(
        rr_server.address, size=SIZE, io_timeout=10, retry_min=0.01, retry_max=0.05
    ) as pool:

        def work(worker: int) -> None:
            rng = random.Random(worker)
            for i in range(iterations):
                try:
                    conn = pool.get(timeout=0 if rng.random() < 0.2 else 20)
                except gocp.PoolTimeout:
                    with lock:
                        seen["pool_timeout"] += 1
                    continue
                holders.take(conn, worker)
                broken = False
                try:
                    request_id = f"w{worker}-{i}"
                    conn.sendall(f"{request_id} data\n".encode())
                    line = b""
                    while not line.endswith(b"\n"):
                        line += conn.recv(64)
                    assert line == f"{request_id} 1\n".encode(), line
                    with lock:
                        ok_requests.append(request_id)
                        progress[0] += 1
                    broken = rng.random() < 0.05  # sometimes the caller distrusts the stream
                    if broken:
                        with lock:
                            seen["put_broken"] += 1
                except gocp.ConnectionBroken:
                    with lock:
                        seen["broken"] += 1
                except gocp.DialError as exc:
                    with lock:  # a reset by the chaos thread can hit a connection mid-dial
                        reset = isinstance(exc.__cause__, ConnectionResetError)
                        seen["dial_reset" if reset else "dial_error"] += 1
                finally:
                    holders.release(conn, worker)
                    pool.put(conn, broken=broken)
                with lock:
                    seen["gets"] += 1

        kills: list[int] = []

        def chaos() -> None:
            # Cut every connection each time the workers have made some progress.
            while not workers_done.is_set() and len(kills) < 8:
                target = progress[0] + 150

                def advanced(target: int = target) -> bool:
                    return progress[0] >= target or workers_done.is_set()

                wait_until(advanced, timeout=20)
                if workers_done.is_set():
                    break
                rr_server.kill_connections(reset=len(kills) % 2 == 0)
                kills.append(progress[0])

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        try:
            errors = run_workers(work)
        finally:
            workers_done.set()
            chaos_thread.join(30)
        assert not chaos_thread.is_alive()
        assert errors == []
        assert holders.violations == []
        assert len(holders.members) <= SIZE

        stats = pool.stats()
        assert stats.size == SIZE
        assert (stats.idle, stats.in_use, stats.waiting) == (SIZE, 0, 0)
        assert stats.lends == seen["gets"]
        assert stats.timeouts == seen["pool_timeout"]
        assert seen["gets"] + seen["pool_timeout"] == THREADS * iterations
        # Each break seen by a worker was counted once, and so was each broken put.
        assert stats.broken == seen["broken"] + seen["put_broken"]
        assert seen["dial_error"] == 0  # the server kept listening: every redial worked
        assert len(kills) >= 3, kills  # the faults did happen while the workers ran
        assert stats.broken + stats.stale > 0

        # Never re-sent: every request reached the server at most once, and the
        # ones that were answered exactly once.
        assert rr_server.duplicates() == {}
        applied = rr_server.applied_counts()
        assert all(applied.get(request_id) == 1 for request_id in ok_requests)

        # Afterwards every member works.
        held = [pool.get(timeout=0) for _ in range(SIZE)]
        try:
            for n, conn in enumerate(held):
                conn.sendall(f"final-{n} x\n".encode())
                line = b""
                while not line.endswith(b"\n"):
                    line += conn.recv(64)
                assert line == f"final-{n} 1\n".encode()
        finally:
            for conn in held:
                pool.put(conn)
