"""Clusters (``gocp.cluster``, DESIGN.md section 5) through the public API.

Socket clusters run against real echo servers on three loopback addresses
(127.0.0.1, 127.0.0.2, 127.0.0.3), one of them behind the project's ``FaultProxy``
to refuse, reset, kill or stall it; clusters of clients against ``Dialer`` hooks
(tests/clusterkit.py). Backoff and token buckets run on a ``FakeClock`` with
``retry_min == retry_max`` (every backoff lasts exactly that long) and binary
fractions of a second, so their boundaries are exact; one test measures the rate
over a real window. Latency claims are proven with events (the fast gets finished
while the slow dial was still hanging), with generous bounds. The autouse leak check
of conftest.py runs after every test: no thread, no descriptor left.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from clusterkit import BOUND, Client, Dialer, echo, hanging_address, in_thread, refused_address
from conftest import wait_until

import gocp
from gocp.testing import EchoServer, FakeClock, FaultProxy

Servers = tuple[EchoServer, EchoServer, EchoServer]
RETRY: dict[str, Any] = {"retry_min": 1.0, "retry_max": 1.0}  # every backoff lasts exactly 1 s


@pytest.fixture
def servers() -> Iterator[Servers]:
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


def text(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def take(cluster: gocp.Cluster[Any], count: int, *, io: bool = False) -> list[Any]:
    """``count`` gets, each put back at once; the address each went to, in order."""
    went = []
    for _ in range(count):
        conn = cluster.get(timeout=BOUND)
        if io:
            echo(conn)
        went.append(conn.address)
        cluster.put(conn)
    return went


def use_then_fail(lend: gocp.Lend[Any], used: list[Any]) -> None:
    """A ``with`` block that does I/O on its member and then raises."""
    with lend as conn:
        used.append(conn)
        echo(conn)
        raise RuntimeError("boom")


def server_stats(cluster: gocp.Cluster[Any], address: str) -> gocp.ServerStats:
    return cluster.stats().servers[address]


# -- round robin ----------------------------------------------------------------------


def test_round_robin_order_over_hundreds_of_gets(servers: Servers) -> None:
    with gocp.cluster([server.address_text for server in servers], size=1) as cluster:
        went = []
        for index in range(300):
            conn = cluster.get(timeout=BOUND)
            assert conn.connected  # a cluster lends connected members
            if index % 10 == 0:
                echo(conn)
            went.append(conn.address)
            cluster.put(conn)
        assert went == [server.address for server in servers] * 100
        assert wait_until(lambda: [server.accepted for server in servers] == [1, 1, 1])


def test_weights_give_exact_shares_spread_over_each_cycle(servers: Servers) -> None:
    a, b, c = servers
    weights = {a.address_text: 3, b.address_text: 1, c.address_text: 2}
    with gocp.cluster(weights, size=1) as cluster:
        went = take(cluster, 600)
        name = {a.address: "a", b.address: "b", c.address: "c"}
        assert "".join(name[address] for address in went[:6]) == "acabca"  # smooth, not aaabcc
        assert Counter(went) == {a.address: 300, b.address: 100, c.address: 200}
        stats = cluster.stats()
        assert [stats.servers[key].pool.lends for key in weights] == [300, 100, 200]
        assert [stats.servers[key].weight for key in weights] == [3, 1, 2]


def test_conn_address_and_socket_say_which_server(servers: Servers) -> None:
    with gocp.cluster([server.address_text for server in servers], size=1) as cluster:
        for server in servers:
            conn = cluster.get(timeout=BOUND)
            assert conn.address == server.address
            assert conn.socket.getpeername() == server.address  # the raw connection
            echo(conn)
            cluster.put(conn)


def test_fresh_gives_a_newly_made_connection(echo_server: EchoServer) -> None:
    with gocp.cluster([echo_server.address_text], size=1) as cluster:
        take(cluster, 1, io=True)
        conn = cluster.get(fresh=True)
        echo(conn)
        cluster.put(conn)
        assert echo_server.accepted == 2
        assert server_stats(cluster, echo_server.address_text).pool.closed_fresh == 1


# -- failover, backoff, the half-open trial, recovery --------------------------------------


def test_a_cluster_runs_on_a_fake_clock(echo_server: EchoServer, clock: FakeClock) -> None:
    """``clock=`` takes the project's FakeClock, as every other pool does."""
    with gocp.cluster([echo_server.address_text], size=1, clock=clock) as cluster:
        assert take(cluster, 1) == [echo_server.address]


