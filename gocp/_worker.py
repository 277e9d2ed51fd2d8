"""The background thread of a pool whose options need one (checks, expiry, min_idle, leaks)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["Worker"]


class Worker:
    """One daemon thread per pool: runs ``Hub.maintain`` when something is due.

    It sleeps until the core's next deadline, at most ``cap`` seconds (so a
    deadline created after it fell asleep is never missed by more than that),
    or until woken: by ``wake()`` (a connection was closed while ``min_idle``
    needs refilling; a fake clock moved) or by ``stop()``. It refers to the
    hub, never to the ``Pool``, so a dropped pool is collected; ``stop()`` ends
    it after its current task, without waiting for it.
    """

    __slots__ = ("__weakref__", "_cap", "_hub", "_stopped", "_wake", "thread")

    def __init__(self, hub: Hub, *, cap: float, name: str) -> None:
        self._hub = hub
        self._cap = cap
        self._wake = threading.Event()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=f"gocp {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Run a pass now (from any thread)."""
        self._wake.set()

    def stop(self) -> None:
        """End the thread after its current task (from any thread; never waits)."""
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        hub = self._hub
        while not self._stopped:
            try:
                delay = hub.maintain()
            except Exception as exc:  # noqa: BLE001 - a bug must not end the upkeep silently
                hub.report("error", "maintenance_failed", error=f"{type(exc).__name__}: {exc}")
                delay = self._cap
            if self._stopped:  # stop() runs in other threads
                break  # type: ignore[unreachable]
            self._wake.wait(max(0.0, min(delay, self._cap)))
            self._wake.clear()

    def after_fork(self) -> None:
        """In a forked child the thread is gone: start a new one (unless stopped)."""
        self._wake = threading.Event()
        if not self._stopped:
            self.thread = threading.Thread(target=self._run, name=self.thread.name, daemon=True)
            self.thread.start()
