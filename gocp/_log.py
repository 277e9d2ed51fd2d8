"""Event reports to whatever logger the user gave (a printer, structlog, or stdlib logging),
with repeats of one failure held back during an outage.

Every event has a stable dotted name (``gocp.<event>``) and fields. The fields that say
*what* happened (``address``, ``pool``, ``error``, ``op``...) make an event's identity; the
fields that change from one repeat to the next (``member``, ``attempt``, ``retry_in``...)
do not. When one identity repeats within ``REPEAT_INTERVAL`` seconds of its last line, it is
held back and counted; the next occurrence after the interval is written with
``repeated`` (how many occurrences that line stands for: it and those held back) and
``period`` (seconds since the last line of its kind). A count still held is written as soon
as any later event of the pool comes after the interval, at once before
``gocp.reconnected`` (the end of an outage), and by ``EventLog.close`` (the pool
closed). So a server that is down writes one line per failure kind per interval, whatever
the pool's size; nothing is lost but the repeats.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["EVENTS", "REPEAT_INTERVAL", "EventLog", "RepeatLimiter", "make_log"]

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Seconds between two lines of one repeated event (on the pool's clock).
REPEAT_INTERVAL = 10.0

#: Fields that change between repeats of one failure: not part of an event's identity.
_VARYING = frozenset({"member", "attempt", "retry_in", "held_for", "failures"})

#: Events written at once, never held: the end of an outage (after the counts held).
_NEVER_HELD = frozenset({"reconnected"})

#: Distinct identities remembered at once; the oldest goes first (its count written).
_CAPACITY = 256

#: Every event gocp reports, with its level and the fields it carries (besides ``address``
#: and ``pool``, which every event of a pool has, and ``repeated``/``period`` on a line that
#: stands for several). The README's logging table is this table.
EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dial_failed": ("warning", ("member", "error", "attempt", "retry_in")),
    "reconnected": ("info", ("failures",)),
    "connection_broken": ("warning", ("member", "op", "error")),
    "stale_dropped": ("info", ("member",)),
    "check_failed": ("warning", ("member", "error")),
    "close_failed": ("warning", ("error",)),
    "leak": ("warning", ("member", "held_for", "taken_at")),
    "broken_on_failed": ("warning", ("error",)),
    "maintenance_failed": ("error", ("error",)),
    "key_closed": ("info", ("key", "reason")),
}

Report = tuple[str, str, dict[str, Any]]
"""``(level, event, fields)``: one line to write."""


class _Held:
    """One identity's state: when its last line was written, and what came since."""

    __slots__ = ("fields", "held", "level", "since")

    def __init__(self, since: float, level: str, fields: dict[str, Any]) -> None:
        self.since = since  # when the last line of this identity was written
        self.held = 0  # occurrences since then, not written
        self.level = level
        self.fields = fields  # the latest occurrence's


class RepeatLimiter:
    """Decides which reports to write: plain code that takes ``now`` and returns lines.

    No I/O, no clock, no lock (``EventLog`` holds one around it). See the module doc.
    """

    __slots__ = ("_entries", "interval")

    def __init__(self, interval: float = REPEAT_INTERVAL) -> None:
        self.interval = interval
        self._entries: OrderedDict[tuple[Any, ...], _Held] = OrderedDict()

    def admit(self, now: float, level: str, event: str, fields: dict[str, Any]) -> list[Report]:
        """The lines to write for one report at ``now``: it (maybe with a count), counts
        held back that are due, or nothing (it is held back)."""
        if event in _NEVER_HELD:
            return [*self._due(now), *self._flush(fields.get("address")), (level, event, fields)]
        key = _identity(event, fields)
        entry = self._entries.get(key)
        if entry is not None and now - entry.since < self.interval:
            entry.held += 1
            entry.level, entry.fields = level, fields
            return self._due(now)
        if entry is not None and entry.held:  # this line carries the count held since
            fields = {**fields, "repeated": entry.held + 1, "period": _seconds(now - entry.since)}
        self._entries[key] = _Held(now, level, fields)
        self._entries.move_to_end(key)
        out = self._due(now)  # (not this identity: its line was just written)
        out.append((level, event, fields))
        while len(self._entries) > _CAPACITY:
            old_key, old = self._entries.popitem(last=False)
            if old.held:
                out.append(_summary(old_key[0], old, now))
        return out

    def _due(self, now: float) -> list[Report]:
        """Counts held for a whole interval, written now; identities long quiet, forgotten."""
        out: list[Report] = []
        for key, entry in list(self._entries.items()):
            if now - entry.since >= self.interval:
                if entry.held:
                    out.append(_summary(key[0], entry, now))
                del self._entries[key]
        return out

    def flush(self, now: float | None = None) -> list[Report]:
        """Every count held, to write now (the pool is closing): nothing is left unsaid."""
        out = [_summary(key[0], entry, now) for key, entry in self._entries.items() if entry.held]
        self._entries.clear()
        return out

    def _flush(self, address: object) -> list[Report]:
        """The counts held for ``address`` (every address: ``None``), written now."""
        out: list[Report] = []
        for key, entry in list(self._entries.items()):
            if entry.held and (address is None or entry.fields.get("address") == address):
                out.append(_summary(key[0], entry, None))
                entry.held = 0
        return out