def test_a_failed_dial_marks_its_server_down_and_the_same_get_moves_on(
    echo_server: EchoServer, clock: FakeClock
) -> None:
    with (
        refused_address("127.0.0.2") as refused,
        gocp.cluster([refused, echo_server.address], size=2, clock=clock, **RETRY) as cluster,
    ):
        conn = cluster.get(timeout=BOUND)  # its turn starts at the refused server
        assert conn.address == echo_server.address
        echo(conn)
        cluster.put(conn)
        down = server_stats(cluster, text(refused))
        assert down.state == "down"
        assert down.retry_in == 1.0
        assert down.last_error is not None
        assert "ConnectionRefusedError" in down.last_error
        assert (down.pool.dials, down.pool.dial_failures) == (1, 1)
        assert down.pool.in_use == 0  # the member went back
        # While it backs off nobody dials it: every get goes to the survivor.
        assert set(take(cluster, 20)) == {echo_server.address}
        assert server_stats(cluster, text(refused)).pool.dials == 1
        assert server_stats(cluster, echo_server.address_text).state == "up"


def test_every_server_down_raises_cluster_unavailable_at_once_with_reasons(
    clock: FakeClock,
) -> None:
    with (
        refused_address("127.0.0.1") as first,
        refused_address("127.0.0.2") as second,
        gocp.cluster([first, second], size=2, clock=clock, **RETRY) as cluster,
    ):
        started = time.monotonic()
        with pytest.raises(gocp.ClusterUnavailable) as info:
            cluster.get()  # no timeout: it still fails fast
        assert time.monotonic() - started < 1.0
        error = info.value
        assert isinstance(error, gocp.DialError)
        assert isinstance(error, ConnectionError)
        assert set(error.reasons) == {text(first), text(second)}
        for address, why in error.reasons.items():
            assert why.startswith("down (ConnectionRefusedError")
            assert address in str(error)
        assert error.retry_in == 1.0
        dials = cluster.stats().total.dials
        # During the backoff it fails at once, without dialling, counting down retry_in.
        clock.advance(0.25)
        with pytest.raises(gocp.ClusterUnavailable) as info:
            cluster.get(timeout=BOUND)
        assert info.value.retry_in == 0.75
        assert cluster.stats().total.dials == dials
        states = {key: server.state for key, server in cluster.stats().servers.items()}
        assert states == {text(first): "down", text(second): "down"}


def test_after_its_backoff_a_server_gets_one_half_open_trial(clock: FakeClock) -> None:
    dialer = Dialer()
    dialer.down.add("a")
    with gocp.cluster(["a", "b"], size=1, dial=dialer.dial, clock=clock, **RETRY) as cluster:
        held_b = cluster.get(timeout=0)  # a fails, the same get takes b
        assert held_b.address == "b"
        assert dialer.dials["a"] == 1
        assert server_stats(cluster, "a").retry_in == 1.0
        clock.advance(0.9375)
        assert server_stats(cluster, "a").state == "down"
        with pytest.raises(gocp.PoolTimeout):
            cluster.get(timeout=0)  # a backs off, b is busy
        assert dialer.dials["a"] == 1
        clock.advance(0.0625)  # the backoff ends: one get may try it
        assert server_stats(cluster, "a").state == "trial"
        gate = dialer.gate("a")
        with in_thread(lambda: cluster.get(timeout=BOUND)) as trial:
            assert dialer.entered["a"].wait(BOUND)  # the trial dial is in flight
            stats = server_stats(cluster, "a")
            assert stats.state == "down"  # one trial at a time: others skip it
            with pytest.raises(gocp.PoolTimeout) as info:
                cluster.get(timeout=0)
            assert "a down" in str(info.value)
            assert "b busy" in str(info.value)
            assert dialer.dials["a"] == 2
            gate.set()  # the trial fails: down again; the trial's get waits for b
            assert wait_until(lambda: server_stats(cluster, "a").pool.dial_failures == 2)
            cluster.put(held_b)
            held_b = trial.result()
        assert held_b.address == "b"
        assert server_stats(cluster, "a").retry_in == 1.0
        # It comes back: the next trial succeeds and it is up at once.
        dialer.down.discard("a")
        dialer.ungate("a")
        clock.advance(1.0)
        cluster.put(held_b)
        both = [cluster.get(timeout=0), cluster.get(timeout=0)]
        assert sorted(conn.address for conn in both) == ["a", "b"]
        stats = server_stats(cluster, "a")
        assert (stats.state, stats.retry_in, stats.last_error) == ("up", 0.0, None)
        for conn in both:
            cluster.put(conn)
        assert Counter(take(cluster, 10)) == {"a": 5, "b": 5}


