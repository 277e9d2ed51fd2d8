#!/usr/bin/env python3
"""gocp side by side with its floor and with other Python pools, in one process.

    .venv/bin/python scripts/bench.py                 # everything (about 1.5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # a smoke run (under 30 s)
    .venv/bin/python scripts/bench.py --only uncontended,roundtrip --json out.json
    .venv/bin/python scripts/bench.py --only roundtrip --server threads
    .venv/bin/python scripts/bench.py --baseline /work/baseline   # with "gocp before" rows

Scenarios (issue 4; the targets of issues 2 and 4, and of the restructure's issue,
"restruct", are checked at the end):

- ``uncontended``: get+put, pool of 8, one thread; also gocp's pool of clients,
  ``gocp.pool(object, size=8)`` (every member dialled before timing), with
  its ratio to psycopg_pool's (a pool of stand-in connection objects).
- ``contended``: 16 threads sharing a pool of 4 doing get+put: wall time per
  operation, throughput, Jain's fairness index over the threads' operation
  counts, the worst and 99th-percentile wait in ``get`` (a separate run that
  times each get), and a first-come-first-served check (8 callers queue one
  by one on an exhausted pool, then each takes a member, puts it back and
  asks again: a FCFS pool serves 0..7 then 0..7; a pool that lets the
  returning caller barge ahead serves it twice in a row).
- ``roundtrip``: a 64-byte echo through a pooled member, 1 thread on a pool of
  8 and 8 threads on a pool of 8; the floor is a raw socket held by the
  caller (8 threads: 8 raw sockets). The echo server runs in a subprocess,
  so it never competes with the client for the GIL: by default one
  selector thread for all connections (``--server threads``: a blocking
  thread per connection, which makes a pool that lends its members in turn
  pay for waking a different server thread on every request; the
  "raw sockets used in turn" row shows that cost without any pool). Every
  socket (raw, gocp's, the peers') has ``TCP_NODELAY`` and a 30 s timeout,
  as gocp's members have by default.
- placements: the contended and round-trip runs are repeated with the
  benchmark's threads (and the echo server) pinned: ``one-cpu`` (all on CPU 0:
  the shortest round trip, about 8 us, so the harshest ratio), ``split``
  (benchmark on CPU 0, server on CPU 1: a one-thread round trip waits for an
  idle CPU to wake, about 67 us on these VMs) and ``os`` (no pinning: the OS
  flips between those regimes from run to run, so its figures are the least
  reproducible). ``--placement`` picks some.
- reference rows: ``fair floor`` is the least a first-come-first-served
  pool can do (a lock, two deques, a lock per waiter, no checks); the round
  trips also show raw sockets inside the floor pool and the fair floor pool,
  which is what any shared pool costs before doing anything of its own.
- ``--baseline PATH``: a directory holding the package ``gocp_before``
  (gocp before the restructure, the same API as the old ``gocp.new``); the
  uncontended, contended and round-trip tables then get a "gocp before" row
  with the "gocp" row's settings, and the targets give "gocp vs gocp
  before" for uncontended get+put and every round trip (at most 1.05x).
- ``lifecycle``: get+put with each pool's health-check and lifetime policies
  on; a check is a no-op callback, so what is timed is the pool's machinery.
  gocp, for ``gocp.new`` and ``gocp.pool`` alike: ``check_interval=30`` with
  a ``check`` hook, ``idle_timeout=600``, ``max_lifetime=3600`` and all
  three, each over the same pool with no policies ("x plain"; target: at
  most 1.10x). Every pool is closed (its background thread stopped) after.
- ``size``: get+put cost on a pool of 1,000 over a pool of 8 (every member
  created and cycled once before timing).
- ``memory``: ``tracemalloc`` bytes per idle member of a pool of 1,000 whose
  members hold a connected socket, minus the bytes per raw connected socket.
- ``import``: wall time of ``python -c "import X"`` minus ``python -c "pass"``.
- ``tls``: the round trip over TLS (issue 12), one thread: a raw ``ssl`` socket held by the
  caller (the floor) against gocp with ``ssl=`` (a pool of 1, and a pool of 8 lent in
  turn, beside 8 raw TLS sockets used in turn). The server is the echo subprocess in
  ``threads`` mode wrapping each connection in TLS, with a certificate ``trustme`` makes.
- ``aio``: gocp.aio against asyncio floors and psycopg_pool's
  ``AsyncConnectionPool``, on asyncio's loop and uvloop (``scripts/bench_aio.py``).
- ``kinds``: keyed pools and clusters over a single pool of the same kind:
  get+put with socket members and with clients, and the echo round trip (1
  and 8 threads; three echo server processes; issue 10's target: keyed and
  cluster get+put at most 1.5x a single pool's).

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

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import cycle, islice, repeat
from pathlib import Path
from typing import Any

import bench_aio
from bench_peers import PEERS, Peer, Subject

import gocp

perf = time.perf_counter
MSG = bytes(range(64))  # the round trip's message
IO_TIMEOUT = 30.0  # gocp's default io_timeout; every socket in the round trips gets it
NOISY = 1.5  # max/min spread of a row's samples beyond which its figures are flagged
SCENARIOS = (
    "uncontended",
    "contended",
    "roundtrip",
    "lifecycle",
    "size",
    "memory",
    "import",
    "kinds",
    "tls",
    "aio",
)


# -- settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: int  # samples per subject for timing scenarios
    sample: float  # seconds per single-thread sample
    contended_seconds: float  # seconds per 16-thread sample
    fairness_runs: int  # timed-get runs for the worst wait
    rt_sample: float  # seconds per round-trip sample
    rt_repeats: int  # round-trip samples per subject (more, shorter: loopback is noisy)
    members: int  # the memory scenario's pool size
    import_runs: int
    server: str = "epoll"  # the echo server's kind, a key of SERVERS
    placements: tuple[str, ...] = ("one-cpu", "split", "os")  # keys of PLACEMENTS

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 3, 0.01, 0.08, 1, 0.03, 3, 200, 3)
        return cls(False, 7, 0.05, 0.25, 2, 0.02, 25, 1000, 9)


# -- results -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    kind: str  # "floor", "gocp", "peer" or "info" (shown, never the floor or best peer)
    samples: list[float] = field(default_factory=list)
    status: str = ""  # empty when measured, else why not ("not installed", "n/a: ...")
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def noisy(self) -> bool:
        """Samples spread more than NOISY (max over min): the median may mislead."""
        return len(self.samples) > 1 and max(self.samples) > NOISY * min(self.samples)


@dataclass
class Table:
    key: str
    title: str
    unit: str
    higher_is_better: bool = False
    ratios: bool = True
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    columns: list[tuple[str, str, str]] = field(default_factory=list)  # (extra key, head, fmt)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def floor(self) -> Row | None:
        return next((r for r in self.rows if r.kind == "floor" and r.samples), None)

    def best_peer(self) -> Row | None:
        peers = [r for r in self.rows if r.kind == "peer" and r.samples]
        if not peers:
            return None
        pick = max if self.higher_is_better else min
        return pick(peers, key=lambda r: r.median or 0.0)

    def ratio(self, row: Row, to: Row | None) -> float | None:
        if to is None or not row.samples or not to.median:
            return None
        return (row.median or 0.0) / to.median


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(table: Table) -> None:
    floor, best = table.floor(), table.best_peer()
    print(f"\n== {table.title}")
    for note in table.notes:
        print(f"   {note}")
    head = f"   {'subject':<58}{'median':>9}{'min':>9}{'max':>9}"
    if table.ratios:
        head += f"{'x floor':>9}{'x best':>8}"
    for _key, name, _spec in table.columns:
        head += f"  {name}"
    print(head + f"   [{table.unit}]")
    for row in table.rows:
        label = row.name + (" *" if row.kind == "info" else "")
        if not row.samples:
            print(f"   {label:<58}{row.status or 'no data':>9}")
            continue
        line = f"   {label:<58}{_fmt(row.median):>9}"
        line += f"{_fmt(min(row.samples)):>9}{_fmt(max(row.samples)):>9}"
        if table.ratios:
            line += f"{_fmt(table.ratio(row, floor)):>9}{_fmt(table.ratio(row, best)):>8}"
        for key, name, spec in table.columns:
            value = row.extra.get(key)
            text = (
                "-" if value is None else (value if isinstance(value, str) else f"{value:{spec}}")
            )
            line += f"  {text:>{len(name)}}"
        if row.note:
            line += f"   ({row.note})"
        if row.noisy:
            line += "  ~"
        print(line)
    if best is not None and table.ratios:
        print(f"   best peer: {best.name}")
    if any(r.kind == "info" for r in table.rows):
        print("   * for information: neither the floor nor a peer")
    if any(r.noisy for r in table.rows):
        print(f"   ~ noisy: max > {NOISY:g} x min; read its median with care")


def table_json(table: Table) -> dict[str, Any]:
    floor, best = table.floor(), table.best_peer()
    rows = []
    for row in table.rows:
        item: dict[str, Any] = {"name": row.name, "kind": row.kind, "status": row.status or "ok"}
        if row.samples:
            item.update(
                median=row.median,
                min=min(row.samples),
                max=max(row.samples),
                samples=row.samples,
                x_floor=table.ratio(row, floor) if table.ratios else None,
                x_best_peer=table.ratio(row, best) if table.ratios else None,
                noisy=row.noisy,
            )
        item.update(extra=row.extra, note=row.note)
        rows.append(item)
    return {
        "title": table.title,
        "unit": table.unit,
        "higher_is_better": table.higher_is_better,
        "notes": table.notes,
        "floor": floor.name if floor else None,
        "best_peer": best.name if best else None,
        "rows": rows,
    }


# -- timing helpers ------------------------------------------------------------------


@contextmanager
def gc_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def timed(run: Callable[[int], object], n: int) -> float:
    """Seconds for ``run(n)``, the collector off."""
    with gc_off():
        start = perf()
        run(n)
        return perf() - start


def calibrate(run: Callable[[int], object], seconds: float) -> int:
    """An operation count for which ``run`` takes about ``seconds``."""
    n = 16
    while True:
        elapsed = timed(run, n)
        if elapsed >= seconds / 5 or n >= 1 << 26:
            return max(1, int(n * seconds / max(elapsed, 1e-9)))
        n *= 4


def getput_loop(get: Callable[[], Any], put: Callable[[Any], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in repeat(None, n):
            put(get())

    return run


def jain(counts: list[int]) -> float:
    """Jain's fairness index: 1.0 when every thread did as much, 1/n when one did all."""
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return total * total / (len(counts) * squares) if squares else 0.0