def _identity(event: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event,
        *sorted(
            (name, value if isinstance(value, (str, int, float)) else repr(value))
            for name, value in fields.items()
            if name not in _VARYING
        ),
    )


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 3)


def _summary(event: str, entry: _Held, now: float | None) -> Report:
    """The line for ``entry``'s held occurrences (its latest fields, with the count)."""
    period = {} if now is None else {"period": _seconds(now - entry.since)}
    return entry.level, event, {**entry.fields, "repeated": entry.held, **period}


def _line(event: str, fields: dict[str, Any]) -> str:
    """The readable line of an event, for ``print()`` and stdlib logging."""
    address = fields.get("address", "?")
    error = fields.get("error")
    text = {
        "dial_failed": f"dial {address} failed",
        "reconnected": f"reconnected to {address}",
        "connection_broken": f"connection to {address} broken",
        "stale_dropped": f"idle connection to {address} was closed by the peer; redialling",
        "check_failed": f"check of a connection to {address} failed",
        "close_failed": f"closing connection to {address} failed",
        "leak": f"a member of {address} was not given back",
        "key_closed": f"key {fields.get('key')} of {fields.get('pool')} closed",
    }.get(event, f"{event} {address}")
    if error is not None:
        text += f": {error}"
    repeated = fields.get("repeated")
    if repeated is not None:
        period = fields.get("period")
        text += f" [{repeated} times" + (f" in {period}s]" if period is not None else "]")
    skip = {"address", "error", "repeated", "period"}
    if event == "key_closed":
        skip |= {"key", "pool"}
    if fields.get("pool") == address:
        skip.add("pool")
    extra = [f"{k}={v}" for k, v in fields.items() if k not in skip]
    if extra:
        text += f" ({', '.join(extra)})"
    return "gocp: " + text


class EventLog:
    """Sends events to the user's logger, in the form it takes, repeats held back."""

    __slots__ = ("_closed", "_kind", "_limiter", "_lock", "_target")

    def __init__(self, target: Any, kind: str, *, interval: float = REPEAT_INTERVAL) -> None:
        self._target = target
        self._kind = kind
        self._limiter = RepeatLimiter(interval)
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, level: str, event: str, now: float | None = None, /, **fields: Any) -> None:
        """Report ``event`` with ``fields`` at ``now`` (the pool's clock); ``now=None``
        writes it at once, never held. A failing logger never breaks the pool."""
        if now is None or self._closed:
            self._write(level, event, fields)
            return
        with self._lock:  # the decision only: lines are written outside it
            lines = self._limiter.admit(now, level, event, fields)
        for line in lines:
            self._write(*line)

    def close(self, now: float | None = None) -> None:
        """The pool closed: write every count held back, and from now on every event at
        once (the few that come after, as lent members are put back, are never held)."""
        with self._lock:
            self._closed = True
            lines = self._limiter.flush(now)
        for line in lines:
            self._write(*line)

    def _write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        try:
            if self._kind == "stdlib":
                _log_stdlib(self._target, _LEVELS[level], _line(event, fields), event, fields)
            elif self._kind == "structlog":
                getattr(self._target, level)(f"gocp.{event}", **fields)
            else:
                self._target.print(_line(event, fields))
        except Exception:  # noqa: BLE001, S110 - a broken logger must not break I/O paths
            pass


def _log_stdlib(target: Any, level: int, message: str, event: str, fields: dict[str, Any]) -> None:
    """Log with ``fields`` as record attributes, also through ``LoggerAdapter``s.

    A ``LoggerAdapter`` replaces the call's ``extra`` with its own in ``process``;
    apply each adapter's ``process`` here and merge (the caller's side wins, as
    with ``merge_extra``), so the fields survive it.
    """
    merged = {"event": event, **fields}
    kwargs: Any = {"extra": merged}
    while isinstance(target, logging.LoggerAdapter):
        message, kwargs = target.process(message, kwargs)
        merged = {**(kwargs.get("extra") or {}), **merged}
        kwargs["extra"] = merged
        target = target.logger
    target.log(level, message, **kwargs)


def make_log(logger: object) -> EventLog | None:
    """Classify ``logger``: ``None``, a stdlib logger, a structlog logger, or any ``.print()``."""
    if logger is None:
        return None
    if isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
        return EventLog(logger, "stdlib")
    if callable(getattr(logger, "bind", None)) and callable(getattr(logger, "warning", None)):
        return EventLog(logger, "structlog")
    if callable(getattr(logger, "print", None)):
        return EventLog(logger, "print")
    raise TypeError(
        "logger: expected None, an object with a print() method, a structlog logger or a "
        f"logging.Logger, got {type(logger).__name__}"
    )