def test_a_server_whose_backoff_ended_during_a_slow_dial_is_tried_by_the_same_get(
    clock: FakeClock,
) -> None:
    """A get's dial to one server fails slowly; meanwhile another server's backoff ended.
    The get moves on to that server (its trial) and is served, instead of judging it by
    the time the get started and raising ClusterUnavailable ("retry in 0.000s")."""
    dialer = Dialer()
    dialer.down.add("b")
    with gocp.cluster(["b", "a"], size=1, dial=dialer.dial, clock=clock, **RETRY) as cluster:
        assert take(cluster, 1) == ["a"]  # b failed: down for 1 s
        gate = dialer.gate("a")
        dialer.down.add("a")
        with in_thread(lambda: cluster.get(timeout=BOUND, fresh=True)) as slow:  # a's turn
            assert dialer.entered["a"].wait(BOUND)  # a's dial is in flight
            dialer.down.discard("b")
            clock.advance(1.0)  # b's backoff ends while a's dial hangs
            assert server_stats(cluster, "b").state == "trial"
            gate.set()  # a's dial fails
            client = slow.result()
        assert client.address == "b"
        cluster.put(client)


def test_a_server_that_dies_loses_its_share_and_takes_it_back_at_once_when_it_recovers(
    servers: Servers, clock: FakeClock
) -> None:
    a, b, _ = servers
    with FaultProxy(b.address, host="127.0.0.2") as proxy:
        addresses = [a.address_text, proxy.address_text]
        with gocp.cluster(addresses, size=2, clock=clock, **RETRY) as cluster:
            before = Counter(take(cluster, 100, io=True))
            assert before == {a.address: 50, proxy.address: 50}
            proxy.refuse()  # it dies: its connections close, new ones are refused
            proxy.kill_all()
            during = Counter(take(cluster, 100, io=True))
            assert during == {a.address: 100}  # failover to the survivor, no error
            assert server_stats(cluster, proxy.address_text).state == "down"
            proxy.accept()  # it comes back
            clock.advance(1.0)  # its backoff ends
            after = Counter(take(cluster, 100, io=True))
            assert after == {a.address: 50, proxy.address: 50}  # its share, at once
            assert server_stats(cluster, proxy.address_text).state == "up"


def test_a_reset_connection_breaks_one_lend_and_the_server_keeps_serving(
    servers: Servers,
) -> None:
    a, b, _ = servers
    with (
        FaultProxy(b.address, host="127.0.0.2") as proxy,
        gocp.cluster([a.address_text, proxy.address_text], size=1) as cluster,
    ):
        held = [cluster.get(timeout=BOUND), cluster.get(timeout=BOUND)]
        try:
            for conn in held:
                echo(conn)
            proxy.reset()  # RST both ways, in the middle of this lend
            for conn in held:
                if conn.address == proxy.address:
                    with pytest.raises(gocp.ConnectionBroken):
                        echo(conn)
                else:
                    echo(conn)
        finally:
            for conn in held:
                cluster.put(conn)
        assert set(take(cluster, 4, io=True)) == {a.address, proxy.address}  # it redialled
        assert server_stats(cluster, proxy.address_text).state == "up"


def test_a_stalled_server_times_out_its_own_io_and_no_other(servers: Servers) -> None:
    a, b, c = servers
    with (
        FaultProxy(b.address, host="127.0.0.2") as proxy,
        gocp.cluster(
            [a.address_text, proxy.address_text, c.address_text], size=1, io_timeout=0.25
        ) as cluster,
    ):
        held = [cluster.get(timeout=BOUND) for _ in range(3)]
        proxy.stall()
        for conn in held:
            if conn.address == proxy.address:
                with pytest.raises(gocp.IOTimeout):
                    echo(conn)
            else:
                echo(conn)
            cluster.put(conn)
        proxy.heal()
        assert set(take(cluster, 3, io=True)) == {a.address, proxy.address, c.address}


# -- rate limits ----------------------------------------------------------------------------


def test_token_buckets_are_exact_at_their_boundaries(
    echo_server: EchoServer, clock: FakeClock
) -> None:
    address = echo_server.address_text
    with gocp.cluster([address], size=2, max_rps=4, burst=2, clock=clock) as cluster:
        assert server_stats(cluster, address).tokens == 2.0  # full at the start
        assert len(take(cluster, 2)) == 2
        with pytest.raises(gocp.PoolTimeout, match=r"rate limited \(next token in 0\.250s\)"):
            cluster.get(timeout=0)
        assert server_stats(cluster, address).tokens == 0.0
        clock.advance(0.1875)  # 0.75 token
        with pytest.raises(gocp.PoolTimeout, match=r"next token in 0\.062s"):
            cluster.get(timeout=0)
        assert server_stats(cluster, address).tokens == 0.75
        clock.advance(0.0625)  # exactly one token
        assert len(take(cluster, 1)) == 1
        with pytest.raises(gocp.PoolTimeout):
            cluster.get(timeout=0)
        clock.advance(1000.0)  # never more than burst
        assert server_stats(cluster, address).tokens == 2.0
        assert len(take(cluster, 2)) == 2
        with pytest.raises(gocp.PoolTimeout):
            cluster.get(timeout=0)


