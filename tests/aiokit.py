"""What the asyncio tests share: event loops, a runner with a deadline, waiting, I/O.

- ``aio_test``: an ``async def`` test becomes a plain test run once per event loop
  (the default asyncio loop and uvloop, skipped with its reason when it cannot be
  imported), each run under a deadline and checked afterwards: no task of the test
  left pending, no exception the loop had to report on its own.
- ``until``: poll a condition with a deadline (never a sleep for something to happen).
- ``cancel_after``: cancel a task after a number of loop iterations (seeded schedules).
- I/O on ``AioConn`` members against the loopback servers of ``gocp.testing``.
- ``assert_whole``: the pool is back to its full size with consistent stats.
- ``HangingListener``: an address whose connects hang (a listener with a full backlog).
- ``Hooks``: dial/check/close hooks for ``gocp.pool``/``gocp.aio.pool``, coroutine
  functions or plain ones, that record their calls and can be made to fail or wait.

No pytest-asyncio here: it is not installed, and the runner is a dozen lines.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import importlib
import inspect
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import pytest

import gocp
from gocp.aio import AioConn, AioPool

__all__ = [
    "BOUND",
    "DEADLINE",
    "EARLY",
    "LOOPS",
    "Client",
    "HangingListener",
    "Hooks",
    "aio_test",
    "assert_consistent",
    "assert_whole",
    "cancel_after",
    "iterations",
    "loop_factory",
    "other_tasks",
    "recv_exactly",
    "recv_line",
    "request",
    "round_trip",
    "run",
    "settle",
    "until",
]

BOUND = 5.0  # the longest one wait in a test may take (a loaded 2-core machine)
DEADLINE = 20.0  # the longest a whole test coroutine may take
#: How early a timer of the loop may fire as ``time.monotonic`` sees it: uvloop's clock
#: counts whole milliseconds from a time cached at the start of each loop iteration.
EARLY = 0.01

try:
    _uvloop: Any = importlib.import_module("uvloop")
    _UVLOOP_MISSING = ""
except ImportError as exc:  # pragma: no cover - uvloop is in the dev venv
    _uvloop = None
    _UVLOOP_MISSING = f"uvloop cannot be imported here ({exc}): only the default loop runs"

if _uvloop is not None:
    # uvloop's first loop opens a pipe that lives as long as the process: open it now,
    # before a test counts its descriptors (conftest.no_leaks).
    _uvloop.new_event_loop().close()

#: The event loops every asyncio test runs under.
LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(
        "uvloop",
        id="uvloop",
        marks=pytest.mark.skipif(_uvloop is None, reason=_UVLOOP_MISSING or "uvloop"),
    ),
]


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the event loop called ``name`` (``"asyncio"`` or ``"uvloop"``)."""
    if name == "uvloop":
        assert _uvloop is not None, _UVLOOP_MISSING
        factory: Callable[[], asyncio.AbstractEventLoop] = _uvloop.new_event_loop
        return factory
    assert name == "asyncio", name
    return asyncio.new_event_loop


def other_tasks() -> set[asyncio.Task[Any]]:
    """The tasks of the running loop other than the current one that are not done."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current and not task.done()}


async def _guarded(coro: Coroutine[Any, Any, None], deadline: float) -> None:
    before = other_tasks()
    async with asyncio.timeout(deadline):
        await coro
    # Nothing the test started may outlive it: a task that ends within a few loop
    # iterations (a cancelled connect attempt closing its socket) is given them.
    left: set[asyncio.Task[Any]] = set()
    for _ in range(50):
        left = other_tasks() - before
        if not left:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"tasks left pending by the test: {left}")


def run(coro: Coroutine[Any, Any, None], loop: str, *, deadline: float = DEADLINE) -> None:
    """Run ``coro`` in a new event loop of kind ``loop`` within ``deadline`` seconds; fail
    if it leaves a task pending or the loop reported an exception nobody retrieved."""
    reported: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.get_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        runner.run(_guarded(coro, deadline))
        gc.collect()  # futures dropped with an exception report it when collected
        runner.run(asyncio.sleep(0))
    assert not reported, f"the event loop reported: {reported}"


def aio_test(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Make ``async def test_...(fixtures...)`` a test run under every loop of ``LOOPS``."""
    signature = inspect.signature(test)

    @functools.wraps(test)
    def wrapper(*args: Any, aio_loop: str, **kwargs: Any) -> None:
        run(test(*args, **kwargs), aio_loop)

    loop_param = inspect.Parameter("aio_loop", inspect.Parameter.KEYWORD_ONLY, annotation=str)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), loop_param], return_annotation=None
    )
    marked: Callable[..., None] = pytest.mark.parametrize("aio_loop", LOOPS)(wrapper)
    return marked


