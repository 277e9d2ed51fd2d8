"""Jittered exponential backoff between dial attempts: pure, clock passed in."""

from __future__ import annotations

import random as _random
from collections.abc import Callable

__all__ = ["Backoff", "backoff_delay", "set_no_wait"]

_no_wait = False


def set_no_wait(enabled: bool) -> bool:
    """Testing switch: when enabled, ``Backoff.wait`` is always 0. Returns the old value."""
    global _no_wait
    previous, _no_wait = _no_wait, bool(enabled)
    return previous


def backoff_delay(failures: int, retry_min: float, retry_max: float, rand: float) -> float:
    """The wait after the ``failures``-th consecutive failed dial.

    ``b = min(retry_max, retry_min * 2**failures)`` and the delay is
    ``max(retry_min, b/2 + rand * b/2)`` for ``rand`` in ``[0, 1)``: uniform in
    the upper half of ``b`` ("equal jitter"), never below ``retry_min`` and
    never above ``retry_max``. The first failure waits between ``retry_min``
    and ``2 * retry_min``; from then on the bound doubles until it reaches
    ``retry_max``.
    """
    if failures < 1:
        return 0.0
    exponent = min(failures, 64)  # 2**64 * anything dwarfs any sane retry_max
    bound = min(retry_max, retry_min * 2.0**exponent)
    return min(retry_max, max(retry_min, bound / 2 + rand * bound / 2))


class Backoff:
    """The dial backoff of one address, shared by every member that dials it.

    Pure state: every method takes ``now`` (a monotonic time in seconds) and
    does no I/O and no waiting. The first dial after a broken connection is
    immediate; after ``n`` consecutive failures no dial is made before
    ``backoff_delay(n, ...)`` seconds have passed since the last failure; a
    success resets the count. Failures of dials that overlapped (several
    members dialling at once) count once.

    Not thread-safe: the pool calls it under its lock.
    """

    __slots__ = (
        "_random",
        "failed_at",
        "failures",
        "last_error",
        "lease",
        "next_at",
        "probe_started",
        "probe_until",
        "retry_max",
        "retry_min",
    )

    def __init__(
        self,
        retry_min: float,
        retry_max: float,
        random: Callable[[], float] = _random.random,
        *,
        lease: float | None = None,
    ) -> None:
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.lease = retry_max if lease is None else lease
        self._random = random
        self.failures = 0
        self.next_at = 0.0
        self.failed_at = float("-inf")
        self.probe_until = float("-inf")  # while now < this, one dial (the probe) is in flight
        self.probe_started = float("nan")  # the probe's ``begin`` time: it names the probe
        self.last_error: BaseException | None = None

    @property
    def probing(self) -> bool:
        """Whether a probe was granted and has not reported (its lease may have run out)."""
        return self.probe_until > float("-inf")

    def begin(self, now: float) -> float:
        """Ask to dial at ``now``: 0.0 means go ahead, else the seconds to wait.

        While the address is failing, only one dial (the probe) is in flight
        at a time: the others wait for its outcome instead of all hitting a
        server that is just coming back; they are told to wait until the
        probe's lease ends (``lease`` seconds, the longest a dial may take).
        A caller told to go ahead reports the outcome with ``failed``,
        ``succeeded`` or ``abandoned(now)``; a probe that never reports (its
        thread was interrupted or vanished, say in a fork) stops blocking
        others when its lease runs out, so no outage outlives the server's.
        """
        wait = self.wait(now)
        if wait > 0 or _no_wait:
            return wait
        if self.failures:
            if now < self.probe_until:
                return self.probe_until - now
            self.probe_until = now + self.lease
            self.probe_started = now
        return 0.0

    def abandoned(self, started: float | None = None) -> None:
        """A dial allowed by ``begin`` at ``started`` ended without an outcome (interrupted).

        Ends the probe if that dial was the probe; ``None`` ends any probe
        (after a fork, the prober is gone)."""
        if started is None or started == self.probe_started:
            self.probe_until = float("-inf")

    def blocked(self, now: float) -> float:
        """Seconds before ``begin`` would let a dial go ahead (a window, or a probe's lease);
        0.0: now. Asks without taking the probe."""
        wait = self.wait(now)
        if wait > 0 or _no_wait or not self.failures:
            return wait
        return max(0.0, self.probe_until - now)

    def wait(self, now: float) -> float:
        """Seconds before a dial may be attempted (0.0: dial now)."""
        if _no_wait:
            return 0.0
        return max(0.0, self.next_at - now)

    def failed(self, now: float, started: float, error: BaseException | None = None) -> float:
        """Record a dial that began at ``started`` and failed at ``now``; return the wait."""
        if started < self.failed_at:
            # This dial began before the last counted failure was known: it
            # overlapped that one, and the server's state is already counted.
            # It cannot be the probe (a probe starts after that failure's
            # window), so a probe in flight goes on.
            return self.wait(now)
        self.probe_until = float("-inf")
        self.failures += 1
        self.failed_at = now
        self.last_error = error
        self.next_at = now + backoff_delay(
            self.failures, self.retry_min, self.retry_max, self._random()
        )
        return self.next_at - now

    def succeeded(self) -> None:
        """A dial worked: the next failure starts again from ``retry_min``."""
        self.probe_until = float("-inf")
        self.failures = 0
        self.next_at = 0.0
        self.failed_at = float("-inf")
        self.last_error = None
