"""gocp.pool: a pool of any client made by user hooks (dial, check, close)."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_until

import gocp
from gocp.testing import FakeClock, no_backoff


class Client:
    """A fake client: counts what the pool does to it."""

    made = 0

    def __init__(self) -> None:
        Client.made += 1
        self.number = Client.made
        self.closed = 0
        self.alive = True

    def close(self) -> None:
        self.closed += 1

    def __repr__(self) -> str:
        return f"Client({self.number})"


class Dialer:
    """A dial hook that can be told to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None
        self.clients: list[Client] = []

    def __call__(self) -> Client:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        client = Client()
        self.clients.append(client)
        return client


def test_get_dials_in_get_and_lends_the_client():
    dial = Dialer()
    with gocp.pool(dial, size=2) as pool:
        assert dial.calls == 0  # making the pool never dials
        a = pool.get(timeout=0)
        assert isinstance(a, Client)
        assert dial.calls == 1
        pool.put(a)
        assert pool.get(timeout=0) is not a  # ring order: the other member next
        b = pool.get(timeout=0)
        assert b is a  # the first client, kept connected
        assert dial.calls == 2
        stats = pool.stats()
        assert (stats.in_use, stats.connected, stats.dials, stats.address) == (2, 2, 2, None)
        assert stats.name == "Dialer"  # the hook's name, unless name= says otherwise


def test_put_of_an_object_not_lent_is_a_value_error_and_changes_nothing():
    with gocp.pool(Dialer(), size=1) as pool:
        a = pool.get(timeout=0)
        before = pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            pool.put(Client())
        with pytest.raises(ValueError, match="not lent"):
            pool.put("text")  # type: ignore[arg-type]
        assert pool.stats() == before
        pool.put(a)
        with pytest.raises(ValueError, match="not lent"):
            pool.put(a)
        assert pool.stats().idle == 1
        assert pool.get(timeout=0) is a


def test_put_broken_closes_the_client_and_the_next_get_redials():
    dial = Dialer()
    with gocp.pool(dial, size=1) as pool:
        a = pool.get()
        pool.put(a, broken=True)
        assert a.closed == 1
        b = pool.get()
        assert b is not a
        assert dial.calls == 2
        pool.put(b)
        stats = pool.stats()
        assert (stats.broken, stats.closed_broken) == (1, 1)


def test_broken_must_be_a_bool():
    with gocp.pool(Dialer(), size=1) as pool:
        a = pool.get()
        with pytest.raises(TypeError, match="broken"):
            pool.put(a, broken="yes")  # type: ignore[arg-type]
        assert pool.stats().in_use == 1  # unchanged
        pool.put(a)


def test_close_hook_is_used_instead_of_the_clients_close():
    closed: list[Client] = []
    with gocp.pool(Dialer(), size=2, close=closed.append) as pool:
        a, b = pool.get(), pool.get()
        pool.put(a)
        pool.put(b, broken=True)
        assert closed == [b]
    assert closed == [b, a]  # close() closes the idle client
    assert a.closed == b.closed == 0


def test_close_closes_idle_clients_now_and_lent_ones_when_put_back():
    dial = Dialer()
    pool = gocp.pool(dial, size=2)
    a, b = pool.get(), pool.get()
    pool.put(a)
    pool.close()
    assert a.closed == 1
    assert b.closed == 0  # its holder still uses it
    pool.put(b)
    assert b.closed == 1
    with pytest.raises(gocp.PoolClosed):
        pool.get(timeout=0)
    pool.close()  # idempotent
    assert (a.closed, b.closed) == (1, 1)


def test_a_failing_dial_is_a_dial_error_with_its_cause_and_the_slot_comes_back():
    dial = Dialer()
    dial.fail = OSError("refused")
    with gocp.pool(dial, size=1, retry_min=5.0, retry_max=10.0) as pool:
        with pytest.raises(gocp.DialError) as info:
            pool.get(timeout=0)
        assert info.value.__cause__ is dial.fail
        assert 5.0 <= info.value.retry_in <= 10.0
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.dial_failures) == (1, 0, 1)
        # During the backoff get fails fast, without calling the hook.
        started = time.monotonic()
        with pytest.raises(gocp.DialError, match="backing off") as again:
            pool.get(timeout=5)
        assert time.monotonic() - started < 1.0
        assert again.value.__cause__ is dial.fail
        assert dial.calls == 1
        assert pool.stats().idle == 1