def test_each_server_has_its_own_bucket(servers: Servers, clock: FakeClock) -> None:
    addresses = [server.address_text for server in servers]
    with gocp.cluster(addresses, size=2, max_rps=1, clock=clock) as cluster:
        assert Counter(take(cluster, 3)) == {server.address: 1 for server in servers}
        with pytest.raises(gocp.PoolTimeout) as info:
            cluster.get(timeout=0)
        for address in addresses:
            assert f"{address} rate limited" in str(info.value)
        clock.advance(1.0)
        assert Counter(take(cluster, 3)) == {server.address: 1 for server in servers}


def test_a_get_that_cannot_lend_gives_its_token_back(
    echo_server: EchoServer, clock: FakeClock
) -> None:
    address = echo_server.address_text
    with gocp.cluster([address], size=1, max_rps=1, burst=2, clock=clock) as cluster:
        held = cluster.get(timeout=0)
        assert server_stats(cluster, address).tokens == 1.0
        with pytest.raises(gocp.PoolTimeout, match="busy"):
            cluster.get(timeout=0)
        assert server_stats(cluster, address).tokens == 1.0  # not spent on a busy server
        cluster.put(held)
        assert len(take(cluster, 1)) == 1
        with pytest.raises(gocp.PoolTimeout, match="rate limited"):
            cluster.get(timeout=0)


def test_a_get_waits_for_the_first_token_within_its_timeout(
    echo_server: EchoServer, clock: FakeClock
) -> None:
    with gocp.cluster([echo_server.address_text], size=1, max_rps=4, burst=1, clock=clock) as c:
        take(c, 1)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match="rate limited"):
            c.get(timeout=0.2)  # the fake clock does not move: no token comes
        assert time.monotonic() - started >= 0.2
        with in_thread(lambda: c.get(timeout=BOUND)) as waiter:
            assert wait_until(lambda: c._waiting == 1)
            clock.advance(0.25)  # a token: the waiter is woken and takes it
            conn = waiter.result(2.0)
        c.put(conn)


def test_the_rate_over_a_real_window_is_within_ten_percent(servers: Servers) -> None:
    """Two servers at 100 gets a second each. Once their bursts are spent, a caller that
    gets as fast as it can makes 2 * 100 * t gets in t seconds, within 10%, half on each.
    (A burst of 20 lets a caller descheduled for up to 0.2 s lose no token.)"""
    a, b, _ = servers
    rate, burst = 100.0, 20.0
    with gocp.cluster([a.address_text, b.address_text], max_rps=rate, burst=burst) as cluster:
        drained = 0
        while True:  # spend the bursts: from here the buckets hold less than a token
            try:
                conn = cluster.get(timeout=0)
            except gocp.PoolTimeout:
                break
            cluster.put(conn)
            drained += 1
        assert drained >= 2 * burst
        went: Counter[Any] = Counter()
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            conn = cluster.get(timeout=BOUND)
            went[conn.address] += 1
            cluster.put(conn)
        elapsed = time.monotonic() - started
        exact = 2 * rate * elapsed
        got = sum(went.values())
        assert got <= exact + 2, (got, elapsed)  # never above the rate (+ a token each)
        assert got >= 0.9 * exact, (got, elapsed)
        for address in (a.address, b.address):
            assert abs(went[address] - got / 2) <= 0.1 * got / 2, went


# -- busy: waiting, timeouts, wake-ups ---------------------------------------------------


def test_when_every_server_is_busy_get_times_out_naming_each_one(servers: Servers) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=1) as cluster:
        held = [cluster.get(timeout=BOUND) for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as info:
            cluster.get(timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.2 + BOUND
        assert info.value.timeout == 0.2
        assert isinstance(info.value, TimeoutError)
        for server in (a, b):
            assert f"{server.address_text} busy (1 of 1 members lent" in str(info.value)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            cluster.get(timeout=0)
        assert time.monotonic() - started < 1.0  # timeout=0 never waits
        for conn in held:
            cluster.put(conn)


@pytest.mark.parametrize("which", [0, 1])
def test_a_waiting_get_is_woken_by_a_put_to_any_server(servers: Servers, which: int) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=1) as cluster:
        held = [cluster.get(timeout=BOUND) for _ in range(2)]
        with in_thread(lambda: cluster.get(timeout=BOUND)) as waiter:
            assert wait_until(lambda: cluster._waiting == 1)
            cluster.put(held[which])
            conn = waiter.result(2.0)
        assert conn is held[which]
        cluster.put(conn)
        cluster.put(held[1 - which])


def test_a_waiting_get_is_woken_by_a_server_added(servers: Servers) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text], size=1) as cluster:
        held = cluster.get(timeout=BOUND)
        with in_thread(lambda: cluster.get(timeout=BOUND)) as waiter:
            assert wait_until(lambda: cluster._waiting == 1)
            adder = threading.Thread(target=cluster.add, args=(b.address_text,))
            adder.start()
            conn = waiter.result(2.0)
            adder.join(BOUND)
        assert conn.address == b.address
        cluster.put(conn)
        cluster.put(held)


