"""Timed loops: the collector off, a batch calibrated to a duration, samples interleaved."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

from .results import Row, Settings, error_status
from .subjects import Subject

perf = time.perf_counter


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
            row.status = error_status(exc)
            continue
        plans.append((row, run, n))
    for _ in range(cfg.repeats):
        for row, run, n in plans:
            row.samples.append(timed(run, n) / n * scale)
