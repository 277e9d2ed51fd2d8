"""Regression tests for paths a review found: interrupts, fork, inputs the kernel refuses."""

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import gocp


def test_put_broken_interrupted_while_closing_still_returns_the_slot(echo_server, monkeypatch):
    """An interrupt raised while ``put(broken=True)`` closes the socket: the return is
    finished anyway (the member is idle and lendable), and the interrupt propagates."""
    from gocp import _sockets

    with gocp.new(echo_server.address, size=1) as pool:
        conn = pool.get(timeout=0)
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        original = _sockets.SocketConnector.close

        def interrupted(self, sock):
            original(self, sock)
            raise KeyboardInterrupt

        monkeypatch.setattr(_sockets.SocketConnector, "close", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pool.put(conn, broken=True)
        monkeypatch.undo()
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.broken) == (1, 0, 1)
        assert pool.get(timeout=0) is conn
        pool.put(conn)


def test_dial_interrupted_releases_the_probe(monkeypatch):
    from gocp import _sockets

    with gocp.new("127.0.0.1:1", size=2, retry_min=0.01, retry_max=0.01) as pool:
        a, b = pool.get(timeout=0), pool.get(timeout=0)
        with pytest.raises(gocp.DialError):
            a.sendall(b"x")  # refused: the address is now failing
        backoff = pool._core.backoff
        backoff.next_at = 0.0  # the window is over: the next dial is the probe

        def interrupted(host, port, deadline):
            raise KeyboardInterrupt

        monkeypatch.setattr(_sockets, "connect", interrupted)
        with pytest.raises(KeyboardInterrupt):
            a.sendall(b"x")
        monkeypatch.undo()
        assert backoff.probing is False
        dials = pool.stats().dials
        with pytest.raises(gocp.DialError) as caught:
            b.sendall(b"x")  # a real attempt, not "another member is probing"
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
        assert pool.stats().dials == dials + 1
        pool.put(a)
        pool.put(b)