# -- servers added and removed while in use --------------------------------------------


def test_a_removed_servers_lent_member_closes_when_put_back_never_under_its_holder(
    servers: Servers,
) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=1) as cluster:
        held = cluster.get(timeout=BOUND)
        assert held.address == a.address
        echo(held)
        remover = threading.Thread(target=cluster.remove, args=(a.address_text,))
        remover.start()
        remover.join(BOUND)
        assert cluster.servers == [b.address_text]
        assert server_stats(cluster, a.address_text).state == "removed"
        assert set(take(cluster, 10)) == {b.address}
        echo(held)  # still usable by its holder
        assert a.active == 1
        cluster.put(held)
        assert wait_until(lambda: a.active == 0)  # closed when it came back
        stats = cluster.stats()
        assert list(stats.servers) == [b.address_text]
        assert stats.total.lends == 11  # the removed server's counters are kept


def test_a_server_removed_while_lent_and_added_back_shows_up_and_counts_in_the_totals(
    servers: Servers,
) -> None:
    """While the old member of a removed server is still lent, the same address added
    back is in the rotation: its stats say ``up`` and the totals count both pools."""
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=1) as cluster:
        held = cluster.get(timeout=BOUND)
        assert held.address == a.address
        try:
            cluster.remove(a.address_text)
            cluster.add(a.address_text)
            assert Counter(take(cluster, 4)) == {a.address: 2, b.address: 2}
            stats = cluster.stats()
            assert stats.servers[a.address_text].state == "up"
            assert stats.servers[a.address_text].pool.lends == 2
            assert stats.total.lends == 5  # 1 of the old pool (lent), 2 + 2
        finally:
            cluster.put(held)
        assert cluster.stats().total.lends == 5


def test_a_removed_servers_idle_members_close_at_once(servers: Servers) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=2) as cluster:
        take(cluster, 4, io=True)
        assert wait_until(lambda: a.active >= 1)
        cluster.remove(a.address)  # a tuple names the same server
        assert wait_until(lambda: a.active == 0)
        assert a.address_text not in cluster.stats().servers


def test_add_of_a_present_address_and_remove_of_a_missing_one_are_value_errors(
    servers: Servers,
) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text], size=1) as cluster:
        with pytest.raises(ValueError, match="already"):
            cluster.add(a.address_text)
        with pytest.raises(ValueError, match="already"):
            cluster.add(a.address)
        with pytest.raises(ValueError, match="not in the cluster"):
            cluster.remove(b.address_text)
        assert cluster.servers == [a.address_text]
        cluster.add(b.address_text, weight=3)
        assert Counter(take(cluster, 8)) == {a.address: 2, b.address: 6}


def test_an_empty_cluster_is_unavailable_until_a_server_is_added(echo_server: EchoServer) -> None:
    with gocp.cluster([], size=1) as cluster:
        with pytest.raises(gocp.ClusterUnavailable) as info:
            cluster.get(timeout=BOUND)
        assert info.value.reasons == {}
        assert info.value.retry_in == 0.0
        assert "no server" in str(info.value)
        cluster.add(echo_server.address_text)
        assert take(cluster, 1, io=True) == [echo_server.address]
        cluster.remove(echo_server.address_text)
        with pytest.raises(gocp.ClusterUnavailable):
            cluster.get(timeout=0)


def test_servers_come_and_go_while_threads_use_the_cluster(servers: Servers) -> None:
    a, b, c = servers
    with gocp.cluster([a.address_text, b.address_text], size=2) as cluster:
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: Counter[Any] = Counter()
        lock = threading.Lock()

        held: set[int] = set()

        def user() -> None:
            try:
                while not stop.is_set():
                    conn = cluster.get(timeout=BOUND)
                    with lock:
                        assert id(conn) not in held, f"{conn!r} lent twice at once"
                        held.add(id(conn))
                    echo(conn)
                    with lock:
                        held.discard(id(conn))
                        seen[conn.address] += 1
                    cluster.put(conn)
            except BaseException as exc:
                errors.append(exc)

        def gets_since(count: int) -> bool:
            with lock:
                return sum(seen.values()) >= count + 3

        users = [threading.Thread(target=user) for _ in range(4)]
        for thread in users:
            thread.start()
        try:
            for _ in range(30):
                cluster.add(c.address_text)
                with lock:
                    count = sum(seen.values())
                assert wait_until(lambda: gets_since(count))  # noqa: B023 - called at once
                cluster.remove(c.address_text)
        finally:
            stop.set()
            for thread in users:
                thread.join(BOUND)
        assert not errors, errors
        assert set(seen) <= {a.address, b.address, c.address}
        assert seen[a.address] > 0
        assert seen[b.address] > 0
        assert wait_until(lambda: c.active == 0)  # every member of the removed server closed
        stats = cluster.stats()
        assert stats.total.in_use == 0
        assert list(stats.servers) == [a.address_text, b.address_text]


