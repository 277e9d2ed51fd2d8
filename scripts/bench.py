#!/usr/bin/env python3
"""gocp side by side with its floor and with other Python pools, in one process.

    .venv/bin/python scripts/bench.py                 # everything (about 1.5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # a smoke run (under 30 s)
    .venv/bin/python scripts/bench.py --only uncontended,roundtrip --json out.json
    .venv/bin/python scripts/bench.py --only roundtrip --server threads
    .venv/bin/python scripts/bench.py --baseline /work/baseline   # with "gocp before" rows
    .venv/bin/python scripts/bench.py --plot docs/bench.svg       # and the ratios as a chart

Install the peers (and matplotlib, for ``--plot``) with ``pip install -e '.[bench]'``.
This script is the entry point; the benchmark itself is the package ``benchkit`` beside
it (``benchkit/__init__.py`` lists its parts), one module per scenario in
``benchkit/scenarios/``, each described in its docstring. The targets of issues 2, 4,
10, 11 and 13, and of the restructure's issue, "restruct", are checked at the end.

- ``uncontended``: get+put, pool of 8, one thread; also ``gocp.pool`` of clients
  against psycopg_pool's pool of stand-in connections.
- ``contended``: 16 threads sharing a pool of 4: wall time per operation,
  throughput, fairness, worst and p99 wait in ``get``, a first-come-first-served check.
- ``roundtrip``: a 64-byte echo through a pooled member, 1 and 8 threads; the
  floor is a raw socket held by the caller. The echo server runs in a subprocess
  (``--server``: ``epoll``, one selector thread; ``threads``, one per connection).
- ``lifecycle``: get+put with each pool's health-check and lifetime policies on,
  over the same pool with none.
- ``size``: get+put on a pool of 1,000 over a pool of 8.
- ``memory``: ``tracemalloc`` bytes per idle member holding a connected socket.
- ``import``: wall time of ``python -c "import X"`` minus ``python -c "pass"``.
- ``kinds``: every pool kind (gocp.new, gocp.pool of trivial clients, gocp.keyed,
  gocp.cluster) over a single pool of the same members: get+put, 16 threads on 4
  members and the echo round trip (1 and 8 threads), the last two in each placement.
- ``tls``: the round trip over TLS, one thread, against a raw ``ssl`` socket.
- ``aio``: gocp.aio against asyncio floors and psycopg_pool's
  ``AsyncConnectionPool``, on asyncio's loop and uvloop; its round trips in each
  placement.

Placements: the contended and round-trip runs (of every scenario) are repeated with the benchmark's
threads (and the echo server) pinned: ``one-cpu`` (all on CPU 0: the shortest round
trip, about 8 us, so the harshest ratio), ``split`` (benchmark on CPU 0, server on
CPU 1: a one-thread round trip waits for an idle CPU to wake, about 67 us on these
VMs) and ``os`` (no pinning: the OS flips between those regimes from run to run, so
its figures are the least reproducible). ``--placement`` picks some.

Reference rows: ``fair floor`` is the least a first-come-first-served pool can do (a
lock, two deques, a lock per waiter, no checks); the round trips also show raw
sockets inside the floor pool and the fair floor pool, which is what any shared pool
costs before doing anything of its own.

``--baseline PATH``: a directory holding the package ``gocp_before`` (gocp before the
restructure, the same API as the old ``gocp.new``); the uncontended, contended,
round-trip and memory tables then get a "gocp before" row with the "gocp" row's
settings, and the targets give "gocp vs gocp before" for uncontended get+put and every
round trip (at most 1.05x) and for memory per idle member (issue 13: at most +16 B).

``--plot PATH``: an SVG chart of the run: a panel per table, each row's median as a
bar over the table's floor (1.0, the dotted line; the size table's rows are
already ratios), its min and max as a whisker, and the targets that apply to a row
as a mark on that row at the limit, labelled with the issue and the result. Tables
without ratios (memory, import) are left out.

Method: every figure is the median of several samples (min and max shown);
samples of the different subjects are interleaved so drift hits them alike.
A sample is one ``time.perf_counter`` interval around a batch of many
operations (about 50 ms; 16-thread samples 0.25 s). The garbage collector
is disabled during timed loops (it has next to nothing to collect there, and
a collection landing in one sample but not another is pure noise). Rows whose
samples spread more than 1.5x (max over min) are marked "~": on a machine
shared with other work, read those medians with care. Ratios: "x floor"
divides by the floor of the same table, "x best" by the best peer of the
same table (the fastest, or for throughput the highest); the targets table
also gives each ratio from the fastest samples ("by min"). This is a
report: it exits 0 whatever the figures say.
"""

from __future__ import annotations

import sys

from benchkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
