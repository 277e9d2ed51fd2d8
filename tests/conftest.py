"""Shared fixtures: real loopback servers, and leak checks after every test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from gocp.testing import EchoServer, RequestReplyServer

_FD_DIR = "/proc/self/fd"


def open_fds() -> int:
    """Descriptors open in this process now (Linux)."""
    return len(os.listdir(_FD_DIR))


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # polling with a deadline, not waiting for an event


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads or file descriptors behind."""
    if "allow_leaks" in request.keywords or not os.path.isdir(_FD_DIR):
        yield
        return
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    yield
    extra: list[threading.Thread] = []

    def settled() -> bool:
        extra[:] = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        return not extra and open_fds() <= fds_before

    if not wait_until(settled, timeout=5.0):
        pytest.fail(
            f"leak: threads {[t.name for t in extra]}, fds {open_fds()} > {fds_before} before"
        )


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def rr_server() -> Iterator[RequestReplyServer]:
    with RequestReplyServer() as server:
        yield server