async def until(predicate: Callable[[], object], what: str = "", *, timeout: float = BOUND) -> None:
    """Poll ``predicate()`` (each loop turn, then every 2 ms) until true; fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    turns = 0
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        turns += 1
        await asyncio.sleep(0 if turns < 20 else 0.002)  # polling with a deadline


async def iterations(count: int) -> None:
    """Let the loop run ``count`` iterations (each ``sleep(0)`` yields exactly once)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def cancel_after(task: asyncio.Task[Any], count: int) -> bool:
    """Cancel ``task`` after ``count`` loop iterations (unless it ended first); whether
    ``cancel`` was called on a task still running."""
    for _ in range(count):
        if task.done():
            return False
        await asyncio.sleep(0)
    return not task.done() and task.cancel()


async def settle(*tasks: Awaitable[Any]) -> list[Any]:
    """Await ``tasks`` whatever they end with (results, exceptions, cancellations)."""
    return list(await asyncio.gather(*tasks, return_exceptions=True))


# -- I/O on a lent member -------------------------------------------------------------


async def recv_exactly(conn: AioConn, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        chunks += await conn.recv(min(65536, count - len(chunks)))
    return bytes(chunks)


async def round_trip(conn: AioConn, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` to an ``EchoServer``; return what came back (as many bytes)."""
    await conn.sendall(payload)
    return await recv_exactly(conn, len(payload))


async def recv_line(conn: AioConn, limit: int = 4096) -> bytes:
    line = bytearray()
    while not line.endswith(b"\n"):
        line += await conn.recv(limit)
        assert len(line) <= limit, f"reply line too long: {bytes(line[:80])!r}"
    return bytes(line)


async def request(conn: AioConn, request_id: str, body: str = "x") -> int:
    """One exchange with a ``RequestReplyServer``; how many times it applied the request."""
    await conn.sendall(f"{request_id} {body}\n".encode())
    got_id, times = (await recv_line(conn)).decode().split()
    assert got_id == request_id, f"reply to {got_id!r} received for {request_id!r}"
    return int(times)


# -- invariants -----------------------------------------------------------------------


def assert_consistent(stats: gocp.PoolStats) -> None:
    """The gauges of one snapshot agree with each other and with its members."""
    lent = sum(member.lent for member in stats.members)
    assert len(stats.members) == stats.size, stats
    assert [member.index for member in stats.members] == list(range(stats.size)), stats
    # An overflow connection is open only while lent: it is closed when put back.
    assert stats.in_use == lent + stats.overflow, stats
    assert stats.idle + lent <= stats.size, stats  # the rest are busy (a check, a dial)
    assert stats.connected == sum(member.connected for member in stats.members), stats
    assert stats.dial_failures <= stats.dials, stats
    assert stats.waiting >= 0, stats
    assert stats.wait_time >= 0, stats


async def assert_whole(pool: AioPool[Any], *, lend: bool = True) -> None:
    """The pool is back to full size: every member idle, nothing lent, nobody waiting,
    consistent stats; with ``lend``, every member is also lent at once (distinct objects,
    no more than ``size``) and given back."""
    stats = pool.stats()
    assert not stats.closed, "pool is closed"
    assert (stats.idle, stats.in_use, stats.waiting, stats.overflow) == (stats.size, 0, 0, 0), (
        f"pool not back to full size: {stats}"
    )
    assert not any(member.lent for member in stats.members), stats
    assert_consistent(stats)
    if not lend:
        return
    members = []
    try:
        for _ in range(stats.size):
            members.append(await pool.get(timeout=0))
        assert len({id(member) for member in members}) == stats.size, members
        assert pool.stats().in_use == stats.size
    finally:
        for member in members:
            pool.put(member)
    after = pool.stats()
    assert (after.idle, after.in_use, after.waiting) == (after.size, 0, 0), after
    assert_consistent(after)


class HangingListener:
    """A loopback address where a connect hangs: a listener with backlog 0 whose one
    queued connection is never accepted, so the kernel drops further SYNs. ``port``
    binds a given port (0: any). Closes everything on exit."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket()
        self.filler = socket.socket()
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", port))
            self.listener.listen(0)
            self.address: tuple[str, int] = self.listener.getsockname()
            self.filler.settimeout(BOUND)
            self.filler.connect(self.address)  # fills the queue: the next SYN is dropped
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.filler.close()
        self.listener.close()

    def __enter__(self) -> HangingListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- hooks for pools of clients -------------------------------------------------------


class Client:
    """What ``Hooks`` dials: a numbered client that counts its closes."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = 0

    def __repr__(self) -> str:
        return f"<Client {self.number}{' closed' if self.closed else ''}>"


class Hooks:
    """dial/check/close hooks that record their calls: coroutine functions (``kind``
    ``"async"``) or plain ones (``"plain"``, usable by either shell).

    ``dial_error``, ``check_result`` (a value to return or an exception to raise) and
    ``close_error`` make them fail. Async hooks first yield ``turns`` loop iterations,
    then wait for ``gates[name]`` when set; ``running`` maps each task inside an async
    hook to the hook's name, ``started`` counts the calls begun."""

    def __init__(self, kind: str = "async") -> None:
        assert kind in ("async", "plain"), kind
        self.kind = kind
        self.made: list[Client] = []
        self.checked: list[Client] = []
        self.closed: list[Client] = []
        self.events: list[str] = []  # "dial 1", "check 1", "close 1", "dial failed"
        self.dial_error: BaseException | None = None
        self.check_result: object = True
        self.close_error: BaseException | None = None
        self.turns = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.running: dict[asyncio.Task[Any] | None, str] = {}
        self.started: collections.Counter[str] = collections.Counter()

    # The hooks to pass: ``pool(hooks.dial, check=hooks.check, close=hooks.close)``.

    @property
    def dial(self) -> Callable[[], Any]:
        return self._async_dial if self.kind == "async" else self._dial

    @property
    def check(self) -> Callable[[Client], Any]:
        return self._async_check if self.kind == "async" else self._check

    @property
    def close(self) -> Callable[[Client], Any]:
        return self._async_close if self.kind == "async" else self._close

    def dials_running(self) -> int:
        return sum(1 for name in self.running.values() if name == "dial")

    def live(self) -> int:
        """Clients made and not closed (nor being closed by an async hook right now)."""
        closing = sum(1 for name in self.running.values() if name == "close")
        return len(self.made) - len({id(client) for client in self.closed}) - closing

    def closed_twice(self) -> list[Client]:
        return [client for client in self.made if client.closed > 1]

    # -- the plain hooks (the async ones wrap them) --

    def _dial(self) -> Client:
        self.started["dial"] += 1
        return self._make()

    def _make(self) -> Client:
        if self.dial_error is not None:
            self.events.append("dial failed")
            raise self.dial_error
        client = Client(len(self.made) + 1)
        self.made.append(client)
        self.events.append(f"dial {client.number}")
        return client

    def _check(self, client: Client) -> object:
        self.started["check"] += 1
        return self._judge(client)

    def _judge(self, client: Client) -> object:
        self.checked.append(client)
        self.events.append(f"check {client.number}")
        result = self.check_result
        if isinstance(result, BaseException):
            raise result
        return result

    def _close(self, client: Client) -> None:
        self.started["close"] += 1
        self._shut(client)

    def _shut(self, client: Client) -> None:
        client.closed += 1
        self.closed.append(client)
        self.events.append(f"close {client.number}")
        if self.close_error is not None:
            raise self.close_error

    async def _enter(self, name: str) -> None:
        self.running[asyncio.current_task()] = name
        self.started[name] += 1
        await iterations(self.turns)
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()

    def _leave(self) -> None:
        del self.running[asyncio.current_task()]

    async def _async_dial(self) -> Client:
        try:
            await self._enter("dial")
            return self._make()
        finally:
            self._leave()

    async def _async_check(self, client: Client) -> object:
        try:
            await self._enter("check")
            return self._judge(client)
        finally:
            self._leave()

    async def _async_close(self, client: Client) -> None:
        try:
            await self._enter("close")
            self._shut(client)
        finally:
            self._leave()
