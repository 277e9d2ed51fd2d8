"""The connector of a pool of any client: the user's dial, check and close hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._core import Slot

__all__ = ["HookConnector"]


class HookConnector:
    """Makes, checks and closes clients with the hooks given to ``gocp.pool``.

    ``dial()`` returns a new client; ``check(client)`` raises or returns
    ``False`` when it is dead; ``close(client)`` closes one (without a close
    hook, the client's own ``close()`` method is called when it has one).
    The hooks bound their own I/O: the pool passes them no deadline.
    """

    __slots__ = ("_check", "_close", "_dial", "label", "probe_lease")

    #: A member lent at fork time keeps its client until put back (its holder has it).
    release_lent = False
    #: The hooks bound their own I/O.
    dial_timeout: float | None = None

    def __init__(
        self,
        dial: Callable[[], Any],
        *,
        check: Callable[[Any], object] | None,
        close: Callable[[Any], object] | None,
        label: str,
        probe_lease: float,
    ) -> None:
        self._dial = dial
        self._check = check
        self._close = close
        self.label = label
        self.probe_lease = probe_lease

    @property
    def can_check(self) -> bool:
        """Whether there is a check to run (a ``check`` hook)."""
        return self._check is not None

    def connect(self, deadline: float | None) -> Any:
        """A new client from the dial hook (``deadline`` is the hook's own business)."""
        client = self._dial()
        if client is None:
            raise TypeError(f"dial hook {self.label} returned None instead of a client")
        return client

    def check(self, slot: Slot) -> bool:
        """Run the check hook on the slot's client: False (or an exception) means dead."""
        assert self._check is not None
        return self._check(slot.conn) is not False

    def close(self, client: Any) -> None:
        """Close a client: the close hook, or the client's own ``close()``."""
        if self._close is not None:
            self._close(client)
            return
        close = getattr(client, "close", None)
        if callable(close):
            close()

    def release(self, client: Any) -> bool:
        """After a fork: drop an inherited client without calling anything on it.

        Returns True: keep the reference (in the core's ``released``), so that no
        ``__del__`` of the client runs in the child either."""
        return True

    def forget(self, slot: Slot) -> None:
        """After a fork: nothing of a client slot's own to reset."""

    def interrupt(self, client: Any) -> None:
        """A check cannot be cut short from outside a hook: nothing to do."""

    def stale(self, client: Any) -> bool:
        """Whether a client is dead, without I/O: unknown (its ``check`` tells)."""
        return False
