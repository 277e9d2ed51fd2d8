"""Argument checks of the fault kit: each error names the argument and shows the value.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong
value) with a message that starts with ``"<name>: "``, and returns the value
in the type the kit works with.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = [
    "SIDES",
    "Direction",
    "Side",
    "count",
    "flag",
    "number",
    "probability",
    "rate",
    "seconds",
    "sides",
]

Direction = Literal["up", "down", "both"]
"""``"up"`` (client to server), ``"down"`` (server to client) or ``"both"``."""

Side = Literal["up", "down"]
SIDES: tuple[Side, Side] = ("up", "down")


def number(name: str, value: object, what: str) -> float:
    """A finite int or float (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return float(value)


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A duration: finite and >= 0 (> 0 if ``positive``)."""
    result = number(name, value, "a number of seconds")
    if result < 0 or (positive and result == 0):
        raise ValueError(f"{name}: must be {'>' if positive else '>='} 0, got {value!r}")
    return result


def count(name: str, value: object, *, minimum: int) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    return value


def rate(name: str, value: object) -> float:
    """A rate in bytes per second: finite and > 0."""
    result = number(name, value, "a number of bytes per second")
    if result <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return result


def probability(name: str, value: object) -> float:
    """A probability: 0 < p <= 1 (a fault that never applies is an error, not a no-op)."""
    result = number(name, value, "a probability (a number in (0, 1])")
    if not 0 < result <= 1:
        raise ValueError(f"{name}: must be > 0 and <= 1, got {value!r}")
    return result


def flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def sides(direction: object) -> tuple[Side, ...]:
    """The sides a ``direction`` argument names: ``("up",)``, ``("down",)`` or both."""
    if direction == "both":
        return SIDES
    if direction == "up":
        return ("up",)
    if direction == "down":
        return ("down",)
    raise ValueError(f"direction: must be 'up', 'down' or 'both', got {direction!r}")