# -- a hanging server never slows the others -------------------------------------------------


def test_a_blackholed_server_never_slows_gets_to_healthy_ones(servers: Servers) -> None:
    """SYNs to one server are dropped: the get that dials it hangs up to ``dial_timeout``
    (2 s) and then moves on; meanwhile gets go to the healthy servers, fast."""
    a, b, _ = servers
    with hanging_address("127.0.0.3") as hanging:
        addresses = [text(hanging), a.address_text, b.address_text]
        with gocp.cluster(addresses, size=2, dial_timeout=2.0) as cluster:
            with in_thread(cluster.get) as stuck:  # its turn: the hanging server
                assert wait_until(lambda: server_stats(cluster, text(hanging)).pool.dials == 1)
                latencies = []
                for _ in range(30):
                    started = time.monotonic()
                    conn = cluster.get(timeout=1.0)
                    latencies.append(time.monotonic() - started)
                    assert conn.address in (a.address, b.address)
                    echo(conn)
                    cluster.put(conn)
                assert not stuck.done.is_set(), "the hanging dial ended before the other gets"
                assert max(latencies) < 1.0, latencies  # vs 2 s for the hanging dial
                survivor = stuck.result()
            assert survivor.address in (a.address, b.address)  # it moved on
            cluster.put(survivor)
            hung = server_stats(cluster, text(hanging))
            assert hung.state == "down"
            assert hung.last_error is not None
            assert "imeout" in hung.last_error or "timed out" in hung.last_error


def test_a_get_is_bounded_by_its_timeout_plus_one_dial_timeout_when_every_server_hangs() -> None:
    with (
        hanging_address("127.0.0.1") as first,
        hanging_address("127.0.0.2") as second,
        hanging_address("127.0.0.3") as third,
        gocp.cluster([first, second, third], size=1, dial_timeout=0.5) as cluster,
    ):
        started = time.monotonic()
        with pytest.raises(gocp.ClusterUnavailable) as info:
            cluster.get(timeout=0.25)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 0.25 + 0.5 + 1.0  # the first dial ran its dial_timeout
        assert len(info.value.reasons) == 3
        assert all("timed out" in why for why in info.value.reasons.values())


def test_a_slow_client_dial_never_slows_gets_to_other_servers() -> None:
    dialer = Dialer()
    gate = dialer.gate("slow")
    with gocp.cluster(["slow", "fast"], size=2, dial=dialer.dial) as cluster:
        with in_thread(lambda: cluster.get(timeout=BOUND)) as slow:
            assert dialer.entered["slow"].wait(BOUND)
            assert set(take(cluster, 10)) == {"fast"}  # its turns pass on to `fast`
            assert not slow.done.is_set()
            gate.set()
            client = slow.result()
        assert client.address == "slow"
        cluster.put(client)
        assert dialer.dials["slow"] == 1  # nobody else dialled it meanwhile


# -- stats ------------------------------------------------------------------------------------


def test_stats_show_each_server_and_the_totals(servers: Servers, clock: FakeClock) -> None:
    a, b, _ = servers
    with (
        refused_address("127.0.0.3") as refused,
        gocp.cluster(
            {a.address_text: 2, b.address_text: 1, text(refused): 1},
            size=2,
            max_rps=8,
            burst=4,
            clock=clock,
            **RETRY,
        ) as cluster,
    ):
        went = Counter(take(cluster, 4))
        stats = cluster.stats()
        assert isinstance(stats, gocp.ClusterStats)
        assert list(stats.servers) == [a.address_text, b.address_text, text(refused)]
        up = stats.servers[a.address_text]
        assert isinstance(up, gocp.ServerStats)
        assert (up.address, up.weight, up.state, up.retry_in, up.last_error) == (
            a.address_text,
            2,
            "up",
            0.0,
            None,
        )
        assert up.tokens == 4.0 - went[a.address]
        assert up.pool.lends == went[a.address]
        down = stats.servers[text(refused)]
        assert (down.state, down.retry_in) == ("down", 1.0)
        assert down.tokens == 4.0  # the failed get gave its token back
        assert stats.total.lends == sum(server.pool.lends for server in stats.servers.values())
        assert stats.total.size == 6
        clock.advance(1.0)
        assert cluster.stats().servers[text(refused)].state == "trial"
        assert cluster.stats().servers[a.address_text].tokens == 4.0
        assert not stats.closed
    assert cluster.stats().closed


def test_without_max_rps_servers_have_no_tokens(echo_server: EchoServer) -> None:
    with gocp.cluster([echo_server.address_text], size=1) as cluster:
        assert server_stats(cluster, echo_server.address_text).tokens is None
        assert "servers=1" in repr(cluster)
    assert "closed" in repr(cluster)


# -- clusters of clients --------------------------------------------------------------------


