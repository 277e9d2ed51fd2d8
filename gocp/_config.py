"""Pool options: validated once, at the call that received them."""

from __future__ import annotations

import math
import threading
from typing import Any

import attrs

__all__ = ["MAX_KEEPALIVE", "MAX_SECONDS", "Options", "check_timeout"]

#: The longest duration the platform can wait on (sockets and locks overflow beyond it).
MAX_SECONDS = threading.TIMEOUT_MAX

#: The longest TCP keepalive idle time Linux accepts (TCP_KEEPIDLE).
MAX_KEEPALIVE = 32767


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name}: expected a number of seconds, got {type(value).__name__} {value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"{name}: must be a number of seconds, got nan")
    return float(value)


def check_timeout(name: str, value: object) -> float | None:
    """``None`` or a non-negative finite number of seconds, else a clear error naming ``name``."""
    if value is None:
        return None
    seconds = _number(name, value)
    if seconds < 0 or math.isinf(seconds):
        raise ValueError(f"{name}: must be >= 0 and finite, or None, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name}: must be at most {MAX_SECONDS} seconds, got {value!r}")
    return seconds


def _seconds(*, optional: bool = False) -> Any:
    def validate(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        seconds = _number(attribute.name, value)
        if not 0 < seconds < math.inf:
            raise ValueError(f"{attribute.name}: must be > 0 and finite, got {value!r}")
        if seconds > MAX_SECONDS:
            raise ValueError(
                f"{attribute.name}: must be at most {MAX_SECONDS} seconds, got {value!r}"
            )

    return validate


def _boolean(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Every option of a pool, with its default. Durations are seconds.

    - ``dial_timeout`` (5.0): bound on one connect, DNS lookup excluded.
    - ``io_timeout`` (30.0): bound on each wait for progress in send/recv;
      ``None`` waits without bound, as a blocking socket does.
    - ``retry_min`` (0.1), ``retry_max`` (3.0): bounds of the jittered
      exponential wait between failed dials (see ``gocp._backoff``).
    - ``nodelay`` (True): set ``TCP_NODELAY`` (no Nagle delay on small writes).
    - ``keepalive`` (30.0): TCP keepalive; seconds of silence before the
      kernel probes the peer (then every ``keepalive / 3`` s, 3 probes); on
      Linux the same total bounds unacknowledged sent data
      (``TCP_USER_TIMEOUT``). ``None`` turns both off.
    """

    __module__ = "gocp"

    dial_timeout: float = attrs.field(default=5.0, validator=_seconds())
    io_timeout: float | None = attrs.field(default=30.0, validator=_seconds(optional=True))
    retry_min: float = attrs.field(default=0.1, validator=_seconds())
    retry_max: float = attrs.field(default=3.0, validator=_seconds())
    nodelay: bool = attrs.field(default=True, validator=_boolean)
    keepalive: float | None = attrs.field(default=30.0, validator=_seconds(optional=True))

    def __attrs_post_init__(self) -> None:
        if self.keepalive is not None and self.keepalive > MAX_KEEPALIVE:
            raise ValueError(
                f"keepalive: must be at most {MAX_KEEPALIVE} seconds (the kernel's limit), "
                f"got {self.keepalive!r}"
            )
        if self.retry_max < self.retry_min:
            raise ValueError(
                f"retry_max: must be >= retry_min ({self.retry_min!r}), got {self.retry_max!r}"
            )

    @classmethod
    def build(cls, options: dict[str, Any]) -> Options:
        """Options from keyword arguments; an unknown name is a ``TypeError`` naming it."""
        known = attrs.fields_dict(cls)
        for name in options:
            if name not in known:
                raise TypeError(
                    f"unknown option {name!r}; known options: {', '.join(sorted(known))}"
                )
        return cls(**options)