def test_a_hook_that_raises_anything_never_loses_the_slot():
    dial = Dialer()
    with gocp.pool(dial, size=1) as pool, no_backoff():
        for error in (ValueError("bad config"), RuntimeError("boom"), TimeoutError()):
            dial.fail = error
            with pytest.raises(gocp.DialError) as info:
                pool.get(timeout=0)
            assert info.value.__cause__ is error
        dial.fail = None
        client = pool.get(timeout=0)
        assert isinstance(client, Client)
        pool.put(client)


def test_dial_returning_none_is_a_dial_error():
    with gocp.pool(lambda: None, size=1) as pool:
        with pytest.raises(gocp.DialError, match="returned None"):
            pool.get(timeout=0)
        assert pool.stats().idle == 1


def test_dial_attempts_waits_out_the_backoff_within_the_timeout():
    dial = Dialer()
    dial.fail = ConnectionRefusedError("down")
    calls_when_up = []

    def up_after_two() -> Client:
        if dial.calls == 2:
            dial.fail = None
            calls_when_up.append(dial.calls)
        return dial()

    with gocp.pool(up_after_two, size=1, dial_attempts=3, retry_min=0.01, retry_max=0.02) as pool:
        client = pool.get(timeout=5)
        assert isinstance(client, Client)
        assert dial.calls == 3
        stats = pool.stats()
        assert (stats.dials, stats.dial_failures) == (3, 2)
        pool.put(client)


def test_dial_attempts_gives_up_after_its_count():
    dial = Dialer()
    dial.fail = ConnectionRefusedError("down")
    with gocp.pool(dial, size=1, dial_attempts=2, retry_min=0.01, retry_max=0.02) as pool:
        with pytest.raises(gocp.DialError):
            pool.get(timeout=5)
        assert dial.calls == 2
        assert pool.stats().idle == 1


def test_dial_attempts_never_waits_past_the_timeout():
    dial = Dialer()
    dial.fail = ConnectionRefusedError("down")
    with gocp.pool(dial, size=1, dial_attempts=100, retry_min=1.0, retry_max=2.0) as pool:
        started = time.monotonic()
        with pytest.raises(gocp.DialError):
            pool.get(timeout=0.2)
        assert time.monotonic() - started < 1.0
        assert dial.calls == 1  # the next attempt would come after the timeout


def test_connection_puts_back_broken_on_any_exception_by_default():
    dial = Dialer()
    with gocp.pool(dial, size=1) as pool:
        with pytest.raises(KeyError), pool.connection() as client:
            raise KeyError("x")
        assert client.closed == 1
        with pool.connection() as again:
            assert again is not client


def test_broken_on_types_and_predicate():
    dial = Dialer()
    with gocp.pool(dial, size=1, broken_on=(ConnectionError,)) as pool:
        with pytest.raises(KeyError), pool.connection() as client:
            raise KeyError("an application error: the client is fine")
        assert client.closed == 0
        with pytest.raises(ConnectionResetError), pool.connection() as same:
            raise ConnectionResetError(same)
        assert same is client
        assert client.closed == 1
    with gocp.pool(dial, size=1, broken_on=lambda exc: "fatal" in str(exc)) as pool:
        with pytest.raises(RuntimeError), pool.connection() as client:
            raise RuntimeError("fatal: lost")
        assert client.closed == 1


def test_a_broken_on_predicate_that_raises_puts_back_broken_and_keeps_the_error():
    def predicate(exc: BaseException) -> bool:
        raise ZeroDivisionError

    with gocp.pool(Dialer(), size=1, broken_on=predicate) as pool:
        with pytest.raises(KeyError), pool.connection() as client:
            raise KeyError("x")
        assert client.closed == 1
        assert pool.stats().idle == 1


def test_socket_options_are_a_type_error_for_client_pools():
    for name, value in (
        ("dial_timeout", 1.0),
        ("io_timeout", 1.0),
        ("nodelay", True),
        ("keepalive", 5),
    ):
        with pytest.raises(TypeError, match=name):
            gocp.pool(Dialer(), **{name: value})


