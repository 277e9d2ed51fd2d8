"""A randomized, seeded soak: many threads through one pool while faults rain down.

Twelve worker threads send uniquely numbered requests to a
``RequestReplyServer`` through a pool whose members connect via a
``FaultProxy``; a fault thread keeps injecting random faults into the proxy
and the server (resets, kills, refusing, latency, slicing, cuts, blackholes,
stalls, bandwidth limits, slow closes, server restarts, server-side resets
and stalls). Every invariant of "nothing lost" is checked, continuously and
at the end:

- no request is ever applied twice (each id is sent once);
- every request the caller saw succeed was applied exactly once, and its
  reply said so; a request that failed with ``DialError`` (nothing sent) was
  never applied;
- no member is lent to two callers at once;
- every blocking call (``get``, ``sendall``, each ``recv``) returned within
  its bound plus a margin;
- the gauges always add up, and at the end the pool is back to its full
  size of usable members, with no thread or descriptor left.

``GOCP_SOAK_SECONDS`` (default 45) sets the duration and ``GOCP_SOAK_SEED``
replays a run; the seed is printed, and named in every failure message.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from invariants import MARGIN, LendTracker, assert_full_pool, rr_round_trip

import gocp
from gocp.testing import FaultProxy, RequestReplyServer

SECONDS = float(os.environ.get("GOCP_SOAK_SECONDS", "45"))
SEED = int(os.environ.get("GOCP_SOAK_SEED", str(random.SystemRandom().randrange(2**32))))
WORKERS = 12
SIZE = 6
IO_TIMEOUT = 0.5
DIAL_TIMEOUT = 1.0
GET_TIMEOUTS = (0, 0.01, 0.1, 0.5, 2.0)


class Soak:
    """The shared state of one run: the system under test, the ledger and the violations."""

    def __init__(self, seed: int, server: RequestReplyServer, proxy: FaultProxy) -> None:
        self.seed = seed
        self.server = server
        self.proxy = proxy
        self.pool = gocp.new(
            proxy.address,
            size=SIZE,
            io_timeout=IO_TIMEOUT,
            dial_timeout=DIAL_TIMEOUT,
            retry_min=0.01,
            retry_max=0.2,
        )
        self.tracker = LendTracker(self.pool)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.violations: list[str] = []
        self.ok: set[str] = set()
        self.unsent: set[str] = set()  # DialError: nothing of it was sent
        self.indeterminate: set[str] = set()  # ConnectionBroken: may or may not be applied

    def violation(self, text: str) -> None:
        with self.lock:
            if len(self.violations) < 100:
                self.violations.append(text)

    def count(self, what: str) -> None:
        with self.lock:
            self.ops[what] += 1

    def timed(self, what: str, bound: float, call: Callable[[], object]) -> object:
        """Run a blocking call and record a violation if it overran ``bound + MARGIN``."""
        started = time.monotonic()
        try:
            return call()
        finally:
            elapsed = time.monotonic() - started
            if elapsed > bound + MARGIN:
                self.violation(f"{what} took {elapsed:.3f}s, bound {bound}s + {MARGIN}s")

    # -- one request ------------------------------------------------------------------

    def request(self, conn: gocp.PersistentConn, request_id: str) -> None:
        """Send one request and read its reply, timing each blocking call; sort the outcome."""
        line = f"{request_id} soak\n".encode()
        try:
            self.timed("sendall", DIAL_TIMEOUT + IO_TIMEOUT, lambda: conn.sendall(line))
        except gocp.DialError:
            with self.lock:
                self.unsent.add(request_id)
            self.count("dial_error")
            raise
        except gocp.ConnectionBroken:
            with self.lock:
                self.indeterminate.add(request_id)
            self.count("broken")
            raise
        reply = bytearray()
        try:
            while not reply.endswith(b"\n"):
                reply += self.timed("recv", IO_TIMEOUT, lambda: conn.recv(4096))
        except gocp.ConnectionBroken:
            with self.lock:
                self.indeterminate.add(request_id)
            self.count("broken")
            raise
        parts = reply.decode().split()
        if parts != [request_id, "1"]:
            self.violation(f"request {request_id} got reply {bytes(reply)!r}")
        with self.lock:
            self.ok.add(request_id)
        self.count("ok")

    # -- threads ----------------------------------------------------------------------

    def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:worker:{index}")
        serial = 0
        try:
            while not self.stop.is_set():
                if rng.random() < 0.5:
                    # Think time (pacing, not waiting for anything): without it twelve
                    # workers keep a queue in front of six members, and a member put back
                    # would always go straight to a waiter, never to the idle ring.
                    self.stop.wait(rng.uniform(0, 0.004))
                timeout = rng.choice(GET_TIMEOUTS)
                try:
                    conn = self.timed(
                        f"get({timeout})", timeout, lambda t=timeout: self.tracker.get(t)
                    )
                except gocp.PoolTimeout:
                    self.count("pool_timeout")
                    continue
                assert isinstance(conn, gocp.PersistentConn)
                held = [conn]
                try:
                    if rng.random() < 0.1:
                        try:
                            held.append(self.tracker.get(0))  # hold two at once
                        except gocp.PoolTimeout:
                            self.count("pool_timeout")
                    for member in held:
                        serial += 1
                        try:
                            self.request(member, f"w{index}-{serial}")
                        except (gocp.DialError, gocp.ConnectionBroken):
                            pass
                finally:
                    for member in held:
                        self.tracker.put(member, broken=rng.random() < 0.05)
        except BaseException as exc:
            self.violation(f"worker {index} died: {exc!r}")
            self.stop.set()

    def fault_loop(self) -> None:
        rng = random.Random(f"{self.seed}:faults")
        proxy, server = self.proxy, self.server
        directions = ("up", "down", "both")
        kinds: list[tuple[str, Callable[[], None]]] = [
            ("reset", proxy.reset),
            ("reset_after", lambda: proxy.reset(after=rng.uniform(0.01, 0.2))),
            ("kill_fin", proxy.kill_all),
            ("kill_rst", lambda: proxy.kill_all(reset=True)),
            ("refuse", lambda: (proxy.refuse(), proxy.kill_all())),
            ("latency", lambda: proxy.set_latency(rng.uniform(0.01, 0.2), rng.uniform(0, 0.1))),
            ("latency_over_timeout", lambda: proxy.set_latency(IO_TIMEOUT * 1.5, direction="down")),
            ("slice", lambda: proxy.set_slice(rng.randint(1, 64), rng.choice(directions))),
            ("cut_after", lambda: proxy.cut_after(rng.randint(0, 300), rng.choice(directions))),
            ("blackhole", lambda: proxy.blackhole(rng.choice(directions))),
            ("stall", lambda: proxy.stall(rng.choice(directions))),
            ("bandwidth", lambda: proxy.set_bandwidth(rng.choice([2_000, 20_000, 1 << 20]))),
            ("slow_close", lambda: proxy.slow_close(rng.uniform(0.05, 0.5))),
            ("server_restart", lambda: server.restart(reset=rng.random() < 0.5)),
            ("server_kill", lambda: server.kill_connections(reset=rng.random() < 0.5)),
            (
                "server_fail_next",
                lambda: server.fail_next(
                    rng.randint(1, 3),
                    rng.choice(["reset", "close", "stall"]),
                    apply=rng.random() < 0.5,
                ),
            ),
        ]
        try:
            while not self.stop.is_set():
                name, inject = rng.choice(kinds)
                inject()
                with self.lock:
                    self.faults[name] += 1
                self.check_gauges(f"after {name}")
                # Let the fault act for a while (pacing, not waiting for an event).
                self.stop.wait(rng.uniform(0.02, 0.4))
                if rng.random() < 0.8:
                    proxy.heal()
                    proxy.accept()
                self.stop.wait(rng.uniform(0.0, 0.2))
        except BaseException as exc:
            self.violation(f"fault thread died: {exc!r}")
            self.stop.set()
        finally:
            proxy.heal()
            proxy.accept()

    def check_gauges(self, when: str) -> None:
        stats = self.pool.stats()
        if stats.idle + stats.in_use != stats.size or stats.waiting > WORKERS:
            self.violation(f"gauges {when}: {stats}")
        if self.tracker.violations:
            self.violation(f"double lend {when}: {self.tracker.violations[:3]}")

    # -- the verdict ----------------------------------------------------------------------

    def final_checks(self) -> None:
        applied = self.server.applied_counts()
        for request_id, times in self.server.duplicates().items():
            self.violation(f"request {request_id} sent once, applied {times} times")
        for request_id in self.ok:
            if applied.get(request_id, 0) != 1:
                self.violation(f"ok request {request_id} applied {applied.get(request_id, 0)}x")
        for request_id in self.unsent:
            if applied.get(request_id, 0) != 0:
                self.violation(f"request {request_id} failed to dial but was applied")
        for request_id in self.indeterminate:
            if applied.get(request_id, 0) > 1:
                self.violation(f"failed request {request_id} applied {applied[request_id]}x")
        known = self.ok | self.unsent | self.indeterminate
        stray = [rid for rid in applied if rid.startswith("w") and rid not in known]
        if stray:
            self.violation(f"applied requests nobody sent: {stray[:5]}")
        self.violations.extend(self.tracker.violations)


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 60)
def test_soak_many_threads_through_random_faults():
    seed = SEED
    print(f"\nsoak: seed={seed} seconds={SECONDS} (replay: GOCP_SOAK_SEED={seed})")
    with RequestReplyServer() as server, FaultProxy(server.address, seed=seed) as proxy:
        soak = Soak(seed, server, proxy)
        threads = [
            threading.Thread(target=soak.worker, args=(i,), name=f"soak-worker-{i}")
            for i in range(WORKERS)
        ]
        threads.append(threading.Thread(target=soak.fault_loop, name="soak-faults"))
        started = time.monotonic()
        try:
            for thread in threads:
                thread.start()
            soak.stop.wait(SECONDS)
        finally:
            soak.stop.set()
            for thread in threads:
                thread.join(10.0)
        alive = [thread.name for thread in threads if thread.is_alive()]
        assert not alive, f"seed={seed}: threads stuck: {alive}"
        elapsed = time.monotonic() - started
        try:
            assert_full_pool(soak.pool, rr_round_trip(server), recover_within=5.0)
        except AssertionError as exc:
            soak.violation(f"pool not back to full size at the end: {exc}")
        soak.final_checks()
        stats = soak.pool.stats()
        soak.pool.close()

    total = sum(soak.ops.values())
    print(
        f"soak: seed={seed} {elapsed:.1f}s ops={total} ({dict(sorted(soak.ops.items()))}) "
        f"faults={sum(soak.faults.values())} ({dict(sorted(soak.faults.items()))}) "
        f"violations={len(soak.violations)}"
    )
    print(f"soak: pool {stats}")
    assert not soak.violations, f"seed={seed}: " + "\n".join(soak.violations[:20])
    assert soak.ops["ok"] > 100, f"seed={seed}: too few successful requests: {soak.ops}"
    assert sum(soak.faults.values()) > 10, f"seed={seed}: too few faults: {soak.faults}"
