"""Where the threads run: this process's threads and the echo server's, pinned to CPUs.

On a VM a thread woken on an idle CPU waits tens of microseconds (the "split" round
trip of one thread is ~67 us, the "one-cpu" one ~8 us); left to the OS, runs flip
between the two. Pinning makes each figure reproducible; every placement is reported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .echo import EchoProcess

#: name: (description, CPUs of this process's threads, CPUs of the echo server).
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
def placed(placement: str, *servers: EchoProcess) -> Iterator[None]:
    """Run the block with this process (and the echo servers) pinned as ``placement`` says."""
    _what, client, server_cpus = PLACEMENTS[placement]
    if placement != "os" and not can_pin():
        raise RuntimeError("pinning needs os.sched_setaffinity and 2 CPUs")
    _pin_process(None, client)
    for server in servers:
        _pin_process(server.proc.pid, server_cpus)
    try:
        yield
    finally:
        _pin_process(None, None)
        for server in servers:
            _pin_process(server.proc.pid, None)


def without_server(placements: Sequence[str]) -> list[str]:
    """The placements of a run that talks to no echo server: all of ``placements`` but
    ``split``, which without a server places the benchmark as ``one-cpu`` does (so
    ``split`` alone asks for ``one-cpu``)."""
    chosen = [p for p in placements if p != "split"]
    if "split" in placements and "one-cpu" not in chosen:
        chosen.insert(0, "one-cpu")
    return chosen


def placed_key(key: str, placement: str) -> str:
    return f"{key}@{placement}"


def placed_title(placement: str) -> str:
    """The bracketed tail of a placed table's title: ``[name: description]``."""
    return f"[{placement}: {PLACEMENTS[placement][0]}]"
