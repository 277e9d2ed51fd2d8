"""The main job, shown live: worker threads through a pool while the server misbehaves.

An echo server on loopback; ``workers`` threads make request/reply round
trips through a pool of ``size``; a script of faults runs against the
server (connections reset mid-run, a restart, an outage). Every second a
line shows what the pool did. The summary shows the pool recovered by
itself: the application code below contains no reconnect logic at all.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

import gocp
from gocp.testing import EchoServer


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def success(self, seconds: float) -> None:
        with self.lock:
            self.ok += 1
            self.latencies.append(seconds)

    def failure(self, error: BaseException) -> None:
        with self.lock:
            name = type(error).__name__
            self.failed[name] = self.failed.get(name, 0) + 1

    def take(self) -> tuple[int, dict[str, int], list[float]]:
        with self.lock:
            taken = (self.ok, self.failed, self.latencies)
            self.ok, self.failed, self.latencies = 0, {}, []
            return taken


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _worker(pool: Any, tally: _Tally, stop: threading.Event, number: int) -> None:
    """What an application writes: get, send, receive, put. No reconnect loop."""
    sequence = 0
    while not stop.is_set():
        sequence += 1
        request = f"worker {number} request {sequence}\n".encode()
        started = time.perf_counter()
        try:
            with pool.connection(timeout=2.0) as conn:
                conn.sendall(request)
                reply = b""
                while len(reply) < len(request):
                    reply += conn.recv(len(request) - len(reply))
            if reply != request:
                raise RuntimeError(f"wrong reply {reply!r}")
            tally.success(time.perf_counter() - started)
        except gocp.Error as error:
            tally.failure(error)
            # The request failed and was not re-sent; a real application
            # would report it or retry it if it is idempotent. Pace a little.
            stop.wait(0.02)


def _script(server: EchoServer, seconds: float) -> list[tuple[float, str, Callable[[], None]]]:
    def outage() -> None:
        server.stop()

    def back() -> None:
        server.start()

    return [
        (
            seconds * 0.15,
            "reset every connection (RST mid-request)",
            lambda: server.kill_connections(reset=True),
        ),
        (seconds * 0.30, "server stops: outage begins", outage),
        (seconds * 0.40, "server back on the same port", back),
        (seconds * 0.55, "server restarts (close + re-bind)", server.restart),
        (
            seconds * 0.70,
            "reset every connection again",
            lambda: server.kill_connections(reset=True),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gocp demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run")
    parser.add_argument("--workers", type=int, default=8, help="application threads")
    parser.add_argument("--size", type=int, default=4, help="pool size")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three servers in a cluster, one stopped and restarted",
    )
    args = parser.parse_args(argv)

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    )
    log = structlog.get_logger()
    if args.cluster:
        from ._demo_cluster import run_cluster  # noqa: PLC0415 - one demo at a time

        return run_cluster(seconds=args.seconds, workers=args.workers, size=args.size, log=log)
    server = EchoServer().start()
    tally = _Tally()
    stop = threading.Event()
    totals = {"ok": 0, "failed": 0}
    failures: dict[str, int] = {}
    print(
        f"gocp demo: echo server on {server.address_text}; "
        f"{args.workers} workers, pool of {args.size}"
    )
    print("  time    ok/s  failed   p50 ms   p99 ms  dials  broken  stale  pool")
    pool = gocp.new(server.address, size=args.size, logger=log, retry_min=0.05, retry_max=0.5)
    threads = [
        threading.Thread(target=_worker, args=(pool, tally, stop, n), name=f"demo-worker-{n}")
        for n in range(args.workers)
    ]
    script = _script(server, args.seconds)
    began = time.monotonic()
    last_second_clean = False
    try:
        for thread in threads:
            thread.start()
        next_tick = began + 1.0
        while (now := time.monotonic()) < began + args.seconds:
            while script and now - began >= script[0][0]:
                _, what, action = script.pop(0)
                print(f"  >>> {now - began:5.1f}s  fault: {what}")
                action()
            stop.wait(
                max(0.0, min(next_tick, began + (script[0][0] if script else args.seconds)) - now)
            )
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                ok, failed, latencies = tally.take()
                totals["ok"] += ok
                for name, count in failed.items():
                    failures[name] = failures.get(name, 0) + count
                totals["failed"] += sum(failed.values())
                stats = pool.stats()
                last_second_clean = ok > 0 and not failed
                p50, p99 = _percentile(latencies, 0.5) * 1e3, _percentile(latencies, 0.99) * 1e3
                print(
                    f"  {time.monotonic() - began:5.1f}s {ok:6d} {sum(failed.values()):7d} "
                    f"{p50:8.3f} {p99:8.3f} "
                    f"{stats.dials:6d} {stats.broken:7d} {stats.stale:6d}  "
                    f"idle={stats.idle} in_use={stats.in_use} waiting={stats.waiting}"
                )
    finally:
        stop.set()
        for thread in threads:
            thread.join(5.0)
        ok, failed, _ = tally.take()
        totals["ok"] += ok
        totals["failed"] += sum(failed.values())
        for name, count in failed.items():
            failures[name] = failures.get(name, 0) + count
        stats = pool.stats()
        pool.close()
        server.stop()
    recovered = last_second_clean and stats.idle == stats.size
    print()
    print("summary")
    print(f"  requests ok      {totals['ok']}")
    print(f"  requests failed  {totals['failed']}  {failures or ''}  (never re-sent by gocp)")
    print(
        f"  dials            {stats.dials} ({stats.dial_failures} failed), "
        f"broken {stats.broken}, stale replaced {stats.stale}"
    )
    print(f"  pool at the end  size={stats.size} idle={stats.idle} in_use={stats.in_use}")
    print(
        "  recovered by itself: "
        + ("yes - the last second ran clean and every member is back" if recovered else "NO")
    )
    return 0 if recovered else 1
