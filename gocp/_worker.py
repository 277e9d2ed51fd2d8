"""The background thread of pools whose options need one (checks, expiry, min_idle, leaks).

One ``Worker`` serves one pool, or every pool of a keyed pool or a cluster
(one thread for all of them, not one per key or server).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

__all__ = ["Job", "Worker"]

_monotonic = time.monotonic


class Job(Protocol):
    """What a worker runs: a hub, or a keyed pool's idle-key sweep."""

    def maintain(self) -> float:
        """One pass; seconds until the next one is due."""
        ...

    def report(self, level: str, event: str, **fields: object) -> None: ...


class Worker:
    """One daemon thread that runs each job's ``maintain`` when it is due.

    It sleeps until the earliest job's deadline, at most ``cap`` seconds (so a
    deadline created after it fell asleep is never missed by more than that),
    or until woken: by ``wake(job)`` (that job has work now: a connection was
    closed while ``min_idle`` needs refilling), by ``wake()`` (every job: a
    fake clock moved) or by ``stop()``. It refers to its jobs (hubs), never to
    a ``Pool``, so a dropped pool is collected. A worker made for one pool
    (``shared=False``) stops when its last job leaves; a shared one when its
    owner calls ``stop()``, which ends it after its current task, without
    waiting for it.
    """

    __slots__ = ("__weakref__", "_cap", "_due", "_pid", "_shared", "_stopped", "_wake", "thread")

    def __init__(self, *, cap: float, name: str, shared: bool = False) -> None:
        self._cap = cap
        self._shared = shared
        self._due: dict[Job, float] = {}  # job -> when its next pass is due (monotonic)
        self._wake = threading.Event()
        self._stopped = False
        self._pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name=f"gocp {name}", daemon=True)

    def add(self, job: Job, *, cap: float | None = None) -> None:
        """Serve ``job`` too (its first pass now); starts the thread on the first job.
        ``cap`` lowers the longest sleep (the job's shortest interval / 4)."""
        if cap is not None:
            self._cap = min(self._cap, cap)
        self._due[job] = 0.0
        if self.thread.ident is None and not self._stopped:  # not started yet
            self.thread.start()
        self._wake.set()

    def remove(self, job: Job) -> None:
        """Stop serving ``job`` (its pool closed); an unshared worker then ends."""
        self._due.pop(job, None)
        if not self._shared and not self._due:
            self.stop()

    def wake(self, job: Job | None = None) -> None:
        """Run ``job``'s pass now (``None``: every job's), from any thread."""
        if job is None:
            for each in list(self._due):
                self._due[each] = 0.0
        elif job in self._due:
            self._due[job] = 0.0
        self._wake.set()

    def stop(self) -> None:
        """End the thread after its current task (from any thread; never waits)."""
        self._stopped = True
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _run(self) -> None:
        due = self._due
        while not self._stopped:
            now = _monotonic()
            for job, at in list(due.items()):
                if at > now:
                    continue
                mark = due[job] = now + self._cap  # a wake() during the pass replaces it
                try:
                    delay = job.maintain()
                except Exception as exc:  # noqa: BLE001 - a bug must not end the upkeep silently
                    job.report("error", "maintenance_failed", error=f"{type(exc).__name__}: {exc}")
                    delay = self._cap
                if self._stopped:  # stop() runs in other threads
                    return  # type: ignore[unreachable]
                if due.get(job) == mark:  # not woken (nor removed) meanwhile
                    due[job] = _monotonic() + max(0.0, min(delay, self._cap))
            earliest = min(due.values(), default=_monotonic() + self._cap)
            self._wake.wait(max(0.0, min(earliest - _monotonic(), self._cap)))
            self._wake.clear()

    def after_fork(self) -> None:
        """In a forked child the thread is gone: start a new one (unless stopped). Every
        pool it serves calls this; the first call in a new process does the work."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._wake = threading.Event()
        if not self._stopped:
            self.thread = threading.Thread(target=self._run, name=self.thread.name, daemon=True)
            self.thread.start()
