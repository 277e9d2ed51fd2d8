"""The cluster demo: three servers, one killed and restarted, the share of each live.

Three echo servers on three loopback addresses; worker threads make round
trips through one ``gocp.cluster``; halfway through the first act one server
stops (its share moves to the other two at once, with no failed request
beyond those in flight), then it comes back (it takes its share again). Every
second a line shows each server's share of the gets and its state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import gocp
from gocp.testing import EchoServer

from ._demo import _percentile, _Tally, _worker


def run_cluster(*, seconds: float, workers: int, size: int, log: object) -> int:
    """Run the cluster demo; 0 when every server is back in the rotation at the end."""
    servers = [EchoServer(host=f"127.0.0.{n}").start() for n in (1, 2, 3)]
    victim = servers[1]
    names = [server.address_text for server in servers]
    cluster = gocp.cluster(
        names, size=size, logger=log, retry_min=0.05, retry_max=0.5, dial_timeout=1.0
    )
    print(
        f"gocp cluster demo: echo servers on {', '.join(names)}; {workers} workers, "
        f"{size} members per server"
    )
    print("  time    ok/s  failed   p50 ms  share of gets per server (state)")
    tally = _Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_worker, args=(cluster, tally, stop, n), name=f"demo-{n}")
        for n in range(workers)
    ]
    script: list[tuple[float, str, Callable[[], object]]] = [
        (seconds * 0.3, f"server {victim.address_text} stops", victim.stop),
        (seconds * 0.6, f"server {victim.address_text} back", victim.start),
    ]
    totals = {"ok": 0, "failed": 0}
    last: dict[str, int] = dict.fromkeys(names, 0)
    shares: dict[str, int] = {}
    began = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        next_tick = began + 1.0
        while (now := time.monotonic()) < began + seconds:
            while script and now - began >= script[0][0]:
                _, what, action = script.pop(0)
                print(f"  >>> {now - began:5.1f}s  fault: {what}")
                action()
            stop.wait(max(0.0, min(next_tick, began + seconds) - now))
            if time.monotonic() < next_tick:
                continue
            next_tick += 1.0
            ok, failed, latencies = tally.take()
            totals["ok"] += ok
            totals["failed"] += sum(failed.values())
            stats = cluster.stats()
            shares = {}
            parts = []
            for name in names:
                lends = stats.servers[name].pool.lends
                shares[name] = lends - last[name]
                last[name] = lends
            total = sum(shares.values()) or 1
            for name in names:
                state = stats.servers[name].state
                parts.append(f"{name} {100 * shares[name] / total:3.0f}% ({state})")
            print(
                f"  {time.monotonic() - began:5.1f}s {ok:6d} {sum(failed.values()):7d} "
                f"{_percentile(latencies, 0.5) * 1e3:8.3f}  " + "  ".join(parts)
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(5.0)
        ok, failed, _ = tally.take()
        totals["ok"] += ok
        totals["failed"] += sum(failed.values())
        final = cluster.stats()
        cluster.close()
        for server in servers:
            server.stop()
    back = bool(shares) and all(shares[name] > 0 for name in names)
    up = all(final.servers[name].state == "up" for name in names)
    print()
    print("summary")
    print(f"  requests ok      {totals['ok']}")
    print(
        f"  requests failed  {totals['failed']}  (in flight when the server stopped; never re-sent)"
    )
    for name in names:
        pool = final.servers[name].pool
        print(
            f"  {name:<16} gets {pool.lends:7d}  dials {pool.dials} ({pool.dial_failures} failed)"
        )
    print(
        "  recovered by itself: "
        + (
            "yes - every server is up and took its share in the last second"
            if back and up
            else "NO"
        )
    )
    return 0 if back and up else 1
