"""A gocp pool talking RESP to a real ``redis-server``, from many threads.

The client is the README's example, as it is there: a tiny RESP client on a gocp pool,
with no reconnect code. The server is Debian's ``redis-server`` (``scripts/test`` installs
it when run as root), started by each test on a free loopback port. It is killed
(``SIGKILL``) and restarted under load, its clients are killed (``CLIENT KILL``), and
``INFO commandstats`` (or counters persisted with ``appendfsync always``) proves that no
command was ever sent twice: every command either ran once, or failed with an error that
says whether it may have run (``ConnectionBroken``) or did not (``DialError``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from invariants import unused_address

import gocp
from gocp.testing import FakeClock

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (Debian package redis-server; scripts/test installs "
    "it when run as root, which this run is not)",
)

# -- the README's example: a tiny RESP client on a gocp pool ------------------------------


class RedisError(Exception):
    """An error reply (``-ERR ...``): the command ran and failed; the connection is fine."""


def encode(*args: object) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Reply:
    """Reads one RESP2 reply from a connection (anything with ``recv``)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.buf = conn, b""

    def _more(self) -> None:
        self.buf += self.conn.recv(65536)  # a pooled member raises rather than return b""

    def read(self) -> Any:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) < size + 2:
                self._more()
            data, self.buf = self.buf[:size], self.buf[size + 2 :]
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ValueError(f"not a RESP reply: {line[:40]!r}")


def command(pool: gocp.Pool[gocp.PersistentConn], *args: object, timeout: float = 5.0) -> Any:
    """Run one command on a pooled connection and return its reply.

    ``get(connect=True)`` waits out a server restart within ``timeout``. A
    ``gocp.DialError`` means the command was not sent; a ``gocp.ConnectionBroken``
    that it may have run (gocp never sends it again: retry only what is idempotent).
    """
    with pool.get(timeout, connect=True) as conn:
        conn.sendall(encode(*args))
        reply = Reply(conn).read()
    if isinstance(reply, RedisError):  # raised outside the block: the connection is fine
        raise reply
    return reply


def ping(conn: gocp.PersistentConn) -> bool:
    """A ``check``: a connection idle longer than ``check_interval`` must answer PING."""
    conn.sendall(b"*1\r\n$4\r\nPING\r\n")
    return Reply(conn).read() == "PONG"


# -- the server ------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port (kept across restarts), in ``directory``."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent  # AOF with fsync before every reply: survives SIGKILL
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        for _ in range(5):  # a free port may be taken between the look and the bind
            if not self.port or self.starts == 0:
                self.port = unused_address()[1]
            if self._start_once():
                self.starts += 1
                return
            if self.starts:  # a restart must get its own port back
                break
        raise RuntimeError(f"redis-server did not start: {self._log_tail()}")

    def _start_once(self) -> bool:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--daemonize", "no", "--protected-mode", "no"]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        args += ["--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait_until(lambda: self._ready() or self._exited(), 10) and self._ready():
            return True
        self._reap()
        return False

    def _exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def _ready(self) -> bool:
        if self._exited():
            return False
        try:
            return self.admin("PING") == "PONG"
        except (OSError, RedisError):  # not up yet, or still loading its AOF ("LOADING")
            return False

    def _log_tail(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-800:] if log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client, no save (but the AOF, when persistent)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def admin(self, *args: object) -> Any:
        """One command on a connection of its own (not the pool's), within 5 s."""
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(encode(*args))
            reply = Reply(sock).read()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def calls(self) -> dict[str, int]:
        """``INFO commandstats``: the calls each command ran since this server started."""
        text: bytes = self.admin("INFO", "commandstats")
        calls: dict[str, int] = {}
        for line in text.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line[len("cmdstat_") :].partition(":")
                calls[name] = int(dict(f.split("=") for f in stats.split(","))["calls"])
        return calls


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- load from many threads ------------------------------------------------------------------