def test_touching_the_raw_socket_counts_as_use(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection(timeout=0) as conn:
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
        used = []

        def block():
            with pool.connection(timeout=0) as conn:
                used.append(conn)
                assert conn.socket.fileno() >= 0  # raw I/O could happen here
                raise RuntimeError("protocol error")

        with pytest.raises(RuntimeError):
            block()
        assert not used[0].connected  # went back broken


def test_keepalive_beyond_the_kernel_limit_is_refused_at_new():
    with pytest.raises(ValueError, match="keepalive"):
        gocp.new("127.0.0.1:1", keepalive=40000)
    gocp.new("127.0.0.1:1", keepalive=32767).close()


def test_host_that_cannot_be_encoded_is_refused_at_new():
    with pytest.raises(ValueError, match="address"):
        gocp.new(("a" * 64 + ".example", 80))


FORK_CHILD = """
    import json, os, sys
    import gocp
    from gocp.testing import EchoServer

    out = {}
    with EchoServer() as server, gocp.new(server.address, size=2) as pool:
        held = pool.get(timeout=0)
        held.settimeout(7.0)
        held.sendall(b"x"); held.recv(1)
        backoff = pool._core.backoff
        backoff.failures, backoff.probe_until = 1, float("inf")  # a probe "in flight" forever
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            child = {}
            other = pool.get(timeout=0)
            child["other_is_held"] = other is held
            try:
                pool.get(timeout=0)
                child["third"] = "lent"
            except gocp.PoolTimeout:
                child["third"] = "timeout"
            other.sendall(b"y")
            child["other_reply"] = other.recv(1).decode()
            child["held_timeout"] = held.gettimeout()
            held.sendall(b"z")
            child["held_reply"] = held.recv(1).decode()
            pool.put(other); pool.put(held)
            os.write(write, json.dumps(child).encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            out["child"] = json.loads(pipe.read())
        out["status"] = status
        held.sendall(b"p"); out["parent_reply"] = held.recv(1).decode()
        backoff.abandoned()
        pool.put(held)
    print(json.dumps(out))
"""


def run_child(script: str, timeout: float) -> Any:
    """Run ``script`` in a fresh interpreter; return the JSON of its last line of output."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(60)
def test_fork_keeps_the_forking_threads_member_and_drops_a_stuck_probe():
    out = run_child(FORK_CHILD, timeout=45)
    assert out["status"] == 0
    child = out["child"]
    assert child["other_is_held"] is False  # never lent twice
    assert child["third"] == "timeout"  # the held member stays lent to its holder
    assert child["other_reply"] == "y"  # dialled although a probe was "in flight"
    assert child["held_timeout"] == 7.0  # its holder's per-lend timeout, until it puts it back
    assert child["held_reply"] == "z"  # redialled its own socket
    assert out["parent_reply"] == "p"  # the parent's connection was untouched


INTERRUPT_CHILD = """
    import json, random, signal, time
    import gocp
    from gocp._core import IDLE, LENT

    class Interrupt(BaseException):
        pass

    armed = False

    def handler(signum, frame):
        global armed
        if armed:
            armed = False  # one interrupt per round
            raise Interrupt

    # A one-shot timer per round: the kernel raises the signal at a random moment of
    # the round, wherever the thread is (a thread sending it would need the GIL).
    signal.signal(signal.SIGALRM, handler)
    rng = random.Random(7)
    pool = gocp.new(("127.0.0.1", 9), size=2)
    rounds, problems = 0, []
    deadline = time.monotonic() + 25
    while rounds < 1000 and time.monotonic() < deadline and not problems:
        held = []
        try:
            armed = True  # the handler disarms: one interrupt per round
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
            while True:  # mostly the fast path; then a queued wait and a broken return
                # The caller's own bookkeeping has no gap an interrupt could fall into:
                # a member is stored as get returns (no check before the store) and
                # appended before the next call; it leaves ``held`` only after its put.
                for _ in range(10):
                    for _ in range(2):
                        member = pool.get(timeout=0)
                        held.append(member)
                    for _ in range(2):
                        pool.put(held[-1])
                        del held[-1]
                for _ in range(2):
                    member = pool.get(timeout=0)
                    held.append(member)
                try:
                    pool.get(timeout=1e-6)
                except gocp.PoolTimeout:
                    pass
                pool.put(held[-1], broken=True)
                del held[-1]
                pool.put(held[-1])
                del held[-1]
        except Interrupt:
            rounds += 1
        except gocp.PoolTimeout:
            problems.append("a member vanished")
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        lock, core = pool._lock, pool._core
        if lock._is_owned() or not lock.acquire(timeout=1):
            problems.append("the pool's lock was left held")
            break
        lock.release()
        if core.waiters:
            problems.append(f"{len(core.waiters)} waiter(s) left in the queue")
        for member in held:  # still the caller's, unless its put finished the return
            if member.state is LENT:
                pool.put(member)
        lost = [m.index for m in core.members if m.state is not IDLE]
        if lost or len(core.idle) != 2:
            problems.append(f"member(s) {lost} lost: lent to nobody")
    print(json.dumps({"rounds": rounds, "problems": problems}))
    if "the pool's lock was left held" not in problems:
        pool.close()
"""


@pytest.mark.timeout(60)
def test_interrupts_during_get_and_put_never_leave_the_lock_held():
    """A signal handler that raises (KeyboardInterrupt, say) can land anywhere in get and
    put: the lock is never left held, no waiter stays queued, no broken return stays half
    done, no member is lost. One interrupt per round at a random moment, hundreds of rounds,
    in a child process (an interrupt landing inside a tracer, coverage, breaks the tracer)."""
    result = run_child(INTERRUPT_CHILD, timeout=50)
    assert result["problems"] == [], result
    assert result["rounds"] >= 300, result


class _Interrupted(BaseException):
    pass


def test_get_interrupted_while_waiting_for_the_lock_leaves_the_holders_lock_alone():
    """A caller interrupted while it waits for the pool's lock never held it, so it must not
    release it: the thread that does hold it still owns it afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    armed = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if armed.is_set():
            raise _Interrupted

    handler(signal.SIGUSR1, None)  # once unarmed: a tracer meets it before it matters
    previous = signal.signal(signal.SIGUSR1, handler)
    pool = gocp.new(("127.0.0.1", 9), size=1)
    taken = pool.get(timeout=0)  # nothing idle: the next get needs the lock
    holding, interrupted, release = threading.Event(), threading.Event(), threading.Event()
    owned_after: list[bool] = []

    def holder() -> None:
        with pool._lock:
            holding.set()
            release.wait(10)
            owned_after.append(pool._lock._is_owned())  # type: ignore[attr-defined]

    def interrupter() -> None:
        main = threading.main_thread().ident
        assert main is not None
        while not interrupted.wait(0.01):
            signal.pthread_kill(main, signal.SIGUSR1)

    holder_thread = threading.Thread(target=holder)
    interrupter_thread = threading.Thread(target=interrupter)
    try:
        holder_thread.start()
        assert holding.wait(10)
        armed.set()
        interrupter_thread.start()
        with pytest.raises(_Interrupted):
            pool.get(timeout=5)  # blocks on the lock until a signal lands
        armed.clear()
        interrupted.set()
    finally:
        armed.clear()
        interrupted.set()
        release.set()
        holder_thread.join(10)
        if interrupter_thread.is_alive():
            interrupter_thread.join(10)
        signal.signal(signal.SIGUSR1, previous)
    assert owned_after == [True]  # the holder still owned its lock
    assert pool.stats().waiting == 0  # the interrupted get left no waiter behind
    pool.put(taken)
    assert pool.get(timeout=0) is pool._core.members[0]  # and the pool works
    pool.close()