def test_a_cluster_of_clients_made_by_a_dial_hook() -> None:
    dialer = Dialer()
    with gocp.cluster(
        {"db-1": 1, "db-2": 2}, size=2, dial=dialer.dial, close=dialer.close
    ) as cluster:
        assert Counter(take(cluster, 30)) == {"db-1": 10, "db-2": 20}
        assert set(dialer.dials) == {"db-1", "db-2"}  # dial(address) for its server
        client = cluster.get(timeout=BOUND)
        cluster.put(client, broken=True)  # destroyed: its close hook ran
        assert client.closed
        client = cluster.get(timeout=BOUND)
        cluster.put(client)
        before = cluster.stats()
        with pytest.raises(ValueError, match="not lent"):
            cluster.put(client)
        with pytest.raises(ValueError, match="not lent"):
            cluster.put(Client("db-1", 99))
        assert cluster.stats() == before


def test_a_cluster_of_clients_whose_dials_all_fail_is_unavailable() -> None:
    dialer = Dialer()
    dialer.down.update({"db-1", "db-2"})
    with gocp.cluster(["db-1", "db-2"], size=1, dial=dialer.dial, **RETRY) as cluster:
        with pytest.raises(gocp.ClusterUnavailable) as info:
            cluster.get(timeout=BOUND)
        assert set(info.value.reasons) == {"db-1", "db-2"}
        assert all("db-" in why and "refused" in why for why in info.value.reasons.values())
        assert 0.0 < info.value.retry_in <= 1.0
        assert dict(dialer.dials) == {"db-1": 1, "db-2": 1}


# -- put, connection(), `with conn` ----------------------------------------------------------


def test_put_refuses_a_second_put_and_a_stranger(echo_server: EchoServer) -> None:
    with (
        gocp.cluster([echo_server.address_text], size=2) as cluster,
        gocp.new(echo_server.address, size=1) as single,
    ):
        conn = cluster.get(timeout=BOUND)
        other = cluster.get(timeout=BOUND)
        cluster.put(conn)
        stranger = single.get()
        before = cluster.stats()
        with pytest.raises(ValueError):
            cluster.put(conn)
        with pytest.raises(ValueError, match="another pool"):
            cluster.put(stranger)
        with pytest.raises(TypeError):
            cluster.put(object())
        assert cluster.stats() == before
        single.put(stranger)
        cluster.put(other)
        both = [cluster.get(timeout=0), cluster.get(timeout=0)]
        assert both[0] is not both[1]
        for member in both:
            cluster.put(member)


def test_connection_blocks_and_with_conn_give_members_back(servers: Servers) -> None:
    a, b, _ = servers
    with gocp.cluster([a.address_text, b.address_text], size=1) as cluster:
        with cluster.connection(timeout=BOUND) as conn:
            echo(conn)
            assert cluster.stats().total.in_use == 1
        assert cluster.stats().total.in_use == 0
        member = cluster.get(timeout=BOUND)
        with member:
            echo(member)
        assert cluster.stats().total.in_use == 0
        used: list[Any] = []
        with pytest.raises(RuntimeError):
            use_then_fail(cluster.connection(), used)
        broken = server_stats(cluster, text(used[0].address))
        assert (broken.pool.in_use, broken.pool.closed_broken) == (0, 1)


# -- closing -----------------------------------------------------------------------------------


def test_close_closes_idle_members_now_lent_ones_when_put_back(servers: Servers) -> None:
    a, b, _ = servers
    cluster = gocp.cluster([a.address_text, b.address_text], size=1)
    idle = cluster.get(timeout=BOUND)
    lent = cluster.get(timeout=BOUND)
    echo(idle)
    echo(lent)
    cluster.put(idle)
    cluster.close()
    cluster.close()  # idempotent
    assert cluster.closed
    assert wait_until(lambda: a.active == 0)
    echo(lent)  # never closed under its holder
    cluster.put(lent)
    assert wait_until(lambda: b.active == 0)
    with pytest.raises(gocp.PoolClosed):
        cluster.get(timeout=0)
    with pytest.raises(gocp.PoolClosed):
        cluster.add("127.0.0.3:1")


def test_close_wakes_a_waiting_get(echo_server: EchoServer) -> None:
    cluster = gocp.cluster([echo_server.address_text], size=1)
    held = cluster.get(timeout=BOUND)
    with in_thread(lambda: cluster.get(timeout=BOUND)) as waiter:
        assert wait_until(lambda: cluster._waiting == 1)
        cluster.close()
        assert isinstance(waiter.failure(2.0), gocp.PoolClosed)
    cluster.put(held)