class Load:
    """Threads each running ``INCR`` on a key of their own until stopped, counting outcomes.

    ``ok``: the reply came (it ran once); ``broken``: ``ConnectionBroken`` (it may have run);
    ``not_sent``: ``DialError`` or ``PoolTimeout`` (it did not run). Anything else fails.
    """

    def __init__(self, pool: gocp.Pool[gocp.PersistentConn], threads: int) -> None:
        self.pool = pool
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = [Counter[str]() for _ in range(threads)]
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"redis-load-{i}")
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self.threads)

    def _run(self, index: int) -> None:
        counts = self.counts[index]
        while not self.stop.is_set():
            try:
                command(self.pool, "INCR", f"counter:{index}", timeout=10)
                outcome = "ok"
            except gocp.ConnectionBroken:
                outcome = "broken"
            except (gocp.DialError, gocp.PoolTimeout):
                outcome = "not_sent"
            except BaseException as exc:
                self.errors.append(exc)
                return
            with self.lock:
                counts[outcome] += 1

    def total(self, outcome: str) -> int:
        with self.lock:
            return sum(counts[outcome] for counts in self.counts)

    def each(self, outcome: str) -> list[int]:
        with self.lock:
            return [counts[outcome] for counts in self.counts]

    def progressed(self, outcome: str, by: int) -> Callable[[], bool]:
        """A predicate: every thread has ``by`` more ``outcome`` than now."""
        start = self.each(outcome)
        return lambda: all(n >= s + by for n, s in zip(self.each(outcome), start, strict=True))


# -- the tests ---------------------------------------------------------------------------------


def test_the_example_against_a_real_server(redis):
    with gocp.new(redis.address, size=4, check=ping) as pool:
        assert command(pool, "SET", "greeting", "hello") == "OK"
        assert command(pool, "GET", "greeting") == b"hello"
        assert command(pool, "GET", "missing") is None
        assert command(pool, "RPUSH", "list", "a", "b") == 2
        assert command(pool, "LRANGE", "list", 0, -1) == [b"a", b"b"]
        with pytest.raises(RedisError, match="wrong kind of value"):
            command(pool, "INCR", "list")
        assert command(pool, "PING") == "PONG"  # the error reply left the connection fine
        stats = pool.stats()
        assert (stats.dial_failures, stats.broken) == (0, 0)
        assert stats.dials <= 4  # one per member at most: the ring lends them in turn
    assert redis.calls()["set"] == 1


def test_many_threads_each_command_runs_once(redis):
    threads, rounds = 16, 50
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        try:
            barrier.wait(10)
            for n in range(rounds):
                command(pool, "INCR", f"counter:{index}")
                command(pool, "SET", f"key:{index}:{n}", n)
                assert command(pool, "GET", f"key:{index}:{n}") == str(n).encode()
        except BaseException as exc:
            errors.append(exc)

    with gocp.new(redis.address, size=4) as pool:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not errors
        stats = pool.stats()
        assert stats.dials == 4  # four connections served sixteen threads
        assert stats.waits > 0
    calls = redis.calls()
    assert (calls["incr"], calls["set"], calls["get"]) == (threads * rounds,) * 3
    for index in range(threads):
        assert redis.admin("GET", f"counter:{index}") == str(rounds).encode()


def test_survives_redis_killed_and_restarted_under_load(persistent_redis):
    redis = persistent_redis
    # dial_timeout is also a probe's lease: a caller of get(connect=True) told that another
    # caller is probing the server may wait that long before it tries again.
    options = {"retry_min": 0.01, "retry_max": 0.2, "dial_timeout": 1.0}
    with gocp.new(redis.address, size=4, **options) as pool:
        with Load(pool, threads=8) as load:
            assert wait_until(load.progressed("ok", 20), 30)
            redis.kill()  # SIGKILL under load: commands in flight get no reply
            assert wait_until(lambda: load.total("broken") + load.total("not_sent") > 0, 10)
            redis.start()  # the same port; the AOF brings the counters back
            assert wait_until(load.progressed("ok", 20), 30)  # every thread, no reconnect code
        assert not load.errors
        assert pool.stats().connected >= 1
    # Each counter: every acknowledged INCR ran, and at most the unanswered ones besides.
    for index, counts in enumerate(load.counts):
        value = int(redis.admin("GET", f"counter:{index}"))
        assert counts["ok"] <= value <= counts["ok"] + counts["broken"], (index, counts, value)


