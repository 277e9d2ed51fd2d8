"""The ``no_backoff`` switch: every pool redials at once within a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .. import _backoff

__all__ = ["no_backoff"]


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Within the block, every pool redials at once: dial backoff waits are 0.

    A failed dial still fails (``DialError``), but the next operation makes
    a real new attempt instead of raising "backing off". Process-wide: it
    affects all pools in all threads. On exit, also by an exception, the
    previous setting is restored, so blocks nest.
    """
    previous = _backoff.set_no_wait(True)
    try:
        yield
    finally:
        _backoff.set_no_wait(previous)
