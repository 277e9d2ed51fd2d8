"""Failure reports to whatever logger the user gave: a printer, structlog, or stdlib logging."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EventLog", "make_log"]

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _line(event: str, fields: dict[str, Any]) -> str:
    address = fields.get("address", "?")
    error = fields.get("error")
    text = {
        "dial_failed": f"dial {address} failed",
        "connection_broken": f"connection to {address} broken",
        "stale_dropped": f"idle connection to {address} was closed by the peer; redialling",
        "close_failed": f"closing connection to {address} failed",
    }.get(event, f"{event} {address}")
    if error is not None:
        text += f": {error}"
    extra = [f"{k}={v}" for k, v in fields.items() if k not in ("address", "error")]
    if extra:
        text += f" ({', '.join(extra)})"
    return "gocp: " + text


class EventLog:
    """Sends one event per failure to the user's logger, in the form it takes."""

    __slots__ = ("_kind", "_target")

    def __init__(self, target: Any, kind: str) -> None:
        self._target = target
        self._kind = kind

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        """Report ``event`` with ``fields``; a failing logger never breaks the pool."""
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