# -- where the threads run ------------------------------------------------------------

#: name: (description, CPUs of this process's threads, CPUs of the echo server).
#: On a VM a thread woken on an idle CPU waits tens of microseconds (the "split" round
#: trip of one thread is ~67 us, the "one-cpu" one ~8 us); left to the OS, runs flip
#: between the two. Pinning makes each figure reproducible; every placement is reported.
PLACEMENTS: dict[str, tuple[str, frozenset[int] | None, frozenset[int] | None]] = {
    "one-cpu": ("the benchmark and the echo server share CPU 0", frozenset({0}), frozenset({0})),
    "split": ("the benchmark on CPU 0, the echo server on CPU 1", frozenset({0}), frozenset({1})),
    "os": ("no pinning: the OS places every thread", None, None),
}


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def _pin_process(pid: int | None, cpus: frozenset[int] | None) -> None:
    """Pin every thread of ``pid`` (``None``: this process) to ``cpus`` (``None``: all)."""
    mask = set(range(os.cpu_count() or 1)) if cpus is None else set(cpus)
    tasks = f"/proc/{'self' if pid is None else pid}/task"
    tids = [int(t) for t in os.listdir(tasks)] if os.path.isdir(tasks) else [pid or 0]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, mask)


@contextmanager
def placed(placement: str, server: EchoProcess | None = None) -> Iterator[None]:
    """Run the block with this process (and the echo server) pinned as ``placement`` says."""
    _what, client, server_cpus = PLACEMENTS[placement]
    if placement != "os" and not can_pin():
        raise RuntimeError("pinning needs os.sched_setaffinity and 2 CPUs")
    _pin_process(None, client)
    if server is not None:
        _pin_process(server.proc.pid, server_cpus)
    try:
        yield
    finally:
        _pin_process(None, None)
        if server is not None:
            _pin_process(server.proc.pid, None)


def placed_key(key: str, placement: str) -> str:
    return f"{key}@{placement}"


# -- the floor and gocp --------------------------------------------------------------


class FloorPool:
    """The floor: a deque guarded by a threading.Condition, and nothing more."""

    def __init__(self, size: int) -> None:
        self._dq: deque[object] = deque(object() for _ in range(size))
        self._cond = threading.Condition()

    def get(self) -> object:
        with self._cond:
            while not self._dq:
                self._cond.wait()
            return self._dq.popleft()

    def put(self, item: object) -> None:
        with self._cond:
            self._dq.append(item)
            self._cond.notify()


FLOOR_NAME = "floor: deque + threading.Condition"


class FairFloorPool:
    """The least a first-come-first-served pool does: under one lock, a deque of idle
    items and a deque of waiters, each waiting on its own lock; a put hands its item
    straight to the first waiter. No checks, no counters: a lower bound for gocp."""

    def __init__(self, size: int) -> None:
        self._idle: deque[object] = deque(object() for _ in range(size))
        self._waiters: deque[list[Any]] = deque()
        self._lock = threading.Lock()

    def get(self) -> object:
        lock = self._lock
        lock.acquire()
        if self._idle:
            item = self._idle.popleft()
            lock.release()
            return item
        waiter = [threading.Lock(), None]
        waiter[0].acquire()
        self._waiters.append(waiter)
        lock.release()
        waiter[0].acquire()
        return waiter[1]

    def put(self, item: object) -> None:
        lock = self._lock
        lock.acquire()
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter[1] = item
            waiter[0].release()
        else:
            self._idle.append(item)
        lock.release()


FAIR_FLOOR_NAME = "fair floor: FIFO hand-off to queued waiters"
PSYCOPG_NAME = next((p.name for p in PEERS if p.module == "psycopg_pool"), "psycopg_pool")


def fair_floor_subject(size: int) -> Subject:
    pool = FairFloorPool(size)
    return Subject(FAIR_FLOOR_NAME, pool.get, pool.put, lambda: None)


def floor_subject(size: int) -> Subject:
    pool = FloorPool(size)
    return Subject(FLOOR_NAME, pool.get, pool.put, lambda: None)


def gocp_subject(size: int, address: tuple[str, int] = ("127.0.0.1", 9), **options: Any) -> Subject:
    pool = gocp.new(address, size=size, **options)
    return Subject("gocp", pool.get, pool.put, pool.close)


CLIENTS_NAME = "gocp.pool (clients)"


def clients_subject(size: int, name: str = CLIENTS_NAME, **options: Any) -> Subject:
    """A ``gocp.pool`` of plain objects, every member dialled (so no timed get dials)."""
    pool = gocp.pool(object, size=size, **options)
    try:
        held = [pool.get(timeout=5.0) for _ in range(size)]
        for client in held:
            pool.put(client)
    except BaseException:
        pool.close()
        raise
    return Subject(name, pool.get, pool.put, pool.close)


#: The package ``gocp_before`` (gocp before the restructure), when ``--baseline`` gives one.
_before: Any = None
BEFORE_NAME = "gocp before"


def load_baseline(path: str) -> Any:
    """Import ``gocp_before`` from the directory ``path`` (its classes report their own
    ``__module__``, so attrs keeps them apart from gocp's)."""
    global _before
    if not (Path(path) / "gocp_before" / "__init__.py").is_file():
        raise ValueError(f"no package gocp_before in {path!r}")
    sys.path.insert(0, str(Path(path).resolve()))
    import gocp_before  # type: ignore[import-not-found]

    _before = gocp_before
    return gocp_before


def gocp_subjects(
    size: int, address: tuple[str, int] = ("127.0.0.1", 9)
) -> list[tuple[Row, Subject]]:
    """gocp's row and, with ``--baseline``, the "gocp before" row with the same settings."""
    subjects = [(Row("gocp", "gocp"), gocp_subject(size, address))]
    if _before is not None:
        pool = _before.new(address, size=size)
        subjects.append(
            (Row(BEFORE_NAME, "gocp"), Subject(BEFORE_NAME, pool.get, pool.put, pool.close))
        )
    return subjects


