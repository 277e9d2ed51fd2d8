"""``contended``: 16 threads sharing a pool of 4 doing get+put.

Wall time per operation, throughput, Jain's fairness index over the threads'
operation counts, the worst and 99th-percentile wait in ``get`` (a separate run
that times each get), and a first-come-first-served check (8 callers queue one
by one on an exhausted pool, then each takes a member, puts it back and asks
again: a FCFS pool serves 0..7 then 0..7; a pool that lets the returning caller
barge ahead serves it twice in a row); "x fair": over the fair floor. Repeated in
each placement but ``split`` (without an echo server it places the benchmark as
``one-cpu`` does). ``new_table`` and ``measure`` serve the ``kinds`` scenario too.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from itertools import repeat

from ..peers import peer_rows
from ..placement import placed, placed_key, placed_title, without_server
from ..results import Row, Settings, Table, error_status
from ..subjects import (
    FAIR_FLOOR_NAME,
    FLOOR_NAME,
    Subject,
    close_all,
    fair_floor_subject,
    floor_subject,
    gocp_subjects,
)
from ..timing import gc_off, perf


def jain(counts: list[int]) -> float:
    """Jain's fairness index: 1.0 when every thread did as much, 1/n when one did all."""
    total = sum(counts)
    squares = sum(c * c for c in counts)
    return total * total / (len(counts) * squares) if squares else 0.0


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


#: The contended runs: this many threads share a pool of SIZE members.
THREADS, SIZE = 16, 4


def new_table(cfg: Settings, key: str, title: str, placement: str, notes: list[str]) -> Table:
    """An empty contended table: placed ``key``, ``title`` with the placement, ``notes``
    then the method's notes, and the columns ``measure`` fills."""
    return Table(
        placed_key(key, placement),
        f"{title} {placed_title(placement)}",
        "us/op",
        notes=[
            *notes,
            f"{cfg.repeats} samples of {cfg.contended_seconds:.2f} s per subject, gc off; "
            "us/op = wall time / all threads' operations; switch interval "
            f"{sys.getswitchinterval() * 1000:g} ms",
            "jain: fairness of per-thread op counts (1 = even); worst/p99: wait in get, "
            f"from {cfg.fairness_runs} run(s) timing each get; fcfs: queue-order check; "
            "x fair: over the fair floor",
        ],
        columns=[
            ("mops", "Mop/s", ".3f"),
            ("jain", " jain", ".3f"),
            ("worst_ms", "worst ms", ".2f"),
            ("p99_us", " p99 us", ".1f"),
            ("fcfs", "fcfs", ""),
            ("x_fair", "x fair", ".2f"),
        ],
    )


def measure(cfg: Settings, table: Table, subjects: list[tuple[Row, Subject]]) -> None:
    """THREADS threads on each subject (a pool of SIZE): warm-up and the FCFS check, then
    ``cfg.repeats`` interleaved samples and the timed-get runs, into the subjects' rows
    (already in ``table``); closes every subject."""
    live = []
    try:
        for row, subject in subjects:
            try:
                for _ in range(100):
                    subject.put(subject.get())
                run_threads(subject, THREADS, min(0.05, cfg.contended_seconds), False)
                row.extra["fcfs"] = fcfs_check(subject, SIZE)
            except Exception as exc:
                row.status = error_status(exc)
                continue
            live.append((row, subject))
        for _ in range(cfg.repeats):
            for row, subject in live:
                counts, wall, _ = run_threads(subject, THREADS, cfg.contended_seconds, False)
                total = sum(counts)
                row.samples.append(wall / total * 1e6)
                row.extra.setdefault("_mops", []).append(total / wall / 1e6)
                row.extra.setdefault("_jain", []).append(jain(counts))
        for _ in range(cfg.fairness_runs):
            for row, subject in live:
                _, _, waits = run_threads(subject, THREADS, cfg.contended_seconds, True)
                waits.sort()
                worst = row.extra.get("worst_ms", 0.0)
                row.extra["worst_ms"] = max(worst, waits[-1] * 1000)
                p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1e6
                row.extra.setdefault("_p99", []).append(p99)
    finally:
        close_all(subjects)
    fair = table.row(FAIR_FLOOR_NAME)
    for row in table.rows:
        if "_mops" in row.extra:
            mops = row.extra.pop("_mops")
            row.extra["mops"] = statistics.median(mops)
            row.extra["jain"] = statistics.median(row.extra.pop("_jain"))
            row.extra["x_fair"] = table.ratio(row, fair)
        if "_p99" in row.extra:
            row.extra["p99_us"] = statistics.median(row.extra.pop("_p99"))


def run(cfg: Settings) -> list[Table]:
    tables = []
    for placement in without_server(cfg.placements):
        with placed(placement):
            tables.append(contended_table(cfg, placement))
    return tables


def contended_table(cfg: Settings, placement: str) -> Table:
    title = f"{THREADS} threads sharing a pool of {SIZE}: get+put, wall time per operation"
    table = new_table(cfg, "contended", title, placement, [])
    subjects: list[tuple[Row, Subject]] = [
        (Row(FLOOR_NAME, "floor"), floor_subject(SIZE)),
        (Row(FAIR_FLOOR_NAME, "info"), fair_floor_subject(SIZE)),
        *gocp_subjects(SIZE),
    ]
    table.rows += [row for row, _subject in subjects]
    subjects += peer_rows(table, lambda p: [p.dummy(SIZE)], lambda p: p.no_waiting)
    measure(cfg, table, subjects)
    return table
