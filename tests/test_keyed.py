"""Keyed pools (``gocp.keyed``, DESIGN.md section 4) through the public API.

Socket keys run against real loopback servers on several ports and loopback
addresses (127.0.0.1, 127.0.0.2, 127.0.0.3); keys of client pools against ``Dialer``
hooks (tests/clusterkit.py). Key expiry and LRU order run on a ``FakeClock`` (the
background thread looks at once when it moves); nothing sleeps for an expiry. Every
test ends with the autouse leak check of conftest.py: no thread, no descriptor left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clusterkit import BOUND, Client, Dialer, echo, hanging_address, in_thread, refused_address
from conftest import wait_until

import gocp
import gocp._keyed
from gocp.testing import EchoServer, FakeClock, FaultProxy


@pytest.fixture
def servers() -> Iterator[tuple[EchoServer, EchoServer, EchoServer]]:
    """Three echo servers: 127.0.0.1, 127.0.0.2, 127.0.0.3."""
    with (
        EchoServer() as one,
        EchoServer(host="127.0.0.2") as two,
        EchoServer(host="127.0.0.3") as three,
    ):
        yield one, two, three


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def use_then_fail(lend: gocp.Lend[Any]) -> None:
    """A ``with`` block that does I/O on its member and then raises."""
    with lend as conn:
        echo(conn)
        raise RuntimeError("boom")


def key_stats(keyed: gocp.KeyedPool[Any], key: str) -> gocp.PoolStats:
    return keyed.stats().keys[key]


# -- a pool per key ------------------------------------------------------------------


def test_a_pool_per_key_is_made_on_first_use_with_the_shared_settings(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, _ = servers
    with gocp.keyed(size=2) as keyed:
        assert keyed.keys == []
        assert keyed.stats().keys_made == 0
        first = keyed.get(one.address_text)
        assert keyed.keys == [one.address_text]
        assert first.address == one.address
        assert one.accepted == 0  # a socket member dials at its first I/O
        second = keyed.get(two.address_text)
        assert keyed.keys == [one.address_text, two.address_text]
        assert second.address == two.address
        echo(first)
        echo(second)
        stats = keyed.stats()
        assert stats.keys_made == 2
        for key in (one.address_text, two.address_text):
            assert stats.keys[key].size == 2
            assert stats.keys[key].in_use == 1
            assert stats.keys[key].address == key
        keyed.put(first)
        keyed.put(second)
        assert one.accepted == two.accepted == 1


def test_text_and_tuple_addresses_name_the_same_key(echo_server: EchoServer) -> None:
    host, port = echo_server.address
    with gocp.keyed(size=1) as keyed:
        conn = keyed.get(f"{host}:{port}")
        with pytest.raises(gocp.PoolTimeout):
            keyed.get((host, port), timeout=0)  # the same key: its only member is lent
        assert keyed.keys == [echo_server.address_text]
        keyed.put(conn)
        again = keyed.get((host, port), timeout=0)
        assert again is conn
        keyed.put(again)
        assert keyed.stats().keys_made == 1


def test_size_is_per_key(servers: tuple[EchoServer, EchoServer, EchoServer]) -> None:
    with gocp.keyed(size=2) as keyed:
        held = []
        for server in servers:
            held += [keyed.get(server.address_text, timeout=0) for _ in range(2)]
            with pytest.raises(gocp.PoolTimeout):
                keyed.get(server.address_text, timeout=0)
        assert len({id(conn) for conn in held}) == 6
        for conn in held:
            echo(conn)
            keyed.put(conn)
        assert keyed.stats().total.idle == 6


def test_get_waits_up_to_its_timeout_within_its_key(echo_server: EchoServer) -> None:
    key = echo_server.address_text
    with gocp.keyed(size=1) as keyed:
        conn = keyed.get(key)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            keyed.get(key, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + BOUND
        with in_thread(lambda: keyed.get(key, timeout=BOUND)) as waiter:
            assert wait_until(lambda: key_stats(keyed, key).waiting == 1)
            keyed.put(conn)
            assert waiter.result() is conn  # handed to the waiter
        keyed.put(conn)
        assert key_stats(keyed, key).timeouts == 1


def test_fresh_gives_a_newly_made_connection(echo_server: EchoServer) -> None:
    key = echo_server.address_text
    with gocp.keyed(size=1) as keyed:
        conn = keyed.get(key)
        echo(conn)
        keyed.put(conn)
        assert wait_until(lambda: echo_server.accepted == 1)
        conn = keyed.get(key, fresh=True)
        echo(conn)
        keyed.put(conn)
        assert echo_server.accepted == 2
        assert key_stats(keyed, key).closed_fresh == 1


def test_connect_dials_in_get_and_a_refused_dial_raises_there(echo_server: EchoServer) -> None:
    with gocp.keyed(size=1) as keyed, refused_address() as refused:
        conn = keyed.get(echo_server.address_text, connect=True)
        assert conn.connected
        assert wait_until(lambda: echo_server.active == 1)
        keyed.put(conn)
        with pytest.raises(gocp.DialError) as info:
            keyed.get(refused, connect=True, timeout=0.5)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        stats = keyed.stats().keys[f"{refused[0]}:{refused[1]}"]
        assert (stats.idle, stats.in_use) == (1, 0)  # the member went back


# -- put knows its key ------------------------------------------------------------------


def test_put_returns_each_member_to_its_own_key(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    with gocp.keyed(size=2) as keyed:
        held = {server.address_text: keyed.get(server.address_text) for server in servers}
        for key, conn in reversed(list(held.items())):
            echo(conn)
            keyed.put(conn)
            stats = keyed.stats().keys[key]
            assert (stats.idle, stats.in_use) == (2, 0)
        assert keyed.stats().total.in_use == 0


def test_put_broken_destroys_the_connection(echo_server: EchoServer) -> None:
    key = echo_server.address_text
    with gocp.keyed(size=1) as keyed:
        conn = keyed.get(key)
        echo(conn)
        assert wait_until(lambda: echo_server.active == 1)
        keyed.put(conn, broken=True)
        assert wait_until(lambda: echo_server.active == 0)  # closed, not kept
        stats = key_stats(keyed, key)
        assert stats.closed_broken == 1
        assert (stats.idle, stats.connected) == (1, 0)
        conn = keyed.get(key)
        echo(conn)  # the member redials
        keyed.put(conn)
        assert echo_server.accepted == 2


def test_a_second_put_is_refused_and_changes_nothing(echo_server: EchoServer) -> None:
    with gocp.keyed(size=2) as keyed:
        conn = keyed.get(echo_server.address_text)
        other = keyed.get(echo_server.address_text)
        keyed.put(conn)
        before = keyed.stats()
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(conn)
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(conn, broken=True)
        assert keyed.stats() == before
        keyed.put(other)
        # Each member is lent once afterwards: the pool did not keep a duplicate.
        both = [keyed.get(echo_server.address_text, timeout=0) for _ in range(2)]
        assert len({id(member) for member in both}) == 2
        with pytest.raises(gocp.PoolTimeout):
            keyed.get(echo_server.address_text, timeout=0)
        for member in both:
            keyed.put(member)


def test_put_of_a_foreign_member_is_refused(echo_server: EchoServer) -> None:
    with (
        gocp.keyed(size=1) as keyed,
        gocp.new(echo_server.address, size=1) as single,
    ):
        mine = keyed.get(echo_server.address_text)
        stranger = single.get()  # same address, another pool
        before = keyed.stats()
        with pytest.raises(ValueError, match="another pool"):
            keyed.put(stranger)
        with pytest.raises(TypeError, match="PersistentConn"):
            keyed.put(object())
        with pytest.raises(TypeError, match="broken"):
            keyed.put(mine, broken=1)  # type: ignore[arg-type]
        assert keyed.stats() == before
        single.put(stranger)
        keyed.put(mine)


def test_client_keys_refuse_a_double_put_and_a_stranger() -> None:
    dialer = Dialer()
    with gocp.keyed(size=1, dial=dialer.dial, close=dialer.close) as keyed:
        client = keyed.get("a")
        keyed.put(client)
        before = keyed.stats()
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(client)
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(Client("a", 99))
        assert keyed.stats() == before
        assert keyed.get("a", timeout=0) is client
        keyed.put(client)


def test_connection_blocks_and_with_conn_return_to_the_right_key(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, _ = servers
    with gocp.keyed(size=1) as keyed:
        with keyed.connection(one.address_text, timeout=1) as conn:
            echo(conn)
            assert key_stats(keyed, one.address_text).in_use == 1
        assert key_stats(keyed, one.address_text).in_use == 0
        member = keyed.get(two.address_text)
        with member:
            echo(member)
        assert key_stats(keyed, two.address_text).in_use == 0
        assert keyed.get(two.address_text, timeout=0) is member
        keyed.put(member)
        # A block that raised after I/O leaves the member broken (its stream is unknown).
        with pytest.raises(RuntimeError):
            use_then_fail(keyed.connection(one.address_text))
        stats = key_stats(keyed, one.address_text)
        assert (stats.in_use, stats.closed_broken) == (0, 1)


def test_connection_takes_fresh_and_connect(echo_server: EchoServer) -> None:
    key = echo_server.address_text
    with gocp.keyed(size=1) as keyed:
        with keyed.connection(key, connect=True) as conn:
            assert conn.connected
        with keyed.connection(key, fresh=True) as conn:
            echo(conn)
        assert key_stats(keyed, key).closed_fresh == 1


# -- idle keys are forgotten, busy keys never ----------------------------------------


def test_idle_keys_are_forgotten_after_key_idle_timeout_never_one_with_a_member_lent(
    servers: tuple[EchoServer, EchoServer, EchoServer], clock: FakeClock
) -> None:
    early, idle, lent = (server.address_text for server in servers)
    with gocp.keyed(size=1, key_idle_timeout=10.0, clock=clock) as keyed:
        with keyed.connection(early) as conn:
            echo(conn)  # used at 1000
        clock.advance(1.0)
        with keyed.connection(idle) as conn:
            echo(conn)  # used at 1001
        held = keyed.get(lent)  # lent at 1001, kept
        echo(held)
        assert wait_until(lambda: sum(server.active for server in servers) == 3)
        clock.advance(9.0)  # 1010: `early` is exactly key_idle_timeout old
        assert wait_until(lambda: early not in keyed.keys)
        # The same sweep saw the others: `idle` is 9 s old, `lent` is lent.
        assert keyed.keys == [idle, lent]
        assert wait_until(lambda: servers[0].active == 0)  # its pool was closed
        clock.advance(1.0)  # 1011: `idle` expires; `lent` is as old but lent
        assert wait_until(lambda: idle not in keyed.keys)
        assert keyed.keys == [lent]
        with keyed.connection(early) as conn:  # made anew at 1011: it shows the next sweep
            echo(conn)
        clock.advance(100.0)
        assert wait_until(lambda: early not in keyed.keys)
        assert keyed.keys == [lent]  # that sweep left the lent key alone
        echo(held)  # never closed under its holder
        keyed.put(held)  # its last use: 1111
        clock.advance(10.0)
        assert wait_until(lambda: keyed.keys == [])
        stats = keyed.stats()
        assert (stats.keys_made, stats.keys_expired, stats.keys_evicted) == (4, 4, 0)
        assert wait_until(lambda: sum(server.active for server in servers) == 0)


def test_keys_live_forever_without_key_idle_timeout(
    echo_server: EchoServer, clock: FakeClock
) -> None:
    with gocp.keyed(size=1, key_idle_timeout=None, clock=clock) as keyed:
        keyed.put(keyed.get(echo_server.address_text))
        clock.advance(1e6)
        assert keyed.keys == [echo_server.address_text]
        assert keyed.stats().keys_expired == 0


# -- max_keys: evict the least recently used key with nothing lent ------------------------


def test_max_keys_evicts_the_least_recently_used_idle_key(
    servers: tuple[EchoServer, EchoServer, EchoServer], clock: FakeClock
) -> None:
    one, two, three = (server.address_text for server in servers)
    with gocp.keyed(size=1, max_keys=2, key_idle_timeout=None, clock=clock) as keyed:
        with keyed.connection(one) as conn:
            echo(conn)
        clock.advance(1.0)
        with keyed.connection(two) as conn:
            echo(conn)
        clock.advance(1.0)
        with keyed.connection(one) as conn:  # `one` is now the most recent
            echo(conn)
        clock.advance(1.0)
        with keyed.connection(three) as conn:  # evicts `two`
            echo(conn)
        assert keyed.keys == [one, three]
        stats = keyed.stats()
        assert (stats.keys_made, stats.keys_evicted) == (3, 1)
        assert wait_until(lambda: servers[1].active == 0)  # its pool is closed
        assert servers[0].active == 1  # the others keep their connections


def test_max_keys_never_evicts_a_key_with_a_member_lent(
    servers: tuple[EchoServer, EchoServer, EchoServer], clock: FakeClock
) -> None:
    one, two, three = (server.address_text for server in servers)
    with gocp.keyed(size=1, max_keys=2, key_idle_timeout=None, clock=clock) as keyed:
        held = keyed.get(one)  # the least recently used key, but lent
        echo(held)
        clock.advance(1.0)
        keyed.put(keyed.get(two))
        clock.advance(1.0)
        keyed.put(keyed.get(three))  # evicts `two`, not `one`
        assert keyed.keys == [one, three]
        echo(held)
        keyed.put(held)


def test_a_new_key_waits_for_a_key_to_become_evictable_then_times_out(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, _ = (server.address_text for server in servers)
    with gocp.keyed(size=1, max_keys=1) as keyed:
        held = keyed.get(one)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match="max_keys=1") as info:
            keyed.get(two, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + BOUND
        assert info.value.timeout == 0.2
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            keyed.get(two, timeout=0)
        assert time.monotonic() - started < 1.0  # timeout=0 never waits
        assert keyed.keys == [one]
        keyed.put(held)


def test_a_put_wakes_a_get_waiting_for_room_for_a_new_key(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, _ = (server.address_text for server in servers)
    with gocp.keyed(size=1, max_keys=1) as keyed:
        held = keyed.get(one)
        with in_thread(lambda: keyed.get(two, timeout=BOUND)) as waiter:
            assert wait_until(lambda: keyed._waiting == 1)  # queued for room
            assert not waiter.done.is_set()
            keyed.put(held)
            conn = waiter.result()
        assert conn.address == servers[1].address
        assert keyed.keys == [two]
        assert keyed.stats().keys_evicted == 1
        keyed.put(conn)


def test_a_get_waiting_for_room_is_woken_when_a_failed_get_frees_a_key() -> None:
    """A key is busy while a get is on its way into it. When that get fails (its dial
    failed) the key becomes evictable with no put: the get waiting for room must be
    woken then, not at its timeout (with ``timeout=None``: never)."""
    dialer = Dialer()
    gate = dialer.gate("a")
    dialer.down.add("a")
    with gocp.keyed(size=1, max_keys=1, dial=dialer.dial) as keyed:
        with in_thread(lambda: keyed.get("a")) as failing:
            assert dialer.entered["a"].wait(BOUND)  # its dial is in flight: `a` is busy
            with in_thread(lambda: keyed.get("b", timeout=4.0)) as waiting:
                assert wait_until(lambda: keyed._waiting == 1)
                gate.set()  # the dial fails: `a` has nothing lent, nothing on its way
                assert isinstance(failing.failure(), gocp.DialError)
                assert waiting.done.wait(2.0), "the get for `b` slept through `a` freeing"
                client = waiting.result()
        assert client.address == "b"
        keyed.put(client)


def test_a_put_between_the_look_and_the_wait_is_not_lost(
    monkeypatch: pytest.MonkeyPatch, echo_server: EchoServer
) -> None:
    """A get for a new key sees every key busy, and before it sleeps the holder puts its
    member back (the interleaving forced here through the table's ``lent`` look). The
    put must wake it: else it sleeps to its timeout (with ``timeout=None``: forever)."""
    real = gocp._keyedbase._pool_has_lent
    holder: dict[str, Any] = {}
    fired = threading.Event()

    def lent(pool: gocp.Pool[Any]) -> bool:
        busy = real(pool)
        if busy and threading.current_thread().name == "new-key" and not fired.is_set():
            fired.set()
            putter = threading.Thread(target=holder["keyed"].put, args=(holder["conn"],))
            putter.start()
            putter.join(1.0)  # the put is done (or waits for this get to sleep)
        return busy

    monkeypatch.setattr(gocp._keyedbase, "_pool_has_lent", lent)
    with gocp.keyed(size=1, max_keys=1) as keyed:
        holder["keyed"] = keyed
        holder["conn"] = keyed.get(echo_server.address_text)
        with in_thread(lambda: keyed.get("127.0.0.2:1", timeout=4.0), name="new-key") as other:
            assert fired.wait(BOUND)
            assert other.done.wait(2.5), "the put did not wake the get waiting for room"
            keyed.put(other.result())


# -- stats ---------------------------------------------------------------------------


def test_stats_per_key_and_totals_that_keep_forgotten_keys(
    servers: tuple[EchoServer, EchoServer, EchoServer], clock: FakeClock
) -> None:
    one, two, _ = (server.address_text for server in servers)
    with gocp.keyed(size=2, key_idle_timeout=10.0, clock=clock) as keyed:
        for _ in range(3):
            with keyed.connection(one) as conn:
                echo(conn)
        clock.advance(5.0)
        held = keyed.get(two)
        echo(held)
        keyed.put(keyed.get(two))
        stats = keyed.stats()
        assert isinstance(stats, gocp.KeyedStats)
        assert set(stats.keys) == {one, two}
        assert (stats.keys[one].lends, stats.keys[two].lends) == (3, 2)
        assert (stats.keys[one].in_use, stats.keys[two].in_use) == (0, 1)
        total = stats.total
        assert (total.lends, total.in_use, total.size, total.idle) == (5, 1, 4, 3)
        assert total.dials == stats.keys[one].dials + stats.keys[two].dials
        assert total.address is None
        assert total.members == ()
        clock.advance(5.0)  # `one` expires
        assert wait_until(lambda: keyed.keys == [two])
        after = keyed.stats()
        assert after.keys_expired == 1
        # The gauges cover open keys; the counters never go down.
        assert (after.total.size, after.total.in_use) == (2, 1)
        assert after.total.lends == 5
        assert after.total.dials >= total.dials
        keyed.put(held)
        assert "keys=1" in repr(keyed)
    closed = keyed.stats()
    assert closed.closed
    assert closed.total.lends == 5
    assert "closed" in repr(keyed)


# -- keys never block each other --------------------------------------------------------


def test_a_hanging_dial_to_one_key_never_delays_another(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    """A blackholed server (SYNs dropped): one get hangs in its dial up to
    ``dial_timeout`` (2 s); gets to other keys, known and new, finish meanwhile, fast."""
    one, two, three = (server.address_text for server in servers)
    with hanging_address() as hanging, gocp.keyed(size=1, dial_timeout=2.0) as keyed:
        keyed.put(keyed.get(one, connect=True))  # a known key
        with in_thread(lambda: keyed.get(hanging, connect=True, timeout=2.0)) as stuck:
            key = f"{hanging[0]}:{hanging[1]}"
            assert wait_until(lambda: key in keyed.keys and key_stats(keyed, key).dials == 1)
            latencies = []
            for index in range(20):
                target = (one, two, three)[index % 3]
                started = time.monotonic()
                conn = keyed.get(target, connect=True, timeout=1.0)
                latencies.append(time.monotonic() - started)
                echo(conn)
                keyed.put(conn)
            assert not stuck.done.is_set(), "the hanging dial ended before the other gets"
            assert max(latencies) < 1.0, latencies  # vs the 2 s the hanging dial takes
            assert isinstance(stuck.failure(), gocp.DialError)


def test_a_blackholed_key_times_out_its_own_io_and_no_other_key(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, three = servers
    with (
        FaultProxy(two.address, host="127.0.0.2") as proxy,
        gocp.keyed(size=1, io_timeout=1.0) as keyed,
    ):
        victim = keyed.get(proxy.address_text)
        echo(victim)
        proxy.blackhole()  # everything sent either way is dropped
        with in_thread(lambda: echo(victim)) as stuck:
            for _ in range(10):
                for server in (one, three):
                    with keyed.connection(server.address_text, timeout=1.0) as conn:
                        echo(conn)
            assert not stuck.done.is_set(), "the blackholed I/O ended before the others"
            assert isinstance(stuck.failure(), gocp.IOTimeout)
        keyed.put(victim)  # it broke: it redials
        proxy.heal()
        with keyed.connection(proxy.address_text) as conn:
            echo(conn)
        assert key_stats(keyed, proxy.address_text).broken == 1


def test_a_slow_client_dial_to_one_key_never_delays_another() -> None:
    dialer = Dialer()
    gate = dialer.gate("slow")
    with gocp.keyed(size=1, dial=dialer.dial) as keyed:
        keyed.put(keyed.get("known"))
        with in_thread(lambda: keyed.get("slow")) as slow:
            assert dialer.entered["slow"].wait(BOUND)
            for key in ("known", "new", "known", "newer"):
                client = keyed.get(key, timeout=1.0)
                assert client.address == key
                keyed.put(client)
            assert not slow.done.is_set()  # still dialling: nobody waited for it
            gate.set()
            client = slow.result()
        assert client.address == "slow"
        keyed.put(client)


# -- lifecycle options apply per key ------------------------------------------------------


def test_max_lifetime_applies_to_each_key(clock: FakeClock) -> None:
    dialer = Dialer()
    with gocp.keyed(
        size=1, dial=dialer.dial, close=dialer.close, max_lifetime=10.0, clock=clock
    ) as keyed:
        first = {key: keyed.get(key) for key in ("a", "b")}
        for client in first.values():
            keyed.put(client)
        clock.advance(10.0)  # past every lifetime (each is cut by up to 10%)
        assert wait_until(lambda: all(client.closed for client in first.values()))
        for key in ("a", "b"):
            client = keyed.get(key)
            assert client is not first[key]
            assert client.address == key
            keyed.put(client)
        total = keyed.stats().total
        assert total.closed_lifetime == 2


def test_check_interval_applies_to_each_key(clock: FakeClock) -> None:
    dialer = Dialer()
    with gocp.keyed(
        size=1, dial=dialer.dial, check=dialer.check, check_interval=5.0, clock=clock
    ) as keyed:
        clients = {key: keyed.get(key) for key in ("a", "b")}
        for client in clients.values():
            keyed.put(client)
        assert dialer.checked == []
        clock.advance(5.0)
        assert wait_until(lambda: all(client.checks >= 1 for client in clients.values()))
        clients["a"].closed = True  # it dies: the next check fails
        clock.advance(5.0)
        assert wait_until(lambda: key_stats(keyed, "a").closed_check == 1)
        replaced = keyed.get("a")
        assert replaced is not clients["a"]
        keyed.put(replaced)
        assert key_stats(keyed, "b").closed_check == 0


def test_min_idle_applies_to_each_key_when_it_is_made() -> None:
    dialer = Dialer()
    with gocp.keyed(size=2, dial=dialer.dial, min_idle=2) as keyed:
        keyed.put(keyed.get("a"))
        keyed.put(keyed.get("b"))
        assert wait_until(lambda: len(dialer.made_for("a")) == len(dialer.made_for("b")) == 2)


# -- keys of client pools ---------------------------------------------------------------


def test_dial_receives_the_key_and_any_hashable_is_a_key() -> None:
    dialer = Dialer()
    with gocp.keyed(size=1, dial=dialer.dial, close=dialer.close) as keyed:
        for key in ("db-1", ("shard", 7), 42):
            client = keyed.get(key)
            assert client.address == key
            keyed.put(client)
        assert keyed.keys == ["db-1", "('shard', 7)", "42"]
        assert set(dialer.dials) == {"db-1", ("shard", 7), 42}
        client = keyed.get("db-1")
        keyed.put(client, broken=True)  # destroyed: its close hook ran
        assert client.closed
        with pytest.raises(TypeError, match="key: expected something hashable"):
            keyed.get(["not", "hashable"])


# -- closing ------------------------------------------------------------------------------


def test_close_closes_every_key_and_members_lent_when_they_come_back(
    servers: tuple[EchoServer, EchoServer, EchoServer],
) -> None:
    one, two, _ = (server.address_text for server in servers)
    keyed = gocp.keyed(size=2)
    idle = keyed.get(one)
    echo(idle)
    keyed.put(idle)
    lent = keyed.get(two)
    echo(lent)
    keyed.close()
    keyed.close()  # idempotent
    assert keyed.closed
    assert wait_until(lambda: servers[0].active == 0)
    echo(lent)  # never closed under its holder
    keyed.put(lent)
    assert wait_until(lambda: servers[1].active == 0)
    for key in (one, "127.0.0.3:1"):
        with pytest.raises(gocp.PoolClosed):
            keyed.get(key)
    assert keyed.keys == []


def test_close_wakes_a_get_waiting_for_room() -> None:
    dialer = Dialer()
    keyed = gocp.keyed(size=1, max_keys=1, dial=dialer.dial)
    held = keyed.get("a")
    with in_thread(lambda: keyed.get("b", timeout=BOUND)) as waiting:
        assert wait_until(lambda: keyed._waiting == 1)
        keyed.close()
        assert isinstance(waiting.failure(2.0), gocp.PoolClosed)
    keyed.put(held)


def test_close_wakes_a_get_waiting_in_a_key(echo_server: EchoServer) -> None:
    keyed = gocp.keyed(size=1)
    held = keyed.get(echo_server.address_text)
    with in_thread(lambda: keyed.get(echo_server.address_text, timeout=BOUND)) as waiting:
        assert wait_until(lambda: key_stats(keyed, echo_server.address_text).waiting == 1)
        keyed.close()
        assert isinstance(waiting.failure(2.0), gocp.PoolClosed)
    keyed.put(held)


# -- arguments ---------------------------------------------------------------------------


def test_arguments_are_checked_at_the_call_that_received_them() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        gocp.keyed(max_keys=0)
    with pytest.raises(ValueError, match="key_idle_timeout"):
        gocp.keyed(key_idle_timeout=0)
    with pytest.raises(ValueError, match="size"):
        gocp.keyed(size=0)
    with pytest.raises(TypeError, match="nonsense"):
        gocp.keyed(nonsense=1)
    with pytest.raises(TypeError, match="close"):
        gocp.keyed(close=lambda conn: None)  # sockets close themselves
    with pytest.raises(TypeError, match="dial_timeout"):
        gocp.keyed(dial=Dialer().dial, dial_timeout=1.0)  # a hook bounds its own I/O
    with gocp.keyed() as keyed:
        with pytest.raises(ValueError, match="key:"):
            keyed.get("no port")
        with pytest.raises(ValueError, match="timeout"):
            keyed.get("127.0.0.1:1", timeout=-1)
        assert keyed.keys == []


def test_threads_on_more_keys_than_max_keys_never_share_a_member_nor_lose_one() -> None:
    """Eight threads get and put on six keys with room for three: keys are evicted and
    made all the time, found without the lock. No member is ever lent twice at once, no
    put is refused (a key is never evicted under a member lent), and the end state adds
    up."""
    dialer = Dialer()
    keys = [f"k{index}" for index in range(6)]
    errors: list[BaseException] = []
    held: dict[int, str] = {}
    lock = threading.Lock()
    with gocp.keyed(size=1, max_keys=3, dial=dialer.dial, close=dialer.close) as keyed:

        def user(number: int) -> None:
            try:
                for step in range(400):
                    key = keys[(number * 7 + step * 5) % len(keys)]
                    try:
                        client = keyed.get(key, timeout=1.0)
                    except gocp.PoolTimeout:
                        continue
                    with lock:
                        other = held.get(id(client))
                        assert other is None, f"{client} lent to {number} while held by {other}"
                        held[id(client)] = f"thread {number}"
                    assert client.address == key
                    assert not client.closed
                    with lock:
                        del held[id(client)]
                    keyed.put(client)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=user, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(4 * BOUND)
        assert not any(thread.is_alive() for thread in threads)
        assert not errors, errors[:3]
        stats = keyed.stats()
        assert len(stats.keys) <= 3
        assert stats.total.in_use == 0
        assert stats.keys_made - stats.keys_evicted == len(stats.keys)
        assert stats.keys_evicted > 0  # the eviction path ran
        open_clients = {id(client) for client in dialer.made if not client.closed}
        assert len(open_clients) <= len(stats.keys)  # every evicted key's client was closed
