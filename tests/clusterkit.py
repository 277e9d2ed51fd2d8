"""Helpers shared by the keyed pool and cluster suites (``test_keyed.py``, ``test_cluster.py``).

- ``hanging_address``: a loopback address whose connect hangs (SYNs dropped), like a
  blackholed host: a ``listen(0)`` listener whose accept queue is full;
- ``refused_address``: a loopback port that answers RST (bound, not listening);
- ``Dialer``: ``dial(address)`` hooks for pools of clients, making ``Client`` objects,
  with per-address failures and gates that hold a dial until the test opens them;
- ``echo``: one round trip through a socket member;
- ``Outcome``/``in_thread``: run a call in a thread and learn when and how it ended.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import pytest

import gocp

__all__ = [
    "BOUND",
    "Client",
    "Dialer",
    "Outcome",
    "echo",
    "hanging_address",
    "in_thread",
    "refused_address",
]

BOUND = 5.0  # the longest any wait in these suites may take (a loaded 2-core machine)

R = TypeVar("R")


@contextlib.contextmanager
def hanging_address(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """An address whose connect hangs until the dialler's timeout: a ``listen(0)`` listener
    that never accepts, its queue filled, so the kernel drops further SYNs."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind((host, 0))
        listener.listen(0)
        address: tuple[str, int] = listener.getsockname()
        for _ in range(8):
            probe = stack.enter_context(socket.socket())
            probe.setblocking(False)
            assert probe.connect_ex(address) == errno.EINPROGRESS
            _, writable, _ = select.select([], [probe], [], 0.1)
            if not writable:
                yield address  # this SYN was dropped: so will the next ones be
                return
            assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # queued
        pytest.fail("could not fill the accept queue of a listen(0) listener")


@contextlib.contextmanager
def refused_address(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """An address that refuses connections (RST): a bound socket that does not listen,
    kept bound for the block so nobody else takes the port."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield sock.getsockname()


def echo(conn: gocp.PersistentConn, payload: bytes = b"ping") -> None:
    """One round trip through a member connected to an ``EchoServer``."""
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = conn.recv(len(payload) - len(received))
        assert chunk, "the echo server closed the connection"
        received += chunk
    assert received == payload


# -- fake clients ----------------------------------------------------------------------


class Client:
    """What ``Dialer`` makes: a numbered client of one address."""

    def __init__(self, address: Hashable, number: int) -> None:
        self.address = address
        self.number = number
        self.closed = False
        self.checks = 0

    def __repr__(self) -> str:
        return f"<Client {self.address!r}#{self.number}{' closed' if self.closed else ''}>"


class Dialer:
    """``dial(address)``, ``check(client)`` and ``close(client)`` hooks that record calls.

    ``down`` holds addresses whose dial raises ``ConnectionRefusedError``; ``gate(address)``
    makes the next dials of that address wait (``entered`` is set when one does) until
    the gate is opened (at most ``BOUND``). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = 0
        self.dials: Counter[Hashable] = Counter()
        self.made: list[Client] = []
        self.closed: list[Client] = []
        self.checked: list[Client] = []
        self.down: set[Hashable] = set()
        self._gates: dict[Hashable, threading.Event] = {}
        self.entered: dict[Hashable, threading.Event] = {}

    def gate(self, address: Hashable) -> threading.Event:
        """Hold the dials of ``address`` until the returned event is set."""
        gate = threading.Event()
        with self._lock:
            self._gates[address] = gate
            self.entered[address] = threading.Event()
        return gate

    def ungate(self, address: Hashable) -> None:
        with self._lock:
            gate = self._gates.pop(address, None)
        if gate is not None:
            gate.set()

    def dial(self, address: Hashable) -> Client:
        with self._lock:
            self.dials[address] += 1
            gate = self._gates.get(address)
            entered = self.entered.get(address)
        if gate is not None and entered is not None:
            entered.set()
            if not gate.wait(BOUND):
                raise TimeoutError(f"dial {address!r}: the test never opened its gate")
        with self._lock:
            if address in self.down:
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address} refused")
            self._numbers += 1
            client = Client(address, self._numbers)
            self.made.append(client)
            return client

    def check(self, client: Client) -> bool:
        with self._lock:
            client.checks += 1
            self.checked.append(client)
        return not client.closed

    def close(self, client: Client) -> None:
        with self._lock:
            client.closed = True
            self.closed.append(client)

    def made_for(self, address: Hashable) -> list[Client]:
        with self._lock:
            return [client for client in self.made if client.address == address]


# -- calls in threads ---------------------------------------------------------------


class Outcome(Generic[R]):
    """How a call run by ``in_thread`` ended: ``value`` or ``error``, ``done`` set then,
    ``at`` the monotonic time it ended."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: R | None = None
        self.error: BaseException | None = None
        self.at = 0.0

    def result(self, timeout: float = BOUND) -> R:
        """The value, once done (re-raises the call's error)."""
        assert self.done.wait(timeout), "the call in the thread did not end"
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value

    def failure(self, timeout: float = BOUND) -> BaseException:
        """The error the call raised, once done."""
        assert self.done.wait(timeout), "the call in the thread did not end"
        assert self.error is not None, f"the call returned {self.value!r}"
        return self.error


@contextlib.contextmanager
def in_thread(call: Callable[[], R], name: str = "caller") -> Iterator[Outcome[R]]:
    """Run ``call()`` in a thread for the ``with`` block; the thread is joined at exit."""
    outcome: Outcome[R] = Outcome()

    def run() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:
            outcome.error = exc
        finally:
            outcome.at = time.monotonic()
            outcome.done.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(BOUND * 2)
        assert not thread.is_alive(), "the thread did not end"