def test_bad_hooks_and_options_are_refused_naming_them():
    with pytest.raises(TypeError, match="dial"):
        gocp.pool("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check"):
        gocp.pool(Dialer(), check=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="close"):
        gocp.pool(Dialer(), close="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="broken_on"):
        gocp.pool(Dialer(), broken_on=3)
    with pytest.raises(ValueError, match="min_idle"):
        gocp.pool(Dialer(), size=2, min_idle=3)
    with pytest.raises(ValueError, match="dial_attempts"):
        gocp.pool(Dialer(), dial_attempts=0)
    with pytest.raises(ValueError, match="max_lifetime"):
        gocp.pool(Dialer(), max_lifetime=0)
    with pytest.raises(TypeError, match="clock"):
        gocp.pool(Dialer(), clock=1.0)


def test_fifo_waiters_are_served_in_arrival_order():
    with gocp.pool(Dialer(), size=1) as pool:
        held = pool.get()
        order: list[int] = []
        threads = []
        for number in range(4):

            def take(number: int = number) -> None:
                client = pool.get(timeout=10)
                order.append(number)
                pool.put(client)

            thread = threading.Thread(target=take)
            thread.start()
            threads.append(thread)
            assert wait_until(lambda n=number: pool.stats().waiting == n + 1)
        pool.put(held)
        for thread in threads:
            thread.join(10)
        assert order == [0, 1, 2, 3]


def test_the_check_hook_runs_on_a_member_idle_longer_than_check_interval():
    clock = FakeClock()
    checked: list[Client] = []

    def check(client: Client) -> bool:
        checked.append(client)
        return client.alive

    dial = Dialer()
    with gocp.pool(dial, size=1, check=check, check_interval=10, clock=clock) as pool:
        a = pool.get()
        pool.put(a)
        clock.advance(5)
        assert pool.get() is a  # recently used: not checked
        assert checked == []
        pool.put(a)
        clock.advance(10)
        a.alive = False
        b = pool.get()  # idle 10 s: checked, dead, replaced in this get
        assert checked == [a]
        assert b is not a
        assert a.closed == 1
        assert pool.stats().closed_check == 1
        pool.put(b)


def test_check_interval_defaults_to_30_seconds_with_a_check_hook():
    with gocp.pool(Dialer(), check=lambda client: True) as pool:
        assert pool.options.check_interval == 30.0
    with gocp.pool(Dialer()) as pool:
        assert pool.options.check_interval is None


def test_fresh_get_closes_the_old_client_first():
    dial = Dialer()
    with gocp.pool(dial, size=1) as pool:
        a = pool.get()
        pool.put(a)
        b = pool.get(fresh=True)
        assert b is not a
        assert a.closed == 1
        pool.put(b)
        assert pool.stats().closed_fresh == 1


def test_exhaustion_says_why():
    with gocp.pool(Dialer(), size=2, name="orders-db") as pool:
        held = [pool.get(), pool.get()]
        with pytest.raises(gocp.PoolTimeout) as info:
            pool.get(timeout=0.05)
        text = str(info.value)
        assert "orders-db" in text
        assert "size 2" in text
        assert "2 lent" in text
        for client in held:
            pool.put(client)


def test_the_pool_is_generic_over_the_client_type():
    pool: gocp.Pool[Client] = gocp.pool(Client, size=1)
    with pool, pool.connection() as client:
        assert isinstance(client, Client)


def test_check_interval_without_a_check_hook_is_refused():
    with pytest.raises(ValueError, match="check_interval: needs a check hook"):
        gocp.pool(Dialer(), check_interval=5)


def test_a_forked_child_never_closes_or_reuses_the_parents_clients():
    """After os.fork the child drops inherited clients without calling close on them (the
    parent still uses them): idle ones at once, a lent one when put back; it dials its
    own. Run in a fresh interpreter (forking the threaded pytest process would warn)."""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, os
        import gocp

        closed = []

        class Client:
            def close(self):
                closed.append((os.getpid(), id(self)))

        pool = gocp.pool(Client, size=2)
        lent, idle = pool.get(timeout=0), pool.get(timeout=0)
        pool.put(idle)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = {}
            mine = pool.get(timeout=0)
            out["new_client"] = mine is not idle and mine is not lent
            pool.put(lent)  # the parent's: released, not closed
            pool.put(mine)
            pool.close()
            out["closed_parents"] = [c for c in closed if c[1] in (id(lent), id(idle))]
            out["closed_own"] = len(closed)
            os.write(write, json.dumps(out).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        pool.put(lent)
        pool.close()
        child["parent_closed"] = len(closed)
        print(json.dumps(child))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child == {
        "new_client": True,
        "closed_parents": [],  # neither inherited client was closed in the child
        "closed_own": 1,  # only the child's own client, at close
        "parent_closed": 2,  # the parent closes its two at close
    }
