"""Pool operations interrupted at every point where CPython can run a signal handler.

Run as a script (``python tests/interrupt_scenarios.py NAME``) by
``tests/test_interrupts.py``, in a child process: the harness replaces any
tracer (coverage's) while it runs. Each scenario builds a fresh pool, runs one
operation with ``KeyboardInterrupt`` raised at one point (``each_interrupt``
does every point in turn), then checks the pool as it was left, repairing
nothing first: the lock is free, nobody is queued, no probe is stuck, every
member is idle or held by the caller (who records what it holds with no gap
an interrupt could fall into), the connection bookkeeping is true, and the
pool then lends every member and works. It prints one JSON line: the number
of points and the problems found, each with the place of its interrupt.

The one place the pool cannot defend is the first instruction of the call
the caller makes (``put``, a ``with`` block's exit): an interrupt there is
an interrupt just before the call. Losses there are reported apart
(``entry_losses``), and only there.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from interrupts import Interrupted, each_interrupt, waits

import gocp
from gocp._core import BUSY, IDLE, LENT
from gocp.testing import EchoServer, no_backoff

#: The caller-facing entries: an interrupt at one of them is one before the call.
CALLER_ENTRIES = {"put", "__exit__", "_return"}


class Case:
    """One scenario's state: the pool, what the caller holds, and the run."""

    def __init__(self, pool: gocp.Pool[Any], run: Callable[[Case], None], **extra: Any) -> None:
        self.pool = pool
        self.held: list[Any] = []
        self.extra = extra
        self._run = run

    def __call__(self) -> None:
        self._run(self)


# -- checks ---------------------------------------------------------------------------------


def check(
    case: Case, *, closed: bool = False, usable: Callable[[Any], None] | None = None
) -> list[str]:
    """What is wrong with the pool now (nothing repaired before looking)."""
    pool = case.pool
    core, lock = pool._core, pool._lock
    problems: list[str] = []
    if lock._is_owned():  # type: ignore[attr-defined]
        problems.append("the pool's lock is held by this thread")
    elif not lock.acquire(timeout=1):
        problems.append("the pool's lock is held")
        return problems
    else:
        lock.release()
    if [w for w in core.waiters if not w.closed] and not closed:
        problems.append(f"{len(core.waiters)} waiter(s) still queued")
    if core.backoff.probing and core.backoff.probe_until != float("inf"):
        problems.append("a dial probe is still marked in flight")
    if core.checking:
        problems.append("a check is still marked running")
    held = {id(obj) for obj in case.held}
    idle_ids = [id(slot) for slot in core.idle]
    if len(set(idle_ids)) != len(idle_ids):
        problems.append("a member is idle twice")
    for slot in core.members:
        mine = id(slot) in held or (slot.conn is not None and id(slot.conn) in held)
        if slot.state is LENT and not mine:
            problems.append(f"member {slot.index} is lent to nobody")
        if slot.state is BUSY:
            problems.append(f"member {slot.index} is left busy")
        if slot.state is IDLE and not closed and id(slot) not in idle_ids:
            problems.append(f"member {slot.index} is idle but not lendable")
    attached = [s for s in (*core.members, *core.extra) if s.conn is not None]
    members = sum(1 for s in core.members if s.conn is not None)
    if core.connected != members:
        problems.append(f"connected says {core.connected}, {members} members hold one")
    if sorted(core.by_conn) != sorted(id(s.conn) for s in attached):
        problems.append("the connection map disagrees with the slots")
    if problems or closed:
        return problems
    # The caller gives back what it holds; then every member is lendable and works.
    for obj in case.held:
        slot = obj if pool._sockets else core.by_conn.get(id(obj))
        if slot is not None and slot.state is LENT:
            pool.put(obj)
    members = []
    try:
        for _ in range(pool.size):
            members.append(pool.get(timeout=0))
        for member in members:
            if usable is not None:
                usable(member)
    except Exception as exc:
        problems.append(f"the pool does not work afterwards: {exc!r}")
    finally:
        for member in members:
            pool.put(member)
    if core.doomed:
        problems.append(f"{len(core.doomed)} connection(s) left unclosed in doomed")
    return problems


