"""The echo round trip: a raw socket's, raw sockets' in turn, a pooled member's; and the
runner that puts each loop in its own thread and times them together."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from itertools import cycle, islice, repeat

from .echo import MSG
from .results import Row
from .subjects import Subject
from .timing import gc_off, perf

Run = Callable[[int], None]

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


def rt_pooled(subject: Subject) -> Run:
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


def run_rt_threads(runs: Sequence[Run], n: int) -> float:
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


def calibrate_rt(runs: Sequence[Run], seconds: float) -> int:
    """Warm ``runs`` up (every member dials), then find a round-trip count per thread for
    which they take about ``seconds`` together."""
    run_rt_threads(runs, 50)
    n = 16
    while (elapsed := run_rt_threads(runs, n)) < seconds / 5:
        n *= 4
    return max(1, int(n * seconds / elapsed))


def sample_rt(sized: list[tuple[Row, Sequence[Run], int]], repeats: int) -> None:
    """``repeats`` samples of each ``(row, runs, n)`` in turn: us per round trip."""
    for _ in range(repeats):
        for row, runs, n in sized:
            row.samples.append(run_rt_threads(runs, n) / (n * len(runs)) * 1e6)
