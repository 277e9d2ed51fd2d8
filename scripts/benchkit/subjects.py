"""What lends members: the floor pools, gocp (and gocp before, with ``--baseline``)."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gocp

from .results import Row


@dataclass
class Subject:
    """Something that lends members: the floor, gocp or a peer pool."""

    name: str
    get: Callable[[], Any]
    put: Callable[[Any], None]
    close: Callable[[], None]
    #: For round trips: handle -> object with ``sendall``/``recv`` (None: the handle itself).
    sock_of: Callable[[Any], Any] | None = None
    note: str = ""


def close_all(subjects: list[tuple[Row, Subject]]) -> None:
    for _row, subject in subjects:
        try:
            subject.close()
        except Exception as exc:
            print(f"   ({subject.name}: close failed: {exc!r})")


# -- the floors ----------------------------------------------------------------------


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
        waiter: list[Any] = [threading.Lock(), None]
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


def fair_floor_subject(size: int) -> Subject:
    pool = FairFloorPool(size)
    return Subject(FAIR_FLOOR_NAME, pool.get, pool.put, lambda: None)


def floor_subject(size: int) -> Subject:
    pool = FloorPool(size)
    return Subject(FLOOR_NAME, pool.get, pool.put, lambda: None)


# -- gocp ----------------------------------------------------------------------------


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


# -- gocp before (--baseline) --------------------------------------------------------

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


def baseline() -> Any:
    """The package ``gocp_before`` if ``load_baseline`` loaded it, else None."""
    return _before


def before_subject(size: int, address: tuple[str, int] = ("127.0.0.1", 9)) -> Subject:
    """gocp before's pool (``--baseline``), with the settings of ``gocp_subject``'s."""
    if _before is None:
        raise RuntimeError("no baseline: gocp before needs --baseline PATH")
    pool = _before.new(address, size=size)
    return Subject(BEFORE_NAME, pool.get, pool.put, pool.close)


def gocp_subjects(
    size: int, address: tuple[str, int] = ("127.0.0.1", 9)
) -> list[tuple[Row, Subject]]:
    """gocp's row and, with ``--baseline``, the "gocp before" row with the same settings."""
    subjects = [(Row("gocp", "gocp"), gocp_subject(size, address))]
    if _before is not None:
        subjects.append((Row(BEFORE_NAME, "gocp"), before_subject(size, address)))
    return subjects