def round_trip(conn: gocp.PersistentConn) -> None:
    conn.sendall(b"ping")
    received = b""
    while len(received) < 4:
        received += conn.recv(4 - len(received))
    assert received == b"ping", received


# -- scenarios -------------------------------------------------------------------------------
# Each returns (setup, check_one); check_one(result) -> problems.

Scenario = tuple[Callable[[], Case], Callable[[Interrupted], list[str]]]


def sockets_get_put(server: EchoServer) -> Scenario:
    """get, I/O, put on a connected member (the hot path)."""

    def run(case: Case) -> None:
        member = case.pool.get(timeout=0)
        case.held.append(member)
        round_trip(member)
        case.pool.put(case.held[-1])
        del case.held[-1]

    def setup() -> Case:
        pool = gocp.new(server.address, size=1)
        with pool.connection() as conn:
            round_trip(conn)
        return Case(pool, run)

    return setup, lambda result: check(result.run, usable=round_trip)  # type: ignore[arg-type]


def sockets_connection_block(server: EchoServer) -> Scenario:
    """``with pool.connection() as conn:`` with I/O, then a break the block raises."""

    def run(case: Case) -> None:
        with case.pool.connection(timeout=0) as conn:
            case.held.append(conn)
            round_trip(conn)
        del case.held[-1]
        try:
            with case.pool.connection(timeout=0) as conn:
                case.held.append(conn)
                conn.sendall(b"half")
                raise ValueError("bad reply")
        except ValueError:
            del case.held[-1]

    def setup() -> Case:
        pool = gocp.new(server.address, size=1)
        with pool.connection() as conn:
            round_trip(conn)
        return Case(pool, run)

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        # ``held`` may still name the member of a block the interrupt left: the with
        # statement's exit gave it back, unless its entry was the interrupt (then the
        # member is lent to nobody).
        case.held = []
        return check(case, usable=round_trip)

    return setup, check_one


def sockets_put_broken(server: EchoServer) -> Scenario:
    def run(case: Case) -> None:
        member = case.pool.get(timeout=0)
        case.held.append(member)
        round_trip(member)
        case.pool.put(case.held[-1], broken=True)
        del case.held[-1]

    def setup() -> Case:
        return Case(gocp.new(server.address, size=2), run)

    return setup, lambda result: check(result.run, usable=round_trip)  # type: ignore[arg-type]


def sockets_dial(listener: socket.socket) -> Scenario:
    """A member's first I/O dials (a listener that never accepts: the kernel does)."""

    def run(case: Case) -> None:
        member = case.pool.get(timeout=0)
        case.held.append(member)
        member.sendall(b"x")
        case.pool.put(case.held[-1])
        del case.held[-1]

    def setup() -> Case:
        fds = _sockets_open()
        return Case(gocp.new(listener.getsockname(), size=1), run, fds=fds)

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        problems = check(case)
        case.pool.close()
        if _sockets_open() != case.extra["fds"]:
            problems.append("a socket the dial made was left open")
        return problems

    return setup, check_one


def sockets_probe_refused(address: tuple[str, int]) -> Scenario:
    """The probe dial after a failure, refused: its outcome must be recorded, or given up."""

    def run(case: Case) -> None:
        member = case.pool.get(timeout=0)
        case.held.append(member)
        try:
            member.sendall(b"x")
        except gocp.DialError:
            pass
        case.pool.put(case.held[-1])
        del case.held[-1]

    def setup() -> Case:
        pool = gocp.new(address, size=1, retry_min=0.001, retry_max=0.001)
        backoff = pool._core.backoff
        backoff.failures, backoff.next_at = 1, 0.0  # failing, and the window is over
        return Case(pool, run)

    return setup, lambda result: check(result.run)  # type: ignore[arg-type]


