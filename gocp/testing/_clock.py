"""FakeClock: a monotonic clock that moves only when a test says so."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock for pool policies and backoff: ``gocp.new(..., clock=FakeClock())``.

    It moves only with ``advance(seconds)``, so a test of ``idle_timeout``,
    ``max_lifetime``, ``check_interval``, ``leak_timeout`` or the dial backoff
    never sleeps for an expiry: it advances the clock past it, and the pool's
    background thread is woken to look at once. Socket timeouts and
    ``get(timeout=...)`` still run on real time. Thread-safe.
    """

    __module__ = "gocp.testing"

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._listeners: list[weakref.WeakMethod[Callable[[], None]]] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` (>= 0) forward, wake the pools using it; return now."""
        if not seconds >= 0:
            raise ValueError(f"seconds: must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for ref in listeners:
            wake = ref()
            if wake is not None:
                wake()
        return self._now

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call the bound method ``wake`` after each ``advance`` (held weakly); pools
        subscribe their background thread."""
        with self._lock:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            self._listeners.append(weakref.WeakMethod(wake))

    def __repr__(self) -> str:
        return f"<gocp.testing.FakeClock now={self._now}>"