def peer_rows(
    table: Table,
    make: Callable[[Peer], list[Subject]],
    reason: Callable[[Peer], str | None],
) -> list[tuple[Row, Subject]]:
    """Build each installed peer's subjects; rows for the others say why not."""
    built = []
    for peer in PEERS:
        why = peer.missing() or reason(peer)
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
            continue
        try:
            subjects = make(peer)
        except Exception as exc:
            table.rows.append(Row(peer.name, "peer", status=f"error: {exc!r}"[:60]))
            continue
        for subject in subjects:
            row = Row(subject.name, "peer", note=subject.note)
            table.rows.append(row)
            built.append((row, subject))
    return built


def close_all(subjects: list[tuple[Row, Subject]]) -> None:
    for _row, subject in subjects:
        try:
            subject.close()
        except Exception as exc:
            print(f"   ({subject.name}: close failed: {exc!r})")


def run_interleaved(
    cfg: Settings,
    subjects: list[tuple[Row, Subject]],
    make_run: Callable[[Subject], Callable[[int], None]],
    scale: float = 1e6,
) -> None:
    """Calibrate each subject's loop, then take ``cfg.repeats`` samples of each in turn."""
    plans = []
    for row, subject in subjects:
        run = make_run(subject)
        try:
            run(200)  # warm up
            n = calibrate(run, cfg.sample)
        except Exception as exc:
            row.status = f"error: {exc!r}"[:60]
            continue
        plans.append((row, run, n))
    for _ in range(cfg.repeats):
        for row, run, n in plans:
            row.samples.append(timed(run, n) / n * scale)


# -- scenario: uncontended get+put ---------------------------------------------------


def scenario_uncontended(cfg: Settings) -> list[Table]:
    table = Table(
        "uncontended",
        "uncontended get+put: pool of 8, 1 thread",
        "us/op",
        notes=[
            f"{cfg.repeats} samples of ~{cfg.sample * 1000:.0f} ms each per subject, gc off",
            f"{CLIENTS_NAME}: gocp.pool(object, size=8), every member dialled "
            "before timing; 'x psycopg_pool': over psycopg_pool's pool of stand-ins",
        ],
        columns=[("x_psycopg", "x psycopg_pool", ".2f")],
    )
    ctx_pool = gocp.new(("127.0.0.1", 9), size=8)
    ctx_name = "gocp, with pool.connection() (context manager)"
    ctx = Subject(ctx_name, ctx_pool.get, ctx_pool.put, ctx_pool.close)
    subjects: list[tuple[Row, Subject]] = [
        (Row(FLOOR_NAME, "floor"), floor_subject(8)),
        *gocp_subjects(8),
        (Row(ctx_name, "info"), ctx),
    ]
    table.rows += [row for row, _subject in subjects]
    subjects += peer_rows(table, lambda p: [p.dummy(8)], lambda p: None)
    # gocp.pool of plain objects, shown just above psycopg_pool (also a pool of clients).
    clients = Row(CLIENTS_NAME, "gocp")
    psycopg = table.row(PSYCOPG_NAME)
    table.rows.insert(table.rows.index(psycopg) if psycopg else len(table.rows), clients)
    try:
        subjects.append((clients, clients_subject(8)))
    except Exception as exc:
        clients.status = f"error: {exc!r}"[:60]

    def make_run(subject: Subject) -> Callable[[int], None]:
        if subject is not ctx:
            return getput_loop(subject.get, subject.put)
        connection = ctx_pool.connection

        def run(n: int) -> None:
            for _ in repeat(None, n):
                with connection():
                    pass

        return run

    try:
        run_interleaved(cfg, subjects, make_run)
    finally:
        close_all(subjects)
    if psycopg is not None:
        clients.extra["x_psycopg"] = table.ratio(clients, psycopg)
    return [table]


# -- scenario: 16 threads on a pool of 4 ---------------------------------------------


def run_threads(
    subject: Subject, threads: int, seconds: float, time_gets: bool
) -> tuple[list[int], float, list[float]]:
    """``threads`` threads doing get+put for ``seconds``: (ops per thread, wall time, waits)."""
    get, put = subject.get, subject.put
    stop = False
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    ends = [0.0] * threads
    waits: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    batch = 16

    def work(index: int) -> None:
        done = 0
        mine = waits[index]
        try:
            barrier.wait()
            if time_gets:
                clock = perf
                while not stop:
                    for _ in repeat(None, batch):
                        start = clock()
                        item = get()
                        mine.append(clock() - start)
                        put(item)
                    done += batch
            else:
                while not stop:
                    for _ in repeat(None, batch):
                        put(get())
                    done += batch
        except BaseException as exc:
            errors.append(exc)
        counts[index] = done
        ends[index] = perf()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    with gc_off():
        barrier.wait()
        start = perf()
        time.sleep(seconds)
        stop = True
        for worker in workers:
            worker.join(seconds + 30.0)
    if errors or any(worker.is_alive() for worker in workers):
        raise RuntimeError(f"{subject.name}: workers failed or hung: {errors[:1]!r}")
    return counts, max(ends) - start, [w for mine in waits for w in mine]