def test_client_kill_is_caught_by_the_stale_check(redis):
    with gocp.new(redis.address, size=4) as pool:
        members = [pool.get(timeout=0) for _ in range(4)]
        for conn in members:
            with conn:  # each member dials and runs one command
                conn.sendall(encode("INCR", "n"))
                assert Reply(conn).read() >= 1
        killed = redis.admin("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed == 4
        assert wait_until(lambda: pool.stats().connected == 0)  # the probe sees it, idle
        members = [pool.get(timeout=0) for _ in range(4)]
        for conn in members:
            with conn:  # no error: each connection is replaced before the command is sent
                conn.sendall(encode("INCR", "n"))
                assert Reply(conn).read() >= 5
        stats = pool.stats()
        assert (stats.stale, stats.broken, stats.dials) == (4, 0, 8)
    assert redis.calls()["incr"] == 8
    assert redis.admin("GET", "n") == b"8"


def test_client_kill_is_caught_by_a_ping_check(redis):
    clock = FakeClock()
    with gocp.new(redis.address, size=2, check=ping, check_interval=10, clock=clock) as pool:
        for conn in [pool.get(timeout=0) for _ in range(2)]:
            with conn:
                conn.sendall(encode("SET", "k", "v"))
                assert Reply(conn).read() == "OK"
        pings = redis.calls().get("ping", 0)  # the server's readiness probe sent some
        clock.advance(11)  # both idle past check_interval: the background thread PINGs them
        assert wait_until(lambda: redis.calls()["ping"] == pings + 2)
        assert redis.admin("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == 2
        clock.advance(11)  # the background pass finds them: by the stale probe or the check
        assert wait_until(lambda: (s := pool.stats()).stale + s.closed_check == 2)
        assert command(pool, "GET", "k") == b"v"  # no error
        assert command(pool, "GET", "k") == b"v"
        assert pool.stats().broken == 0
    calls = redis.calls()
    assert calls["ping"] == pings + 2  # nothing was sent on a dead connection
    assert (calls["set"], calls["get"]) == (2, 2)


def test_no_command_is_sent_twice_while_clients_are_killed(redis):
    with gocp.new(redis.address, size=4, retry_min=0.01, retry_max=0.05) as pool:
        with Load(pool, threads=8) as load:
            for _ in range(5):
                assert wait_until(load.progressed("ok", 5), 30)
                redis.admin("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            assert wait_until(load.progressed("ok", 5), 30)
        assert not load.errors
        stats = pool.stats()
    calls = redis.calls()["incr"]
    ok, broken, not_sent = load.total("ok"), load.total("broken"), load.total("not_sent")
    # Every acknowledged command ran once; the unanswered ones at most once each; and
    # the server ran no more than the client sent: nothing was ever sent twice.
    assert ok <= calls <= ok + broken
    values = sum(int(redis.admin("GET", f"counter:{i}") or 0) for i in range(8))
    assert values == calls
    assert not_sent == 0  # killed connections are replaced: the server was never down
    assert stats.stale + stats.broken >= 5


def test_a_server_that_is_not_there_yet(tmp_path):
    server = RedisServer(tmp_path)
    server.port = unused_address()[1]
    with gocp.new(server.address, size=2, retry_min=0.01, retry_max=0.05) as pool:
        with pytest.raises(gocp.DialError) as info:
            command(pool, "PING", timeout=0.2)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        server.starts = 1  # start on this port, not a fresh one
        try:
            with contextlib.suppress(RuntimeError):
                server.start()
            if server.proc is None:
                pytest.skip("the port was taken before redis-server could bind it")
            assert command(pool, "PING") == "PONG"  # the same pool, no reconnect code
        finally:
            server.kill()