class Clock:
    """A clock that moves only when told and wakes nobody: the pools' background threads
    (started by check_interval) then stay asleep during a run, which stays deterministic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Client:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def clients_get_put() -> Scenario:
    """A client pool: get dials in get, put; then get with a check due, and fresh."""

    def run(case: Case) -> None:
        clock = case.extra["clock"]
        client = case.pool.get(timeout=0)
        case.held.append(client)
        case.pool.put(case.held[-1])
        del case.held[-1]
        clock.advance(10)
        client = case.pool.get(timeout=0, fresh=True)
        case.held.append(client)
        case.pool.put(case.held[-1], broken=True)
        del case.held[-1]

    def setup() -> Case:
        clock = Clock()
        pool = gocp.pool(
            Client, size=1, check=lambda client: not client.closed, check_interval=5, clock=clock
        )
        return Case(pool, run, clock=clock)

    return setup, lambda result: check(result.run)  # type: ignore[arg-type]


def clients_check_at_lend() -> Scenario:
    def run(case: Case) -> None:
        client = case.pool.get(timeout=0)  # idle past check_interval: checked first
        case.held.append(client)
        case.pool.put(case.held[-1])
        del case.held[-1]

    def setup() -> Case:
        clock = Clock()
        pool = gocp.pool(Client, size=1, check=lambda client: True, check_interval=5, clock=clock)
        client = pool.get(timeout=0)
        pool.put(client)
        clock.advance(10)
        return Case(pool, run)

    return setup, lambda result: check(result.run)  # type: ignore[arg-type]


def clients_dial_fails() -> Scenario:
    down = [True]

    def failing() -> Client:
        if down[0]:
            raise OSError("refused")
        return Client()

    def run(case: Case) -> None:
        try:
            client = case.pool.get(timeout=0)
        except gocp.DialError:
            return
        case.held.append(client)

    def setup() -> Case:
        down[0] = True
        pool = gocp.pool(failing, size=1, retry_min=0.001, retry_max=0.001)
        backoff = pool._core.backoff
        backoff.failures, backoff.next_at = 1, 0.0
        return Case(pool, run)

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        down[0] = False  # the server is back: the pool must work without a reconnect loop
        with no_backoff():
            return check(case)

    return setup, check_one


def clients_overflow() -> Scenario:
    def run(case: Case) -> None:
        client = case.pool.get(timeout=0)  # every member lent: an overflow client
        case.held.append(client)
        case.pool.put(case.held[-1])  # closed at once: nobody waits
        del case.held[-1]

    def setup() -> Case:
        pool = gocp.pool(Client, size=1, max_overflow=1)
        case = Case(pool, run)
        case.held.append(pool.get(timeout=0))  # the member, held throughout
        return case

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        problems = check(case)
        core = case.pool._core
        if [s for s in core.extra if s.state is not LENT or id(s.conn) not in map(id, case.held)]:
            problems.append("an overflow slot is left open with nobody holding it")
        return problems

    return setup, check_one


def get_times_out() -> Scenario:
    """A queued get whose time runs out (interrupted also inside its wait)."""

    def run(case: Case) -> None:
        try:
            case.pool.get(timeout=0.001)
        except gocp.PoolTimeout:
            pass

    def setup() -> Case:
        pool = gocp.pool(Client, size=1)
        case = Case(pool, run)
        case.held.append(pool.get(timeout=0))
        return case

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        problems = check(case)
        # Counted only if its time had run out before the interrupt (then it did time out).
        if case.pool._core.timeouts > 1 or (
            result.point.kind == "blocking" and case.pool._core.timeouts
        ):
            problems.append("an interrupted get was counted as a timeout")
        return problems

    return setup, check_one


def close_pool(server: EchoServer, *, waiter: bool) -> Scenario:
    """close() with idle connections and a lent member; or, with ``waiter``, every member
    lent and a get queued in another thread (the harness traces this thread only)."""

    def run(case: Case) -> None:
        case.pool.close()

    def setup() -> Case:
        pool = gocp.new(server.address, size=3)
        members = [pool.get(timeout=0) for _ in range(3)]
        for member in members:
            round_trip(member)
        idle = [] if waiter else members[:2]
        sockets = [m.socket for m in idle]
        for member in idle:
            pool.put(member)
        case = Case(pool, run, sockets=sockets, woke=threading.Event())
        case.held.extend(m for m in members if m not in idle)
        if waiter:

            def wait() -> None:
                try:
                    pool.get(timeout=5)
                except gocp.PoolClosed:
                    case.extra["woke"].set()

            case.extra["thread"] = threading.Thread(target=wait, daemon=True)
            case.extra["thread"].start()
            while not pool._core.waiters:  # it queues within microseconds
                case.extra["woke"].wait(0.001)
        return case

    def check_one(result: Interrupted) -> list[str]:
        case: Case = result.run  # type: ignore[assignment]
        problems = check(case, closed=True)
        case.pool.close()  # a second close finishes an interrupted one
        if waiter:
            if not case.extra["woke"].wait(2):
                problems.append("the queued get was not woken by close")
            case.extra["thread"].join(2)
        if any(sock.fileno() != -1 for sock in case.extra["sockets"]):
            problems.append("an idle socket was left open after close")
        for lent in case.held:
            sock = lent.socket
            case.pool.put(lent)
            if sock.fileno() != -1:
                problems.append("a lent member's socket was not closed when put back")
        return problems

    return setup, check_one


# -- helpers -----------------------------------------------------------------------------------


def _sockets_open() -> int:
    return sum(1 for name in os.listdir("/proc/self/fd") if _is_socket(name))


def _is_socket(name: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
    except OSError:
        return False


_PACKAGE = os.path.dirname(os.path.abspath(gocp.__file__)) + os.sep


def _ours(frame: Any) -> bool:
    """Interrupt gocp's code and the scenario's (the standard library's inner points, as
    in the resolver's codecs, reach gocp as the end of the call gocp made)."""
    filename = frame.f_code.co_filename
    return filename.startswith(_PACKAGE) or filename == __file__


def run_scenario(name: str) -> dict[str, Any]:
    report: dict[str, Any] = {"points": 0, "problems": [], "entry_losses": []}
    with EchoServer() as server:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        refused_address = refused.getsockname()
        refused.close()
        scenarios: dict[str, Callable[[], Scenario]] = {
            "sockets_get_put": lambda: sockets_get_put(server),
            "sockets_connection_block": lambda: sockets_connection_block(server),
            "sockets_put_broken": lambda: sockets_put_broken(server),
            "sockets_dial": lambda: sockets_dial(listener),
            "sockets_probe_refused": lambda: sockets_probe_refused(refused_address),
            "clients_get_put": clients_get_put,
            "clients_check_at_lend": clients_check_at_lend,
            "clients_dial_fails": clients_dial_fails,
            "clients_overflow": clients_overflow,
            "get_times_out": get_times_out,
            "close_idle_and_lent": lambda: close_pool(server, waiter=False),
            "close_with_a_waiter": lambda: close_pool(server, waiter=True),
        }
        setup, check_one = scenarios[name]()
        blocking = waits if name == "get_times_out" else None
        try:
            for result in each_interrupt(setup, blocking=blocking, include=_ours):
                report["points"] += 1
                case: Case = result.run  # type: ignore[assignment]
                try:
                    problems = check_one(result)
                finally:
                    case.pool.close()
                if not problems:
                    continue
                point = result.point
                entry = (
                    point is not None
                    and point.kind == "entry"
                    and point.function.rsplit(".", 1)[-1] in CALLER_ENTRIES
                )
                lost = [p for p in problems if "lent to nobody" in p]
                if entry and lost == problems:
                    report["entry_losses"].append(str(result))
                else:
                    report["problems"].append(f"{result}: {'; '.join(problems)}")
        finally:
            listener.close()
    return report


if __name__ == "__main__":
    print(json.dumps(run_scenario(sys.argv[1])))