def fcfs_check(subject: Subject, size: int, callers: int = 8, gap: float = 0.005) -> str:
    """Queue ``callers`` one by one on an exhausted pool; see whether they are served in order.

    Each caller takes a member, records itself, puts it back and asks again
    (so a pool that lets the returning caller barge ahead of the queue shows
    it). A FCFS pool serves 0..n-1 then 0..n-1.
    """
    held = [subject.get() for _ in range(size)]
    served: list[int] = []

    def caller(index: int) -> None:
        for _ in range(2):
            item = subject.get()
            served.append(index)
            subject.put(item)

    threads = []
    for index in range(callers):
        thread = threading.Thread(target=caller, args=(index,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(gap)  # let it queue before the next one comes (a benchmark may sleep)
    subject.put(held.pop())
    for thread in threads:
        thread.join(10.0)
    for item in held:
        subject.put(item)
    if any(thread.is_alive() for thread in threads):
        return "hung"
    expected = list(range(callers)) * 2
    wrong = sum(a != b for a, b in zip(served, expected, strict=True))
    return "yes" if not wrong else f"no ({wrong}/{len(expected)} out of turn)"


def scenario_contended(cfg: Settings) -> list[Table]:
    # Without an echo server "split" places the benchmark as "one-cpu" does.
    placements = [p for p in cfg.placements if p != "split"]
    if "split" in cfg.placements and "one-cpu" not in placements:
        placements.insert(0, "one-cpu")
    tables = []
    for placement in placements:
        with placed(placement):
            tables.append(contended_table(cfg, placement))
    return tables


def contended_table(cfg: Settings, placement: str) -> Table:
    threads, size = 16, 4
    table = Table(
        placed_key("contended", placement),
        f"{threads} threads sharing a pool of {size}: get+put, wall time per operation "
        f"[{placement}: {PLACEMENTS[placement][0]}]",
        "us/op",
        notes=[
            f"{cfg.repeats} samples of {cfg.contended_seconds:.2f} s per subject, gc off; "
            "us/op = wall time / all threads' operations; switch interval "
            f"{sys.getswitchinterval() * 1000:g} ms",
            "jain: fairness of per-thread op counts (1 = even); worst/p99: wait in get, "
            f"from {cfg.fairness_runs} run(s) timing each get; fcfs: queue-order check",
        ],
        columns=[
            ("mops", "Mop/s", ".3f"),
            ("jain", " jain", ".3f"),
            ("worst_ms", "worst ms", ".2f"),
            ("p99_us", " p99 us", ".1f"),
            ("fcfs", "fcfs", ""),
        ],
    )
    subjects: list[tuple[Row, Subject]] = [
        (Row(FLOOR_NAME, "floor"), floor_subject(size)),
        (Row(FAIR_FLOOR_NAME, "info"), fair_floor_subject(size)),
        *gocp_subjects(size),
    ]
    table.rows += [row for row, _subject in subjects]
    subjects += peer_rows(table, lambda p: [p.dummy(size)], lambda p: p.no_waiting)
    live = []
    try:
        for row, subject in subjects:
            try:
                for _ in range(100):
                    subject.put(subject.get())
                run_threads(subject, threads, min(0.05, cfg.contended_seconds), False)
                row.extra["fcfs"] = fcfs_check(subject, size)
            except Exception as exc:
                row.status = f"error: {exc!r}"[:60]
                continue
            live.append((row, subject))
        for _ in range(cfg.repeats):
            for row, subject in live:
                counts, wall, _ = run_threads(subject, threads, cfg.contended_seconds, False)
                total = sum(counts)
                row.samples.append(wall / total * 1e6)
                row.extra.setdefault("_mops", []).append(total / wall / 1e6)
                row.extra.setdefault("_jain", []).append(jain(counts))
        for _ in range(cfg.fairness_runs):
            for row, subject in live:
                _, _, waits = run_threads(subject, threads, cfg.contended_seconds, True)
                waits.sort()
                worst = row.extra.get("worst_ms", 0.0)
                row.extra["worst_ms"] = max(worst, waits[-1] * 1000)
                p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1e6
                row.extra.setdefault("_p99", []).append(p99)
    finally:
        close_all(subjects)
    for row in table.rows:
        if "_mops" in row.extra:
            mops = row.extra.pop("_mops")
            row.extra["mops"] = statistics.median(mops)
            row.extra["jain"] = statistics.median(row.extra.pop("_jain"))
        if "_p99" in row.extra:
            row.extra["p99_us"] = statistics.median(row.extra.pop("_p99"))
    return table


# -- the echo server (a subprocess) --------------------------------------------------

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


_echo: EchoProcess | None = None


def echo_address(mode: str) -> tuple[str, int]:
    global _echo
    if _echo is None:
        _echo = EchoProcess(mode)
    return _echo.address


def make_sock(address: tuple[str, int], timeout: float | None = IO_TIMEOUT) -> socket.socket:
    """A socket configured as gocp configures its members (TCP_NODELAY, timeout)."""
    sock = socket.create_connection(address, timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def close_socks(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# The three round-trip loops below repeat one exchange inline on purpose: a shared
# helper would add the same call to every subject, raw floor included, and so flatter
# every ratio.


def rt_raw(sock: socket.socket, n: int) -> None:
    for _ in repeat(None, n):
        sock.sendall(MSG)
        data = sock.recv(64)
        got = len(data)
        while got < 64:
            data = sock.recv(64 - got)
            if not data:
                raise ConnectionError("echo server closed")
            got += len(data)


def rt_raw_turns(socks: list[socket.socket], n: int) -> None:
    """``n`` round trips, each on the next socket of ``socks`` in turn."""
    for sock in islice(cycle(socks), n):
        sock.sendall(MSG)
        data = sock.recv(64)
        got = len(data)
        while got < 64:
            data = sock.recv(64 - got)
            if not data:
                raise ConnectionError("echo server closed")
            got += len(data)


def rt_pooled(subject: Subject) -> Callable[[int], None]:
    get, put, sock_of = subject.get, subject.put, subject.sock_of

    def run(n: int) -> None:
        for _ in repeat(None, n):
            item = get()
            sock = item if sock_of is None else sock_of(item)
            sock.sendall(MSG)
            data = sock.recv(64)
            got = len(data)
            while got < 64:
                data = sock.recv(64 - got)
                if not data:
                    raise ConnectionError("echo server closed")
                got += len(data)
            put(item)

    return run


def run_rt_threads(runs: list[Callable[[int], None]], n: int) -> float:
    """Each run in its own thread doing ``n`` round trips; the wall time in seconds."""
    barrier = threading.Barrier(len(runs) + 1)
    ends = [0.0] * len(runs)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            runs[index](n)
        except BaseException as exc:
            errors.append(exc)
        ends[index] = perf()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(runs))]
    for worker in workers:
        worker.start()
    with gc_off():
        barrier.wait()
        start = perf()
        for worker in workers:
            worker.join(120.0)
    if errors:
        raise errors[0]
    return max(ends) - start


def roundtrip_table(
    cfg: Settings, address: tuple[str, int], threads: int, size: int, placement: str
) -> Table:
    table = Table(
        placed_key(f"roundtrip_{threads}", placement),
        f"echo round trip, {len(MSG)} B: {threads} thread{'s' if threads > 1 else ''}, "
        f"pool of {size} [{placement}: {PLACEMENTS[placement][0]}]",
        "us/rt",
        notes=[
            f"server: {SERVERS[cfg.server]} (no GIL sharing); "
            f"every socket TCP_NODELAY, timeout {IO_TIMEOUT:g} s",
            f"{cfg.rt_repeats} samples of ~{cfg.rt_sample * 1000:.0f} ms per subject, gc off"
            + ("; us/rt = wall time / all threads' round trips" if threads > 1 else ""),
            f"floor: {threads} raw socket{'s' if threads > 1 else ''} held by the caller",
        ],
    )
    # each subject: (row, one run function per thread, closer)
    plans: list[tuple[Row, list[Callable[[int], None]], Callable[[], None]]] = []
    for name, kind, timeout in (
        (f"floor: raw socket (timeout {IO_TIMEOUT:g} s)", "floor", IO_TIMEOUT),
        ("raw socket, blocking (no timeout)", "info", None),
    ):
        socks = [make_sock(address, timeout) for _ in range(threads)]
        runs = [functools.partial(rt_raw, sock) for sock in socks]
        row = Row(name, kind)
        table.rows.append(row)
        plans.append((row, runs, functools.partial(close_socks, socks)))
    if threads == 1:
        # What a ring pool does to the server: each round trip on the next connection.
        socks = [make_sock(address) for _ in range(size)]
        row = Row(f"{size} raw sockets used in turn (as a ring pool lends them)", "info")
        table.rows.append(row)
        plans.append(
            (row, [functools.partial(rt_raw_turns, socks)], functools.partial(close_socks, socks))
        )
    for name, pool_class in (
        ("floor pool: raw sockets in a deque + Condition", FloorPool),
        ("fair floor pool: raw sockets, FIFO hand-off", FairFloorPool),
    ):
        # The least any pool adds: a shared lock and deque around raw sockets.
        floor_pool = pool_class(0)
        socks = [make_sock(address) for _ in range(size)]
        for sock in socks:
            floor_pool.put(sock)
        row = Row(name, "info")
        table.rows.append(row)
        pooled = rt_pooled(Subject(name, floor_pool.get, floor_pool.put, lambda: None))
        plans.append((row, [pooled] * threads, functools.partial(close_socks, socks)))
    for row, subject in gocp_subjects(size, address):
        table.rows.append(row)
        plans.append((row, [rt_pooled(subject)] * threads, subject.close))
    for row, subject in peer_rows(
        table,
        lambda p: [p.sockets(size, address, functools.partial(make_sock, address))],
        lambda p: p.no_sockets,
    ):
        plans.append((row, [rt_pooled(subject)] * threads, subject.close))
    try:
        sized = []
        for row, runs, _close in plans:
            try:
                run_rt_threads(runs, 50)  # warm up: every member dials
                n = 16
                while (elapsed := run_rt_threads(runs, n)) < cfg.rt_sample / 5:
                    n *= 4
                n = max(1, int(n * cfg.rt_sample / elapsed))
            except Exception as exc:
                row.status = f"error: {exc!r}"[:60]
                continue
            sized.append((row, runs, n))
        for _ in range(cfg.rt_repeats):
            for row, runs, n in sized:
                row.samples.append(run_rt_threads(runs, n) / (n * len(runs)) * 1e6)
    finally:
        for _row, _runs, close in plans:
            close()
    return table


def scenario_roundtrip(cfg: Settings) -> list[Table]:
    address = echo_address(cfg.server)
    tables = []
    for placement in cfg.placements:
        with placed(placement, _echo):
            tables.append(roundtrip_table(cfg, address, 1, 8, placement))
            tables.append(roundtrip_table(cfg, address, 8, 8, placement))
    return tables


# -- scenario: the round trip over TLS --------------------------------------------------


def tls_table(cfg: Settings, server: EchoProcess, client: Any, placement: str) -> Table:
    """One thread's TLS round trips: raw ssl sockets, gocp with ``ssl=``."""
    address, size = server.address, 8
    table = Table(
        placed_key("tls", placement),
        f"TLS echo round trip, {len(MSG)} B: 1 thread [{placement}: {PLACEMENTS[placement][0]}]",
        "us/rt",
        notes=[
            "server: a blocking thread-per-connection TLS echo server in a subprocess; "
            f"every socket TCP_NODELAY, timeout {IO_TIMEOUT:g} s; TLS 1.3, a trustme certificate",
            f"{cfg.rt_repeats} samples of ~{cfg.rt_sample * 1000:.0f} ms per subject, gc off",
            "floor: 1 raw ssl socket held by the caller",
        ],
    )

    def tls_sock() -> socket.socket:
        sock: socket.socket = client.wrap_socket(make_sock(address), server_hostname="127.0.0.1")
        return sock

    subjects: list[tuple[Row, Subject]] = []
    runs: dict[str, Callable[[int], None]] = {}

    def add(row: Row, run: Callable[[int], None], close: Callable[[], None]) -> None:
        table.rows.append(row)
        runs[row.name] = run
        subjects.append((row, Subject(row.name, lambda: None, lambda _: None, close)))

    sock = tls_sock()
    add(
        Row(f"floor: raw ssl socket (timeout {IO_TIMEOUT:g} s)", "floor"),
        functools.partial(rt_raw, sock),
        sock.close,
    )
    socks = [tls_sock() for _ in range(size)]
    add(
        Row(f"{size} raw ssl sockets used in turn (as a ring pool lends them)", "info"),
        functools.partial(rt_raw_turns, socks),
        functools.partial(close_socks, socks),
    )
    for pool_size in (1, size):
        pool = gocp.new(address, size=pool_size, ssl=client)
        name = f"gocp, ssl=, pool of {pool_size}"
        add(Row(name, "gocp"), rt_pooled(Subject(name, pool.get, pool.put, pool.close)), pool.close)
    try:  # the warm-up dials every member (and does its handshake)
        rt = dataclasses.replace(cfg, repeats=cfg.rt_repeats, sample=cfg.rt_sample)
        run_interleaved(rt, subjects, lambda subject: runs[subject.name])
    finally:
        close_all(subjects)
    return table


def scenario_tls(cfg: Settings) -> list[Table]:
    try:
        import ssl

        import trustme
    except ImportError:
        print("\n== tls: needs trustme (pip install -e '.[dev]')")
        return []
    ca = trustme.CA()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    with tempfile.TemporaryDirectory() as directory:
        pem = Path(directory) / "server.pem"
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(pem)
        )
        server = EchoProcess("threads", str(pem))
    try:
        tables = []
        for placement in cfg.placements:
            with placed(placement, server):
                tables.append(tls_table(cfg, server, client, placement))
        return tables
    finally:
        server.close()


# -- scenario: lifecycle policies ----------------------------------------------------


def _no_check(conn: object) -> None:
    """A check hook that finds every connection alive, at no cost."""


#: gocp's lifecycle policies as the lifecycle scenario benches them: row label -> options
#: (``check`` is the keyword of ``gocp.new``/``gocp.pool``, the rest are ``gocp.Options``).
GOCP_LIFECYCLE: dict[str, dict[str, Any]] = {
    "check_interval=30 + check": {"check": _no_check, "check_interval": 30.0},
    "idle_timeout=600": {"idle_timeout": 600.0},
    "max_lifetime=3600": {"max_lifetime": 3600.0},
    "all three": {
        "check": _no_check,
        "check_interval": 30.0,
        "idle_timeout": 600.0,
        "max_lifetime": 3600.0,
    },
}
GOCP_PLAIN = "no policies"

#: gocp's pool kinds in the lifecycle scenario: (kind, row name pattern, pool of 8 with
#: the options it is called with).
GOCP_KINDS: tuple[tuple[str, str, Callable[..., Subject]], ...] = (
    ("sockets", "gocp ({})", functools.partial(gocp_subject, 8)),
    ("clients", "gocp.pool (clients, {})", functools.partial(clients_subject, 8)),
)


def scenario_lifecycle(cfg: Settings) -> list[Table]:
    table = Table(
        "lifecycle",
        "get+put with lifecycle policies on: pool of 8, 1 thread",
        "us/op",
        notes=[
            "health checks are no-op callbacks: this is each pool's policy machinery; "
            "'x plain' = over the same pool without the policies",
            "gocp: gocp.new members (127.0.0.1:9) are never dialled by get+put, so no "
            "connection comes due; gocp.pool members each hold a client (dialled before "
            "timing); pools with policies run their background thread throughout",
        ],
        columns=[("x_plain", "x plain", ".2f")],
    )
    every: list[tuple[Row, Subject]] = []  # every subject timed, shown or not
    base_of: dict[str, Row] = {}  # a row with policies -> the same pool without them
    row = Row(FLOOR_NAME, "floor")
    table.rows.append(row)
    every.append((row, floor_subject(8)))
    try:
        for _kind, pattern, make in GOCP_KINDS:
            plain = Row(pattern.format(GOCP_PLAIN), "gocp")
            for label, options in {GOCP_PLAIN: {}, **GOCP_LIFECYCLE}.items():
                row = plain if not options else Row(pattern.format(label), "gocp")
                table.rows.append(row)
                if options:
                    base_of[row.name] = plain
                try:
                    subject = make(**options)
                except Exception as exc:
                    row.status = f"error: {exc!r}"[:60]
                    continue
                subject.name = row.name
                every.append((row, subject))
        peer_plain: dict[str, Row] = {}  # peer name -> its pool without policies (not shown)
        for row, subject in peer_rows(table, lambda p: p.lifecycle(8), lambda p: p.no_lifecycle):
            every.append((row, subject))
            peer = next((p for p in PEERS if row.name.startswith(p.name + " (")), None)
            if peer is None:
                continue
            if peer.name not in peer_plain:
                peer_plain[peer.name] = Row(peer.name, "info")
                try:
                    every.append((peer_plain[peer.name], peer.dummy(8)))
                except Exception as exc:
                    peer_plain[peer.name].status = f"error: {exc!r}"[:60]
            base_of[row.name] = peer_plain[peer.name]
        run_interleaved(cfg, every, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(every)  # and so stop every background thread
    for row in table.rows:
        base = base_of.get(row.name)
        if base is not None and base.samples and row.samples:
            row.extra["x_plain"] = table.ratio(row, base)
            row.extra["plain"] = base.name
    return [table]


# -- scenario: pool size -------------------------------------------------------------


def scenario_size(cfg: Settings) -> list[Table]:
    small, big = 8, 1000
    table = Table(
        "size",
        f"get+put cost on a pool of {big:,} over a pool of {small}, 1 thread",
        "ratio",
        ratios=False,
        notes=[
            f"every member created and cycled once before timing; {cfg.repeats} samples of each, "
            "interleaved; median/min/max of the per-sample ratio",
        ],
        columns=[("small_us", f"us @{small}", ".2f"), ("big_us", f"us @{big}", ".2f")],
    )
    pairs: list[tuple[Row, Subject, Subject]] = []

    def add(row: Row, make: Callable[[int], Subject]) -> None:
        table.rows.append(row)
        try:
            pairs.append((row, make(small), make(big)))
        except Exception as exc:
            row.status = f"error: {exc!r}"[:60]

    add(Row(FLOOR_NAME, "floor"), floor_subject)
    add(Row("gocp", "gocp"), gocp_subject)
    for peer in PEERS:
        why = peer.missing()
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
        else:
            add(Row(peer.name, "peer"), peer.dummy)
    sizes = {}
    small_rows, big_rows = [], []
    for row, s_small, s_big in pairs:
        for subject, count in ((s_small, small), (s_big, big)):
            held = [subject.get() for _ in range(count)]
            for item in held:
                subject.put(item)
        sizes[row.name] = (Row(row.name, "info"), Row(row.name, "info"))
        small_rows.append((sizes[row.name][0], s_small))
        big_rows.append((sizes[row.name][1], s_big))
    try:
        # interleave small and big of each subject, sample by sample
        every = [x for pair in zip(small_rows, big_rows, strict=True) for x in pair]
        run_interleaved(cfg, every, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(small_rows + big_rows)
    for row, _s, _b in pairs:
        at_small, at_big = sizes[row.name]
        if at_small.samples and at_big.samples:
            row.samples = [b / s for s, b in zip(at_small.samples, at_big.samples, strict=True)]
            row.extra["small_us"] = at_small.median
            row.extra["big_us"] = at_big.median
        else:
            row.status = at_small.status or at_big.status or "error"
    return [table]


# -- scenario: memory per idle member ------------------------------------------------


def _traced(build: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes still allocated after ``build()`` (which keeps its result alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base, keep
    finally:
        tracemalloc.stop()


def _touch(sock: Any) -> None:
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise ConnectionError("echo server did not answer")


def scenario_memory(cfg: Settings) -> list[Table]:
    address = echo_address(cfg.server)
    count = cfg.members
    table = Table(
        "memory",
        f"memory per idle member: pool of {count:,} members each holding a connected socket",
        "B/member",
        ratios=False,
        notes=[
            "tracemalloc bytes still allocated after building the pool and connecting every "
            "member (one 1-byte echo each), / members; 'over socket' subtracts the floor",
            "one measurement per subject (allocation counts barely vary)",
        ],
        columns=[("over", "over socket", ".0f")],
    )

    def sock_maker() -> socket.socket:
        return make_sock(address)

    def raw(n: int) -> list[socket.socket]:
        socks = [sock_maker() for _ in range(n)]
        for sock in socks:
            _touch(sock)
        return socks

    def pooled(make: Callable[[int], Subject]) -> Callable[[int], Subject]:
        def build(n: int) -> Subject:
            subject = make(n)
            held = [subject.get() for _ in range(n)]
            for item in held:
                _touch(item if subject.sock_of is None else subject.sock_of(item))
            for item in held:
                subject.put(item)
            return subject

        return build

    def close_subject(subject: Subject) -> None:
        subject.close()

    candidates: list[tuple[Row, Callable[[int], Any], Callable[[Any], None]]] = [
        (Row("floor: raw connected socket", "floor"), raw, close_socks),
        (Row("gocp", "gocp"), pooled(lambda n: gocp_subject(n, address)), close_subject),
    ]
    for peer in PEERS:
        why = peer.missing() or peer.no_sockets
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
            continue
        make = pooled(lambda n, p=peer: p.sockets(n, address, sock_maker))
        candidates.append((Row(peer.name, "peer"), make, close_subject))
    for row, build, close in candidates:
        table.rows.append(row)
        try:
            close(build(4))  # warm up: lazy imports and caches are not the members' cost
            used, keep = _traced(lambda build=build: build(count))
            close(keep)
        except Exception as exc:
            row.status = f"error: {exc!r}"[:60]
            continue
        row.samples = [used / count]
    table.rows.sort(key=lambda r: ("floor", "gocp", "peer").index(r.kind))
    floor = table.floor()
    for row in table.rows:
        if floor is not None and row.samples and row is not floor:
            row.extra["over"] = (row.median or 0.0) - (floor.median or 0.0)
    return [table]


# -- scenario: import time -----------------------------------------------------------


@functools.cache
def _import_env() -> dict[str, str]:
    """The environment of the import measurements: bytecode cached (in a private prefix,
    written by the first run), as a user's installed package has it, even where
    PYTHONDONTWRITEBYTECODE is set (it is on these machines): compiling the source on
    every run would measure the compiler, not the import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="gocp-bench-pycache-")
    return env


def _wall(code: str) -> float:
    start = perf()
    subprocess.run([sys.executable, "-c", code], check=True, env=_import_env())
    return perf() - start


def _importtime(module: str) -> tuple[int, list[tuple[int, str]]]:
    """``-X importtime``: (cumulative us of ``module``, the imports it pulls in from outside).

    The outside imports are the non-``module`` modules imported directly by
    ``module`` or one of its submodules, with their cumulative time.
    """
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=_import_env(),
    ).stderr
    lines = []  # (cumulative us, level, name), children listed before their parent
    for line in out.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            lines.append((int(match[2]), (len(match[3]) - 1) // 2, match[4]))
    end = next((i for i, (_us, lvl, name) in enumerate(lines) if name == module and lvl == 0), -1)
    if end < 0:
        return 0, []
    start = end
    while start > 0 and lines[start - 1][1] > 0:
        start -= 1
    mine = module + "."
    outside = []
    for i in range(start, end):
        us, level, name = lines[i]
        if name.startswith(mine):
            continue
        parent = next(n for _u, lvl, n in lines[i + 1 : end + 1] if lvl < level)
        if parent == module or parent.startswith(mine):
            outside.append((us, name))
    return lines[end][0], sorted(outside, reverse=True)[:5]


def scenario_import(cfg: Settings) -> list[Table]:
    table = Table(
        "import",
        "import time: python -c 'import X' minus python -c 'pass' (fresh interpreter)",
        "ms",
        ratios=False,
        notes=[
            f"{cfg.import_runs} runs each, interleaved; median/min/max of the differences; "
            "'-X importtime' gives the module's own cumulative figure"
        ],
        columns=[("importtime_ms", "importtime ms", ".1f")],
    )
    modules = [("gocp", "gocp", "gocp")]
    for peer in PEERS:
        why = peer.missing()
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
        elif peer.module not in [m for _n, _k, m in modules]:
            modules.append((peer.name, "peer", peer.module))
    rows = [Row(name, kind) for name, kind, _m in modules]
    table.rows[0:0] = rows
    _wall("pass")
    for _name, _kind, module in modules:  # writes the bytecode each import then reads
        _wall(f"import {module}")
    for _ in range(cfg.import_runs):
        for row, (_name, _kind, module) in zip(rows, modules, strict=True):
            base = _wall("pass")
            row.samples.append((_wall(f"import {module}") - base) * 1000)
    runs = [_importtime("gocp") for _ in range(3)]
    rows[0].extra["importtime_ms"] = statistics.median(r[0] for r in runs) / 1000
    rows[0].extra["biggest"] = [
        {"module": name, "cumulative_ms": us / 1000} for us, name in runs[0][1]
    ]
    table.notes.append(
        "what gocp imports from outside (-X importtime, cumulative): "
        + ", ".join(f"{name} {us / 1000:.1f} ms" for us, name in runs[0][1])
    )
    return [table]


# -- targets -------------------------------------------------------------------------


@dataclass
class Target:
    source: str
    text: str
    value: float | None
    limit: float
    at_most: bool = True
    unit: str = "x"
    detail: str = ""
    boolean: bool = False  # value 0.0 means yes, 1.0 no
    noisy: bool = False  # a row behind the value spread beyond NOISY
    by_min: float | None = None  # the same ratio from the fastest samples, for comparison

    @property
    def result(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return ("PASS" if ok else "FAIL") + (" (noisy)" if self.noisy else "")


#: The source column of the targets the restructure's issue set (gocp vs gocp before,
#: policies on vs off).
RESTRUCTURE = "restruct"


def _median(tables: dict[str, Table], key: str, name: str) -> float | None:
    table = tables.get(key)
    row = table.row(name) if table else None
    return row.median if row and row.samples else None


def _other(table: Table, to: str) -> Row | None:
    """The row compared with: ``"floor"``, ``"peer"`` (the best peer) or a row's name."""
    if to == "floor":
        return table.floor()
    return table.best_peer() if to == "peer" else table.row(to)


def _vs(
    tables: dict[str, Table], key: str, to: str, *, by_min: bool = False, name: str = "gocp"
) -> float | None:
    """Row ``name``'s median over the floor's, the best peer's or row ``to``'s (``by_min``:
    fastest sample over fastest sample, which shrugs off load from other processes better)."""
    table = tables.get(key)
    if table is None:
        return None
    row = table.row(name)
    other = _other(table, to)
    if row is None or other is None or not row.samples or not other.samples:
        return None
    if by_min:
        pick = max if table.higher_is_better else min
        return pick(row.samples) / pick(other.samples)
    return table.ratio(row, other)


def _noisy(tables: dict[str, Table], key: str, to: str | None = None, name: str = "gocp") -> bool:
    """Whether row ``name``, or the row it is compared with, is noisy."""
    table = tables.get(key)
    if table is None:
        return False
    rows = [table.row(name), _other(table, to) if to else None]
    return any(row is not None and row.noisy for row in rows)


def _inverse(value: float | None) -> float | None:
    return 1.0 / value if value else None


def targets(tables: dict[str, Table]) -> list[Target]:
    def vs(
        source: str,
        text: str,
        key: str,
        to: str,
        limit: float,
        *,
        more: bool = False,
        name: str = "gocp",
    ) -> Target:
        """Row ``name``'s median over the floor's, the best peer's or row ``to``'s
        (``more``: the inverse, >= limit)."""
        ratio = _vs(tables, key, to, name=name)
        fastest = _vs(tables, key, to, by_min=True, name=name)
        return Target(
            source,
            text,
            _inverse(ratio) if more else ratio,
            limit,
            at_most=not more,
            noisy=_noisy(tables, key, to, name),
            by_min=_inverse(fastest) if more else fastest,
        )

    out = [
        vs("#2 (a)", "uncontended get+put vs floor", "uncontended", "floor", 2.0),
        vs("#4", "uncontended get+put vs floor", "uncontended", "floor", 1.5),
        vs("#4", "uncontended get+put vs fastest peer", "uncontended", "peer", 0.5),
    ]
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        if key not in tables:
            continue
        where = f" [{placement}]"
        out.append(vs("#4", "16 threads / 4 members vs floor" + where, key, "floor", 3.0))
        text = "16 threads / 4 members: throughput vs fastest peer" + where
        out.append(vs("#4", text, key, "peer", 3.0, more=True))
        fcfs_text = "16 threads / 4 members: first come, first served" + where
        row = tables[key].row("gocp")
        if row is not None and "fcfs" in row.extra:
            fcfs = row.extra["fcfs"]
            detail = (
                f"fcfs={fcfs}; worst wait {row.extra.get('worst_ms', math.nan):.2f} ms, "
                f"p99 {row.extra.get('p99_us', math.nan):.1f} us, "
                f"jain {row.extra.get('jain', math.nan):.3f}"
            )
            value = 0.0 if fcfs == "yes" else 1.0
            out.append(Target("#4", fcfs_text, value, 0.0, unit="", boolean=True, detail=detail))
        else:
            out.append(Target("#4", fcfs_text, None, 0.0, boolean=True))
    for placement in PLACEMENTS:
        for threads in (1, 8):
            key = placed_key(f"roundtrip_{threads}", placement)
            if key not in tables:
                continue
            text = (
                f"echo round trip, {threads} thread{'s' if threads > 1 else ''}, vs raw "
                f"[{placement}]"
            )
            out.append(vs("#2 (c)", text, key, "floor", 1.10))
            out.append(vs("#4", text, key, "floor", 1.05))
    size = tables.get("size")
    size_row = size.row("gocp") if size else None
    out.append(
        Target(
            "#4",
            "pool of 1,000 vs pool of 8",
            _median(tables, "size", "gocp"),
            1.1,
            noisy=bool(size_row and size_row.noisy),
        )
    )
    memory = tables.get("memory")
    gocp_row = memory.row("gocp") if memory else None
    over = gocp_row.extra.get("over") if gocp_row else None
    out.append(Target("#4", "memory per idle member over the socket", over, 2048, unit=" B"))
    out.append(
        Target(
            "#4",
            "import gocp adds",
            _median(tables, "import", "gocp"),
            50,
            unit=" ms",
            noisy=_noisy(tables, "import"),
        )
    )
    # the restructure: gocp against the package before it, and its policies on and off
    if _before is not None:
        if "uncontended" in tables:
            text = "uncontended get+put: gocp vs gocp before"
            out.append(vs(RESTRUCTURE, text, "uncontended", BEFORE_NAME, 1.05))
        for placement in PLACEMENTS:
            for threads in (1, 8):
                key = placed_key(f"roundtrip_{threads}", placement)
                if key in tables:
                    text = (
                        f"echo round trip, {threads} thread{'s' if threads > 1 else ''}, "
                        f"gocp vs gocp before [{placement}]"
                    )
                    out.append(vs(RESTRUCTURE, text, key, BEFORE_NAME, 1.05))
    elif "uncontended" in tables or any(k.startswith("roundtrip_") for k in tables):
        detail = "needs --baseline PATH, a directory holding the package gocp_before"
        text = "gocp within 1.05x of gocp before"
        out.append(Target(RESTRUCTURE, text, None, 1.05, detail=detail))
    if "lifecycle" in tables:
        for kind, pattern, _make in GOCP_KINDS:
            for label in GOCP_LIFECYCLE:
                text = f"get+put, policies on vs off, {kind}: {label}"
                plain = pattern.format(GOCP_PLAIN)
                name = pattern.format(label)
                out.append(vs(RESTRUCTURE, text, "lifecycle", plain, 1.10, name=name))
    return out


def print_targets(found: list[Target], tables: dict[str, Table]) -> None:
    print(
        f"\n== targets (issues 2 and 4; {RESTRUCTURE}: the restructure): a report, not an assertion"
    )
    print(f"   {'issue':<10}{'target':<64}{'gocp':>10}{'limit':>10}{'by min':>9}  result")
    for target in found:
        sign = "<=" if target.at_most else ">="
        value = "-" if target.value is None else f"{target.value:.2f}{target.unit}"
        if target.boolean:
            value = "-" if target.value is None else ("yes" if target.value == 0 else "no")
            limit = "yes"
        else:
            limit = f"{sign}{target.limit:g}{target.unit}"
        by_min = "" if target.by_min is None else f"{target.by_min:.2f}{target.unit}"
        print(
            f"   {target.source:<10}{target.text:<64}{value:>10}{limit:>10}{by_min:>9}"
            f"  {target.result}"
        )
        if target.detail:
            print(f"   {'':<10}  {target.detail}")

    def info(text: str, key: str, to: str, name: str = "gocp") -> None:
        """A ratio with no target: row ``name`` over row ``to`` of table ``key``, if both are."""
        table = tables.get(key)
        if table is None or table.row(name) is None or table.row(to) is None:
            return
        ratio = _vs(tables, key, to, name=name)
        fastest = _vs(tables, key, to, by_min=True, name=name)
        print(
            f"   {'info':<10}{text:<64}{_fmt(ratio):>9}x{'-':>10}{_fmt(fastest):>8}x  reported"
            + ("  (noisy)" if _noisy(tables, key, to, name) else "")
        )

    info(
        "uncontended get+put: gocp.pool (clients) vs psycopg_pool",
        "uncontended",
        PSYCOPG_NAME,
        CLIENTS_NAME,
    )
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        info(f"16 threads / 4 members vs the fair floor [{placement}]", key, FAIR_FLOOR_NAME)
        info(f"16 threads / 4 members: gocp vs gocp before [{placement}]", key, BEFORE_NAME)
    print(
        "   result: from medians; 'by min': the same ratio from each row's fastest sample "
        "(less sensitive to other load, for comparison only)"
    )
    if any(target.noisy for target in found):
        print(
            f"   (noisy): gocp's row or the one it is compared with spread beyond {NOISY:g}x "
            "between samples; rerun on a quiet machine before trusting it"
        )


# -- scenario: pool kinds (keyed pools, clusters) -------------------------------------


def _kind_subject(name: str, pool: Any, get: Callable[[], Any], warm: int) -> Subject:
    """A subject over a keyed pool or cluster (or a single pool), its members dialled."""
    held = [get() for _ in range(warm)]
    for item in held:
        pool.put(item)
    return Subject(name, get, pool.put, pool.close)


def scenario_kinds(cfg: Settings) -> list[Table]:
    """Keyed pools and clusters over a single pool of the same members: get+put (sockets
    and clients) and the echo round trip (1 and 8 threads)."""
    servers = [EchoProcess(cfg.server) for _ in range(3)]
    addresses = [server.address for server in servers]
    first = addresses[0]
    tables = []
    try:
        for kind in ("sockets", "clients"):
            table = Table(
                f"kinds_{kind}",
                f"get+put by pool kind ({kind}): 12 members, 1 thread",
                "us/op",
                notes=[
                    "floor: a single pool (gocp.new / gocp.pool) of 12; keyed: one key of 12; "
                    "cluster: 3 servers x 4",
                    "every member connected before timing; a cluster get probes its "
                    "socket (the stale check, one system call) so that a dead server "
                    "fails over at get"
                    if kind == "sockets"
                    else "clients are plain objects made by the dial hook",
                ],
            )
            subjects: list[tuple[Row, Subject]] = []
            if kind == "sockets":
                single = gocp.new(first, size=12)
                keyed = gocp.keyed(size=12)
                cluster = gocp.cluster(addresses, size=4)
                plan = [
                    (
                        "floor: gocp.new (one address)",
                        "floor",
                        single,
                        lambda p=single: p.get(connect=True),
                        single.get,
                    ),
                    (
                        "gocp.keyed (one key)",
                        "gocp",
                        keyed,
                        lambda p=keyed: p.get(first, connect=True),
                        lambda p=keyed: p.get(first),
                    ),
                    ("gocp.cluster (3 servers)", "gocp", cluster, cluster.get, cluster.get),
                ]
            else:
                single = gocp.pool(object, size=12)
                keyed = gocp.keyed(size=12, dial=lambda key: object())
                cluster = gocp.cluster(["a", "b", "c"], size=4, dial=lambda address: object())
                plan = [
                    ("floor: gocp.pool (clients)", "floor", single, single.get, single.get),
                    (
                        "gocp.keyed (clients, one key)",
                        "gocp",
                        keyed,
                        lambda p=keyed: p.get("a"),
                        lambda p=keyed: p.get("a"),
                    ),
                    (
                        "gocp.cluster (clients, 3 servers)",
                        "gocp",
                        cluster,
                        cluster.get,
                        cluster.get,
                    ),
                ]
            for name, row_kind, pool, warm_get, get in plan:
                row = Row(name, row_kind)
                table.rows.append(row)
                try:
                    _kind_subject(name, pool, warm_get, 12)
                    subjects.append((row, Subject(name, get, pool.put, pool.close)))
                except Exception as exc:
                    row.status = f"error: {exc!r}"[:60]
                    pool.close()
            try:
                run_interleaved(cfg, subjects, lambda s: getput_loop(s.get, s.put))
            finally:
                close_all(subjects)
            tables.append(table)
        for threads in (1, 8):
            table = Table(
                f"kinds_roundtrip_{threads}",
                f"echo round trip by pool kind, {len(MSG)} B: {threads} thread"
                f"{'s' if threads > 1 else ''}, 12 members",
                "us/rt",
                notes=[
                    f"servers: {SERVERS[cfg.server]}, 3 processes; floor: gocp.new on one; "
                    "cluster: 3 servers x 4, round robin",
                ],
            )
            single = gocp.new(first, size=12)
            keyed = gocp.keyed(size=12)
            cluster = gocp.cluster(addresses, size=4)
            plans = [
                ("floor: gocp.new (one address)", "floor", single, single.get),
                ("gocp.keyed (one key)", "gocp", keyed, lambda p=keyed: p.get(first)),
                ("gocp.cluster (3 servers)", "gocp", cluster, cluster.get),
            ]
            sized = []
            # What round robin does to the servers, without any pool: each round trip on
            # a connection to the next server (three processes to wake in turn).
            turns = [make_sock(address) for address in addresses for _ in range(threads)]
            row = Row("3 raw sockets, one per server, used in turn (no pool)", "info")
            table.rows.append(row)
            turn_runs = [
                functools.partial(rt_raw_turns, turns[index::threads]) for index in range(threads)
            ]
            try:
                run_rt_threads(turn_runs, 50)
                n = 16
                while (elapsed := run_rt_threads(turn_runs, n)) < cfg.rt_sample / 5:
                    n *= 4
                sized.append((row, turn_runs, max(1, int(n * cfg.rt_sample / elapsed))))
            except Exception as exc:
                row.status = f"error: {exc!r}"[:60]
            try:
                for name, row_kind, pool, get in plans:
                    row = Row(name, row_kind)
                    table.rows.append(row)
                    runs = [rt_pooled(Subject(name, get, pool.put, pool.close))] * threads
                    try:
                        run_rt_threads(runs, 50)  # warm up: every member dials
                        n = 16
                        while (elapsed := run_rt_threads(runs, n)) < cfg.rt_sample / 5:
                            n *= 4
                        sized.append((row, runs, max(1, int(n * cfg.rt_sample / elapsed))))
                    except Exception as exc:
                        row.status = f"error: {exc!r}"[:60]
                for _ in range(cfg.rt_repeats):
                    for row, runs, n in sized:
                        row.samples.append(run_rt_threads(runs, n) / (n * len(runs)) * 1e6)
            finally:
                close_socks(turns)
                for _name, _kind, pool, _get in plans:
                    pool.close()
            tables.append(table)
    finally:
        for server in servers:
            server.close()
    return tables


# -- main ----------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Settings], list[Table]]] = {
    "uncontended": scenario_uncontended,
    "contended": scenario_contended,
    "roundtrip": scenario_roundtrip,
    "lifecycle": scenario_lifecycle,
    "size": scenario_size,
    "memory": scenario_memory,
    "import": scenario_import,
    "kinds": scenario_kinds,
    "tls": scenario_tls,
    "aio": lambda cfg: bench_aio.scenario_aio(cfg, sys.modules[__name__]),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 30 s)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"scenarios to run, comma-separated or repeated: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH as JSON")
    parser.add_argument("--repeats", type=int, help="samples per subject (default 7, quick 3)")
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="epoll",
        help="the echo server for round trips and memory: "
        + "; ".join(f"{k}: {v}" for k, v in sorted(SERVERS.items())),
    )
    parser.add_argument(
        "--placement",
        action="append",
        default=[],
        metavar="NAME",
        help="where the contended and round-trip runs place their threads, comma-separated "
        "or repeated (default: all; 'os' alone where pinning is impossible): "
        + "; ".join(f"{k}: {v[0]}" for k, v in PLACEMENTS.items()),
    )
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="a directory holding the package gocp_before (gocp before the restructure): "
        "adds a 'gocp before' row to the uncontended, contended and round-trip tables",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        try:
            load_baseline(args.baseline)
        except Exception as exc:
            parser.error(f"--baseline {args.baseline}: {exc}")
    placements = [p.strip() for item in args.placement for p in item.split(",") if p.strip()]
    bad = sorted(set(placements) - set(PLACEMENTS))
    if bad:
        parser.error(f"unknown placement(s): {', '.join(bad)}; pick from {', '.join(PLACEMENTS)}")
    if not placements:
        placements = list(PLACEMENTS) if can_pin() else ["os"]
    elif set(placements) - {"os"} and not can_pin():
        parser.error("pinning needs os.sched_setaffinity and at least 2 CPUs: use --placement os")
    args.placement = tuple(p for p in PLACEMENTS if p in placements)
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; pick from {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in only] if only else list(SCENARIOS)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = dataclasses.replace(
        Settings.make(args.quick), server=args.server, placements=args.placement
    )
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats, rt_repeats=args.repeats)
    started = perf()
    meta = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gocp": gocp.__version__,
        "baseline": None if _before is None else str(Path(_before.__file__).parent),
        "quick": cfg.quick,
        "repeats": cfg.repeats,
        "server": cfg.server,
        "placements": {name: PLACEMENTS[name][0] for name in cfg.placements},
        "peers": {p.name: (p.missing() or p.version()) for p in PEERS},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(
        f"gocp {meta['gocp']} bench: {meta['implementation']} {meta['python']}, "
        f"{meta['platform']}, {meta['cpus']} CPUs{', quick' if cfg.quick else ''}"
    )
    print("peers: " + "; ".join(f"{name} {v}" for name, v in meta["peers"].items()))
    if meta["baseline"] is not None:
        print(f"baseline ({BEFORE_NAME}): {meta['baseline']}")
    load = meta["load_average"]
    if load is not None:
        busy = load[0] > 0.5
        print(
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + ("  (the machine is busy: expect noisy figures)" if busy else "")
        )
    tables: dict[str, Table] = {}
    try:
        for name in args.only:
            t0 = perf()
            try:
                produced = RUNNERS[name](cfg)
            except Exception as exc:
                print(f"\n== {name}: failed: {exc!r}")
                continue
            for table in produced:
                tables[table.key] = table
                print_table(table)
            print(f"   ({name}: {perf() - t0:.1f} s)")
    finally:
        if _echo is not None:
            _echo.close()
    found = targets(tables)
    print_targets(found, tables)
    print(f"\ntotal {perf() - started:.1f} s")
    if args.json:
        document = {
            "meta": meta,
            "scenarios": {key: table_json(table) for key, table in tables.items()},
            "targets": [
                {
                    "source": t.source,
                    "target": t.text,
                    "value": t.value,
                    "limit": t.limit,
                    "at_most": t.at_most,
                    "unit": t.unit.strip(),
                    "detail": t.detail,
                    "noisy": t.noisy,
                    "by_min": t.by_min,
                    "result": t.result,
                }
                for t in found
            ],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