def test_close_stops_the_shared_background_thread(clock: FakeClock) -> None:
    dialer = Dialer()
    with gocp.cluster(
        ["a", "b"], size=1, dial=dialer.dial, close=dialer.close, idle_timeout=5.0, clock=clock
    ) as cluster:
        assert Counter(take(cluster, 2)) == {"a": 1, "b": 1}
        names = [thread.name for thread in threading.enumerate()]
        assert names.count(f"gocp {cluster.name}") == 1  # one thread for every server
        clock.advance(5.0)
        assert wait_until(lambda: len(dialer.closed) == 2)  # idle_timeout, per server
    assert wait_until(
        lambda: not any(thread.name == f"gocp {cluster.name}" for thread in threading.enumerate())
    )


# -- arguments -------------------------------------------------------------------------------


def test_arguments_are_checked_at_the_call_that_received_them(echo_server: EchoServer) -> None:
    address = echo_server.address_text
    with pytest.raises(ValueError, match="weight"):
        gocp.cluster({address: 0})
    with pytest.raises(TypeError, match="weight"):
        gocp.cluster({address: True})
    with pytest.raises(ValueError, match="max_rps"):
        gocp.cluster([address], max_rps=0)
    with pytest.raises(ValueError, match="burst"):
        gocp.cluster([address], burst=2)
    with pytest.raises(ValueError, match="burst"):
        gocp.cluster([address], max_rps=10, burst=0.5)
    with pytest.raises(ValueError, match="listed twice"):
        gocp.cluster([address, echo_server.address])
    with pytest.raises(TypeError, match="servers"):
        gocp.cluster(address)
    with pytest.raises(ValueError, match="address"):
        gocp.cluster(["no port"])
    with pytest.raises(ValueError, match="dial_attempts"):
        gocp.cluster([address], dial_attempts=3)
    with gocp.cluster([address]) as cluster:
        with pytest.raises(ValueError, match="timeout"):
            cluster.get(timeout=-1)
        with pytest.raises(ValueError, match="weight"):
            cluster.add("127.0.0.2:1", weight=1001)
        assert cluster.servers == [address]


def test_a_removed_servers_lent_client_is_closed_when_put_back() -> None:
    dialer = Dialer()
    with gocp.cluster(["a", "b"], size=1, dial=dialer.dial, close=dialer.close) as cluster:
        held = cluster.get(timeout=BOUND)
        assert held.address == "a"
        cluster.remove("a")
        assert not held.closed  # never under its holder
        assert set(take(cluster, 4)) == {"b"}
        cluster.put(held)
        assert held.closed
        assert list(cluster.stats().servers) == ["b"]
        cluster.add("a")  # back, with a new pool
        assert Counter(take(cluster, 4)) == {"a": 2, "b": 2}


def test_lifecycle_options_apply_to_each_server(clock: FakeClock) -> None:
    dialer = Dialer()
    with gocp.cluster(
        ["a", "b"],
        size=2,
        dial=dialer.dial,
        close=dialer.close,
        min_idle=1,
        max_lifetime=10.0,
        clock=clock,
    ) as cluster:
        # min_idle: each server's pool dials one member in the background, no get needed.
        assert wait_until(lambda: dialer.dials == {"a": 1, "b": 1})
        first = list(dialer.made)
        clock.advance(10.0)  # max_lifetime: each is replaced (and min_idle refilled)
        assert wait_until(lambda: all(client.closed for client in first))
        assert wait_until(lambda: dialer.dials == {"a": 2, "b": 2})
        assert cluster.stats().total.closed_lifetime == 2


def test_a_member_of_one_composite_pool_is_refused_by_another(echo_server: EchoServer) -> None:
    with (
        gocp.cluster([echo_server.address_text], size=1) as cluster,
        gocp.keyed(size=1) as keyed,
    ):
        from_cluster = cluster.get(timeout=BOUND)
        from_keyed = keyed.get(echo_server.address_text)
        with pytest.raises(ValueError, match="another pool"):
            keyed.put(from_cluster)
        with pytest.raises(ValueError, match="another pool"):
            cluster.put(from_keyed)
        cluster.put(from_cluster)
        keyed.put(from_keyed)


@pytest.mark.parametrize("kind", ["cluster", "keyed"])
def test_a_composite_pool_dropped_without_close_is_collected(
    echo_server: EchoServer, clock: FakeClock, kind: str
) -> None:
    """Its pools are closed and its one background thread (min_idle needs it) ends."""
    ref: weakref.ref[Any]
    if kind == "cluster":
        cluster = gocp.cluster([echo_server.address_text], size=1, min_idle=1, clock=clock)
        take(cluster, 1, io=True)
        ref = weakref.ref(cluster)
        del cluster
    else:
        keyed = gocp.keyed(size=1, min_idle=1, clock=clock)
        with keyed.connection(echo_server.address_text) as conn:
            echo(conn)
        assert wait_until(lambda: echo_server.active == 1)
        ref = weakref.ref(keyed)
        del keyed, conn

    def gone() -> bool:
        gc.collect()
        return ref() is None and echo_server.active == 0

    assert wait_until(gone)  # then no_leaks checks that its thread ended
