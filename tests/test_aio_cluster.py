"""Clusters for asyncio (``gocp.aio.cluster``, DESIGN.md sections 5 and 6).

The contract both shells share is written once (``aioclusterkit.shells_test``) and runs
against the threaded ``gocp.cluster`` (its blocking calls in threads) and the asyncio
``gocp.aio.cluster`` under the default loop and uvloop: weighted round robin, failover
within one get, ``ClusterUnavailable``, backoff and token buckets at their exact
boundaries on a ``FakeClock`` (``retry_min == retry_max``, binary fractions of a
second), ``PoolTimeout`` naming each server, wake-ups, ``add``/``remove`` while in use,
stats, closing. Then what is the asyncio shell's own: coroutine dial hooks, the half-open
trial, latency proven with events (the healthy gets all finished while the blackholed
dial still hung), and cancellation of a ``get`` at each await point (waiting, during a
dial, during failover, after any number of loop iterations), after which every server's
pool is whole and no get is counted waiting; ``asyncio.timeout()`` around ``get``;
``await close()`` waking waiters and leaving no task pending.

Real echo servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3, one behind the project's
``FaultProxy`` where a test kills, resets or stalls it. No test sleeps to wait for
something. Each test runs under ``aiokit.run`` (a deadline, no task left pending) and
conftest's ``no_leaks`` (no thread, no descriptor left).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from aioclusterkit import (  # noqa: F401 - collect_after_each_test is an autouse fixture
    RETRY,
    AioDialer,
    Shell,
    assert_cluster_whole,
    collect_after_each_test,
    shells_test,
)
from aiokit import (
    BOUND,
    EARLY,
    aio_test,
    iterations,
    other_tasks,
    round_trip,
    settle,
    until,
)
from clusterkit import Client, Dialer, hanging_address, refused_address

import gocp
import gocp.aio
from gocp.testing import EchoServer, FakeClock, FaultProxy

Servers = tuple[EchoServer, EchoServer, EchoServer]


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


def server_stats(cluster: Any, address: str) -> gocp.ServerStats:
    stats: gocp.ServerStats = cluster.stats().servers[address]
    return stats


async def aecho(conn: gocp.aio.AioConn, payload: bytes = b"ping") -> None:
    assert await round_trip(conn, payload) == payload


async def atake(cluster: gocp.aio.AioCluster[Any], count: int, *, io: bool = False) -> list[Any]:
    """``count`` gets of an asyncio cluster, each put back at once; where each went."""
    went = []
    for _ in range(count):
        conn = await cluster.get(timeout=BOUND)
        if io:
            await aecho(conn)
        went.append(conn.address)
        cluster.put(conn)
    return went


async def use_then_fail(lend: gocp.aio.AioLend[Any], used: list[Any]) -> None:
    """An ``async with`` block that does I/O on its member and then raises."""
    async with lend as conn:
        used.append(conn)
        await aecho(conn)
        raise RuntimeError("boom")


async def bounded(bound: str, call: Coroutine[Any, Any, Any]) -> Any:
    """Await ``call`` as it is (``"own"``: its own timeout) or within ``asyncio.timeout``
    of 0.05 s."""
    if bound == "own":
        return await call
    async with asyncio.timeout(0.05):
        return await call


# == the contract both shells share ==========================================================

# -- round robin ----------------------------------------------------------------------


@shells_test
async def test_round_robin_order_over_hundreds_of_gets(shell: Shell, servers: Servers) -> None:
    cluster = shell.cluster([server.address_text for server in servers], size=1)
    try:
        went = []
        for index in range(300):
            conn = await shell.get(cluster, timeout=BOUND)
            assert conn.connected  # a cluster lends connected members
            if index % 10 == 0:
                await shell.echo(conn)
            went.append(conn.address)
            cluster.put(conn)
        assert went == [server.address for server in servers] * 100
        await until(lambda: [server.accepted for server in servers] == [1, 1, 1])
    finally:
        await shell.close(cluster)


@shells_test
async def test_weights_give_exact_shares_spread_over_each_cycle(
    shell: Shell, servers: Servers
) -> None:
    a, b, c = servers
    weights = {a.address_text: 3, b.address_text: 1, c.address_text: 2}
    cluster = shell.cluster(weights, size=1)
    try:
        went = await shell.take(cluster, 600)
        name = {a.address: "a", b.address: "b", c.address: "c"}
        assert "".join(name[address] for address in went[:6]) == "acabca"  # smooth
        assert Counter(went) == {a.address: 300, b.address: 100, c.address: 200}
        stats = cluster.stats()
        assert [stats.servers[key].pool.lends for key in weights] == [300, 100, 200]
        assert [stats.servers[key].weight for key in weights] == [3, 1, 2]
    finally:
        await shell.close(cluster)


@shells_test
async def test_conn_address_and_socket_say_which_server(shell: Shell, servers: Servers) -> None:
    cluster = shell.cluster([server.address_text for server in servers], size=1)
    try:
        for server in servers:
            conn = await shell.get(cluster, timeout=BOUND)
            assert conn.address == server.address
            assert conn.socket.getpeername() == server.address  # the raw connection
            await shell.echo(conn)
            cluster.put(conn)
    finally:
        await shell.close(cluster)


@shells_test
async def test_fresh_gives_a_newly_made_connection(shell: Shell, echo_server: EchoServer) -> None:
    cluster = shell.cluster([echo_server.address_text], size=1)
    try:
        await shell.take(cluster, 1, io=True)
        conn = await shell.get(cluster, fresh=True)
        await shell.echo(conn)
        cluster.put(conn)
        assert echo_server.accepted == 2
        assert server_stats(cluster, echo_server.address_text).pool.closed_fresh == 1
    finally:
        await shell.close(cluster)


# -- failover, backoff, recovery -----------------------------------------------------------


@shells_test
async def test_a_failed_dial_marks_its_server_down_and_the_same_get_moves_on(
    shell: Shell, echo_server: EchoServer, clock: FakeClock
) -> None:
    with refused_address("127.0.0.2") as refused:
        cluster = shell.cluster([refused, echo_server.address], size=2, clock=clock, **RETRY)
        try:
            conn = await shell.get(cluster, timeout=BOUND)  # its turn starts at the refused one
            assert conn.address == echo_server.address
            await shell.echo(conn)
            cluster.put(conn)
            down = server_stats(cluster, text(refused))
            assert down.state == "down"
            assert down.retry_in == 1.0
            assert down.last_error is not None
            assert "ConnectionRefusedError" in down.last_error
            assert (down.pool.dials, down.pool.dial_failures) == (1, 1)
            assert down.pool.in_use == 0  # the member went back
            # While it backs off nobody dials it: every get goes to the survivor.
            assert set(await shell.take(cluster, 20)) == {echo_server.address}
            assert server_stats(cluster, text(refused)).pool.dials == 1
            assert server_stats(cluster, echo_server.address_text).state == "up"
        finally:
            await shell.close(cluster)


@shells_test
async def test_every_server_down_raises_cluster_unavailable_at_once_with_reasons(
    shell: Shell, clock: FakeClock
) -> None:
    with refused_address("127.0.0.1") as first, refused_address("127.0.0.2") as second:
        cluster = shell.cluster([first, second], size=2, clock=clock, **RETRY)
        try:
            started = time.monotonic()
            with pytest.raises(gocp.ClusterUnavailable) as info:
                await shell.get(cluster)  # no timeout: it still fails fast
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
                await shell.get(cluster, timeout=BOUND)
            assert info.value.retry_in == 0.75
            assert cluster.stats().total.dials == dials
            states = {key: server.state for key, server in cluster.stats().servers.items()}
            assert states == {text(first): "down", text(second): "down"}
        finally:
            await shell.close(cluster)


@shells_test
async def test_a_server_that_dies_loses_its_share_and_takes_it_back_at_once_when_it_recovers(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    a, b, _ = servers
    with FaultProxy(b.address, host="127.0.0.2") as proxy:
        cluster = shell.cluster([a.address_text, proxy.address_text], size=2, clock=clock, **RETRY)
        try:
            before = Counter(await shell.take(cluster, 100, io=True))
            assert before == {a.address: 50, proxy.address: 50}
            proxy.refuse()  # it dies: its connections close, new ones are refused
            proxy.kill_all()
            during = Counter(await shell.take(cluster, 100, io=True))
            assert during == {a.address: 100}  # failover to the survivor, no error
            assert server_stats(cluster, proxy.address_text).state == "down"
            proxy.accept()  # it comes back
            clock.advance(1.0)  # its backoff ends: the next get to reach it tries it
            after = Counter(await shell.take(cluster, 100, io=True))
            assert after == {a.address: 50, proxy.address: 50}  # its share, at once
            assert server_stats(cluster, proxy.address_text).state == "up"
        finally:
            await shell.close(cluster)


# -- rate limits ----------------------------------------------------------------------------


@shells_test
async def test_token_buckets_are_exact_at_their_boundaries(
    shell: Shell, echo_server: EchoServer, clock: FakeClock
) -> None:
    address = echo_server.address_text
    cluster = shell.cluster([address], size=2, max_rps=4, burst=2, clock=clock)
    try:
        assert server_stats(cluster, address).tokens == 2.0  # full at the start
        assert len(await shell.take(cluster, 2)) == 2
        with pytest.raises(gocp.PoolTimeout, match=r"rate limited \(next token in 0\.250s\)"):
            await shell.get(cluster, timeout=0)
        assert server_stats(cluster, address).tokens == 0.0
        clock.advance(0.1875)  # 0.75 token
        with pytest.raises(gocp.PoolTimeout, match=r"next token in 0\.062s"):
            await shell.get(cluster, timeout=0)
        assert server_stats(cluster, address).tokens == 0.75
        clock.advance(0.0625)  # exactly one token
        assert len(await shell.take(cluster, 1)) == 1
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(cluster, timeout=0)
        clock.advance(1000.0)  # never more than burst
        assert server_stats(cluster, address).tokens == 2.0
        assert len(await shell.take(cluster, 2)) == 2
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(cluster, timeout=0)
    finally:
        await shell.close(cluster)


@shells_test
async def test_each_server_has_its_own_bucket(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    addresses = [server.address_text for server in servers]
    cluster = shell.cluster(addresses, size=2, max_rps=1, clock=clock)
    try:
        assert Counter(await shell.take(cluster, 3)) == {server.address: 1 for server in servers}
        with pytest.raises(gocp.PoolTimeout) as info:
            await shell.get(cluster, timeout=0)
        for address in addresses:
            assert f"{address} rate limited" in str(info.value)
        clock.advance(1.0)
        assert Counter(await shell.take(cluster, 3)) == {server.address: 1 for server in servers}
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_get_that_cannot_lend_gives_its_token_back(
    shell: Shell, echo_server: EchoServer, clock: FakeClock
) -> None:
    address = echo_server.address_text
    cluster = shell.cluster([address], size=1, max_rps=1, burst=2, clock=clock)
    try:
        held = await shell.get(cluster, timeout=0)
        assert server_stats(cluster, address).tokens == 1.0
        with pytest.raises(gocp.PoolTimeout, match="busy"):
            await shell.get(cluster, timeout=0)
        assert server_stats(cluster, address).tokens == 1.0  # not spent on a busy server
        cluster.put(held)
        assert len(await shell.take(cluster, 1)) == 1
        with pytest.raises(gocp.PoolTimeout, match="rate limited"):
            await shell.get(cluster, timeout=0)
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_get_waits_for_the_first_token_within_its_timeout(
    shell: Shell, echo_server: EchoServer, clock: FakeClock
) -> None:
    cluster = shell.cluster([echo_server.address_text], size=1, max_rps=4, burst=1, clock=clock)
    try:
        await shell.take(cluster, 1)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match="rate limited"):
            await shell.get(cluster, timeout=0.2)  # the fake clock does not move: no token
        assert time.monotonic() - started >= 0.2 - EARLY
        waiter = shell.start_get(cluster, timeout=BOUND)
        await until(lambda: cluster.stats().waiting == 1, "the get waits for a token")
        clock.advance(0.25)  # a token: the waiter is woken and takes it
        conn = await asyncio.wait_for(waiter, 2.0)
        cluster.put(conn)
    finally:
        await shell.close(cluster)


# -- busy: waiting, timeouts, wake-ups -----------------------------------------------------


@shells_test
async def test_when_every_server_is_busy_get_times_out_naming_each_one(
    shell: Shell, servers: Servers
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=1)
    try:
        held = [await shell.get(cluster, timeout=BOUND) for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout) as info:
            await shell.get(cluster, timeout=0.2)
        assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + BOUND
        assert info.value.timeout == 0.2
        assert isinstance(info.value, TimeoutError)
        for server in (a, b):
            assert f"{server.address_text} busy (1 of 1 members lent" in str(info.value)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(cluster, timeout=0)
        assert time.monotonic() - started < 1.0  # timeout=0 never waits
        assert cluster.stats().waiting == 0
        for conn in held:
            cluster.put(conn)
    finally:
        await shell.close(cluster)


@pytest.mark.parametrize("which", [0, 1])
@shells_test
async def test_a_waiting_get_is_woken_by_a_put_to_any_server(
    shell: Shell, servers: Servers, which: int
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=1)
    try:
        held = [await shell.get(cluster, timeout=BOUND) for _ in range(2)]
        waiter = shell.start_get(cluster, timeout=BOUND)
        await until(lambda: cluster.stats().waiting == 1, "the get waits")
        cluster.put(held[which])
        conn = await asyncio.wait_for(waiter, 2.0)
        assert conn is held[which]
        cluster.put(conn)
        cluster.put(held[1 - which])
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_waiting_get_is_woken_by_a_server_added(shell: Shell, servers: Servers) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text], size=1)
    try:
        held = await shell.get(cluster, timeout=BOUND)
        waiter = shell.start_get(cluster, timeout=BOUND)
        await until(lambda: cluster.stats().waiting == 1, "the get waits")
        cluster.add(b.address_text)
        conn = await asyncio.wait_for(waiter, 2.0)
        assert conn.address == b.address
        cluster.put(conn)
        cluster.put(held)
    finally:
        await shell.close(cluster)


# -- servers added and removed while in use ----------------------------------------------


@shells_test
async def test_a_removed_servers_lent_member_closes_when_put_back_never_under_its_holder(
    shell: Shell, servers: Servers
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=1)
    try:
        held = await shell.get(cluster, timeout=BOUND)
        assert held.address == a.address
        await shell.echo(held)
        await shell.remove(cluster, a.address_text)
        assert cluster.servers == [b.address_text]
        assert server_stats(cluster, a.address_text).state == "removed"
        assert set(await shell.take(cluster, 10)) == {b.address}
        await shell.echo(held)  # still usable by its holder
        assert a.active == 1
        cluster.put(held)
        await until(lambda: a.active == 0, "closed when it came back")
        stats = cluster.stats()
        assert list(stats.servers) == [b.address_text]
        assert stats.total.lends == 11  # the removed server's counters are kept
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_server_removed_while_lent_and_added_back_counts_in_the_totals(
    shell: Shell, servers: Servers
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=1)
    try:
        held = await shell.get(cluster, timeout=BOUND)
        assert held.address == a.address
        try:
            await shell.remove(cluster, a.address_text)
            cluster.add(a.address_text)
            assert Counter(await shell.take(cluster, 4)) == {a.address: 2, b.address: 2}
            stats = cluster.stats()
            assert stats.servers[a.address_text].state == "up"
            assert stats.servers[a.address_text].pool.lends == 2
            assert stats.total.lends == 5  # 1 of the old pool (lent), 2 + 2
        finally:
            cluster.put(held)
        assert cluster.stats().total.lends == 5
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_removed_servers_idle_members_close_at_once(shell: Shell, servers: Servers) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=2)
    try:
        await shell.take(cluster, 4, io=True)
        await until(lambda: a.active >= 1)
        await shell.remove(cluster, a.address)  # a tuple names the same server
        await until(lambda: a.active == 0, "its idle members closed")
        assert a.address_text not in cluster.stats().servers
    finally:
        await shell.close(cluster)


@shells_test
async def test_add_of_a_present_address_and_remove_of_a_missing_one_are_value_errors(
    shell: Shell, servers: Servers
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text], size=1)
    try:
        with pytest.raises(ValueError, match="already"):
            cluster.add(a.address_text)
        with pytest.raises(ValueError, match="already"):
            cluster.add(a.address)
        with pytest.raises(ValueError, match="not in the cluster"):
            await shell.remove(cluster, b.address_text)
        assert cluster.servers == [a.address_text]
        cluster.add(b.address_text, weight=3)
        assert Counter(await shell.take(cluster, 8)) == {a.address: 2, b.address: 6}
    finally:
        await shell.close(cluster)


@shells_test
async def test_an_empty_cluster_is_unavailable_until_a_server_is_added(
    shell: Shell, echo_server: EchoServer
) -> None:
    cluster = shell.cluster([], size=1)
    try:
        with pytest.raises(gocp.ClusterUnavailable) as info:
            await shell.get(cluster, timeout=BOUND)
        assert info.value.reasons == {}
        assert info.value.retry_in == 0.0
        assert "no server" in str(info.value)
        cluster.add(echo_server.address_text)
        assert await shell.take(cluster, 1, io=True) == [echo_server.address]
        await shell.remove(cluster, echo_server.address_text)
        with pytest.raises(gocp.ClusterUnavailable):
            await shell.get(cluster, timeout=0)
    finally:
        await shell.close(cluster)


# -- stats -------------------------------------------------------------------------------


@shells_test
async def test_stats_show_each_server_and_the_totals(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    a, b, _ = servers
    with refused_address("127.0.0.3") as refused:
        cluster = shell.cluster(
            {a.address_text: 2, b.address_text: 1, text(refused): 1},
            size=2,
            max_rps=8,
            burst=4,
            clock=clock,
            **RETRY,
        )
        try:
            went = Counter(await shell.take(cluster, 4))
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
            assert stats.total.lends == sum(s.pool.lends for s in stats.servers.values())
            assert stats.total.size == 6
            clock.advance(1.0)
            assert cluster.stats().servers[text(refused)].state == "trial"
            assert cluster.stats().servers[a.address_text].tokens == 4.0
            assert not stats.closed
        finally:
            await shell.close(cluster)
        assert cluster.stats().closed


@shells_test
async def test_without_max_rps_servers_have_no_tokens(
    shell: Shell, echo_server: EchoServer
) -> None:
    cluster = shell.cluster([echo_server.address_text], size=1)
    try:
        assert server_stats(cluster, echo_server.address_text).tokens is None
        assert "servers=1" in repr(cluster)
    finally:
        await shell.close(cluster)
    assert "closed" in repr(cluster)


# -- clusters of clients ---------------------------------------------------------------------


@shells_test
async def test_a_cluster_of_clients_made_by_a_dial_hook(shell: Shell) -> None:
    dialer = Dialer()
    cluster = shell.cluster({"db-1": 1, "db-2": 2}, size=2, dial=dialer.dial, close=dialer.close)
    try:
        assert Counter(await shell.take(cluster, 30)) == {"db-1": 10, "db-2": 20}
        assert set(dialer.dials) == {"db-1", "db-2"}  # dial(address) for its server
        client = await shell.get(cluster, timeout=BOUND)
        cluster.put(client, broken=True)  # destroyed: its close hook ran
        assert client.closed
        client = await shell.get(cluster, timeout=BOUND)
        cluster.put(client)
        before = cluster.stats()
        with pytest.raises(ValueError, match="not lent"):
            cluster.put(client)
        with pytest.raises(ValueError, match="not lent"):
            cluster.put(Client("db-1", 99))
        assert cluster.stats() == before
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_cluster_of_clients_whose_dials_all_fail_is_unavailable(shell: Shell) -> None:
    dialer = Dialer()
    dialer.down.update({"db-1", "db-2"})
    cluster = shell.cluster(["db-1", "db-2"], size=1, dial=dialer.dial, **RETRY)
    try:
        with pytest.raises(gocp.ClusterUnavailable) as info:
            await shell.get(cluster, timeout=BOUND)
        assert set(info.value.reasons) == {"db-1", "db-2"}
        assert all("db-" in why and "refused" in why for why in info.value.reasons.values())
        assert 0.0 < info.value.retry_in <= 1.0
        assert dict(dialer.dials) == {"db-1": 1, "db-2": 1}
    finally:
        await shell.close(cluster)


@shells_test
async def test_a_removed_servers_lent_client_is_closed_when_put_back(shell: Shell) -> None:
    dialer = Dialer()
    cluster = shell.cluster(["a", "b"], size=1, dial=dialer.dial, close=dialer.close)
    try:
        held = await shell.get(cluster, timeout=BOUND)
        assert held.address == "a"
        await shell.remove(cluster, "a")
        assert not held.closed  # never under its holder
        assert set(await shell.take(cluster, 4)) == {"b"}
        cluster.put(held)
        assert held.closed
        assert list(cluster.stats().servers) == ["b"]
        cluster.add("a")  # back, with a new pool
        assert Counter(await shell.take(cluster, 4)) == {"a": 2, "b": 2}
    finally:
        await shell.close(cluster)


# -- put -------------------------------------------------------------------------------------


@shells_test
async def test_put_refuses_a_second_put_and_a_stranger(
    shell: Shell, echo_server: EchoServer
) -> None:
    cluster = shell.cluster([echo_server.address_text], size=2)
    single = shell.new(echo_server.address, size=1)
    keyed = shell.keyed(size=1)
    try:
        conn = await shell.get(cluster, timeout=BOUND)
        other = await shell.get(cluster, timeout=BOUND)
        cluster.put(conn)
        stranger = await shell.get(single)
        from_keyed = await shell.get(keyed, echo_server.address_text)
        before = cluster.stats()
        with pytest.raises(ValueError):
            cluster.put(conn)
        with pytest.raises(ValueError, match="another pool"):
            cluster.put(stranger)
        with pytest.raises(ValueError, match="another pool"):
            cluster.put(from_keyed)
        with pytest.raises(ValueError, match="another pool"):
            keyed.put(other)
        with pytest.raises(TypeError):
            cluster.put(object())
        assert cluster.stats() == before
        single.put(stranger)
        keyed.put(from_keyed)
        cluster.put(other)
        both = [await shell.get(cluster, timeout=0), await shell.get(cluster, timeout=0)]
        assert both[0] is not both[1]
        for member in both:
            cluster.put(member)
    finally:
        await shell.close(keyed)
        await shell.close(single)
        await shell.close(cluster)


# -- closing and arguments ---------------------------------------------------------------------


@shells_test
async def test_close_closes_idle_members_now_lent_ones_when_put_back(
    shell: Shell, servers: Servers
) -> None:
    a, b, _ = servers
    cluster = shell.cluster([a.address_text, b.address_text], size=1)
    idle = await shell.get(cluster, timeout=BOUND)
    lent = await shell.get(cluster, timeout=BOUND)
    await shell.echo(idle)
    await shell.echo(lent)
    cluster.put(idle)
    await shell.close(cluster)
    await shell.close(cluster)  # idempotent
    assert cluster.closed
    await until(lambda: a.active == 0, "the idle member closed")
    await shell.echo(lent)  # never closed under its holder
    cluster.put(lent)
    await until(lambda: b.active == 0, "the lent member closed when put back")
    with pytest.raises(gocp.PoolClosed):
        await shell.get(cluster, timeout=0)
    with pytest.raises(gocp.PoolClosed):
        cluster.add("127.0.0.3:1")


@shells_test
async def test_close_wakes_a_waiting_get(shell: Shell, echo_server: EchoServer) -> None:
    cluster = shell.cluster([echo_server.address_text], size=1)
    held = await shell.get(cluster, timeout=BOUND)
    waiter = shell.start_get(cluster, timeout=BOUND)
    await until(lambda: cluster.stats().waiting == 1, "the get waits")
    await shell.close(cluster)
    with pytest.raises(gocp.PoolClosed):
        await asyncio.wait_for(waiter, 2.0)
    cluster.put(held)
    assert cluster.stats().waiting == 0


@shells_test
async def test_arguments_are_checked_at_the_call_that_received_them(
    shell: Shell, echo_server: EchoServer
) -> None:
    address = echo_server.address_text
    with pytest.raises(ValueError, match="weight"):
        shell.cluster({address: 0})
    with pytest.raises(TypeError, match="weight"):
        shell.cluster({address: True})
    with pytest.raises(ValueError, match="max_rps"):
        shell.cluster([address], max_rps=0)
    with pytest.raises(ValueError, match="burst"):
        shell.cluster([address], burst=2)
    with pytest.raises(ValueError, match="burst"):
        shell.cluster([address], max_rps=10, burst=0.5)
    with pytest.raises(ValueError, match="listed twice"):
        shell.cluster([address, echo_server.address])
    with pytest.raises(TypeError, match="servers"):
        shell.cluster(address)
    with pytest.raises(ValueError, match="address"):
        shell.cluster(["no port"])
    with pytest.raises(ValueError, match="dial_attempts"):
        shell.cluster([address], dial_attempts=3)
    cluster = shell.cluster([address])
    try:
        with pytest.raises(ValueError, match="timeout"):
            await shell.get(cluster, timeout=-1)
        with pytest.raises(ValueError, match="weight"):
            cluster.add("127.0.0.2:1", weight=1001)
        assert cluster.servers == [address]
    finally:
        await shell.close(cluster)


# == the asyncio shell's own =================================================================


@pytest.mark.parametrize("kind", ["async", "plain"])
@aio_test
async def test_failover_within_one_get_with_coroutine_or_plain_dial_hooks(
    kind: str, clock: FakeClock
) -> None:
    aio = AioDialer()
    plain = Dialer()
    dialer: Any = aio if kind == "async" else plain
    dialer.down.add("a")
    async with gocp.aio.cluster(
        ["a", "b", "c"], size=1, dial=dialer.dial, close=dialer.close, clock=clock, **RETRY
    ) as cluster:
        client = await cluster.get(timeout=0)  # a's turn: it fails, the same get takes b
        assert isinstance(client, Client)
        assert client.address == "b"
        assert dialer.dials == {"a": 1, "b": 1}
        assert server_stats(cluster, "a").state == "down"
        cluster.put(client)
        assert Counter(await atake(cluster, 9)) == {"b": 6, "c": 3}  # a's turns go to b
        assert dialer.dials["a"] == 1  # nobody dials it during its backoff
        dialer.down.discard("a")
        clock.advance(1.0)
        assert Counter(await atake(cluster, 9)) == {"a": 3, "b": 3, "c": 3}  # its share
        client = await cluster.get(timeout=0)
        cluster.put(client, broken=True)
        await until(lambda: client.closed, "its close hook (awaited or not) ran")
    assert all(client.closed for client in dialer.made)


@aio_test
async def test_after_its_backoff_a_server_gets_one_half_open_trial(clock: FakeClock) -> None:
    dialer = AioDialer()
    dialer.down.add("a")
    async with gocp.aio.cluster(
        ["a", "b"], size=1, dial=dialer.dial, clock=clock, **RETRY
    ) as cluster:
        held_b = await cluster.get(timeout=0)  # a fails, the same get takes b
        assert held_b.address == "b"
        assert dialer.dials["a"] == 1
        assert server_stats(cluster, "a").retry_in == 1.0
        clock.advance(0.9375)
        assert server_stats(cluster, "a").state == "down"
        with pytest.raises(gocp.PoolTimeout):
            await cluster.get(timeout=0)  # a backs off, b is busy
        assert dialer.dials["a"] == 1
        clock.advance(0.0625)  # the backoff ends: one get may try it
        assert server_stats(cluster, "a").state == "trial"
        gate = dialer.gate("a")
        trial = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: dialer.dialling["a"] == 1, "the trial dial is in flight")
        assert server_stats(cluster, "a").state == "down"  # one trial at a time
        with pytest.raises(gocp.PoolTimeout) as info:
            await cluster.get(timeout=0)
        assert "a down" in str(info.value)
        assert "b busy" in str(info.value)
        assert dialer.dials["a"] == 2
        gate.set()  # the trial fails: down again; the trial's get waits for b
        await until(lambda: server_stats(cluster, "a").pool.dial_failures == 2)
        assert not trial.done()
        cluster.put(held_b)
        held_b = await asyncio.wait_for(trial, 2.0)
        assert held_b.address == "b"
        assert server_stats(cluster, "a").retry_in == 1.0
        # It comes back: the next trial succeeds and it is up at once.
        dialer.down.discard("a")
        del dialer.gates["a"]
        clock.advance(1.0)
        cluster.put(held_b)
        both = [await cluster.get(timeout=0), await cluster.get(timeout=0)]
        assert sorted(conn.address for conn in both) == ["a", "b"]
        stats = server_stats(cluster, "a")
        assert (stats.state, stats.retry_in, stats.last_error) == ("up", 0.0, None)
        for conn in both:
            cluster.put(conn)
        assert Counter(await atake(cluster, 10)) == {"a": 5, "b": 5}


@aio_test
async def test_a_server_whose_backoff_ended_during_a_slow_dial_is_tried_by_the_same_get(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    dialer.down.add("b")
    async with gocp.aio.cluster(
        ["b", "a"], size=1, dial=dialer.dial, clock=clock, **RETRY
    ) as cluster:
        assert await atake(cluster, 1) == ["a"]  # b failed: down for 1 s
        gate = dialer.gate("a")
        dialer.down.add("a")
        slow = asyncio.ensure_future(cluster.get(timeout=BOUND, fresh=True))  # a's turn
        await until(lambda: dialer.dialling["a"] == 1, "a's dial is in flight")
        dialer.down.discard("b")
        clock.advance(1.0)  # b's backoff ends while a's dial hangs
        assert server_stats(cluster, "b").state == "trial"
        gate.set()  # a's dial fails
        client = await asyncio.wait_for(slow, 2.0)
        assert client.address == "b"
        cluster.put(client)


@aio_test
async def test_a_reset_connection_breaks_one_lend_and_the_server_keeps_serving(
    servers: Servers,
) -> None:
    a, b, _ = servers
    with FaultProxy(b.address, host="127.0.0.2") as proxy:
        async with gocp.aio.cluster([a.address_text, proxy.address_text], size=1) as cluster:
            held = [await cluster.get(timeout=BOUND), await cluster.get(timeout=BOUND)]
            try:
                for conn in held:
                    await aecho(conn)
                proxy.reset()  # RST both ways, in the middle of this lend
                for conn in held:
                    if conn.address == proxy.address:
                        with pytest.raises(gocp.ConnectionBroken):
                            await aecho(conn)
                    else:
                        await aecho(conn)
            finally:
                for conn in held:
                    cluster.put(conn)
            assert set(await atake(cluster, 4, io=True)) == {a.address, proxy.address}
            assert server_stats(cluster, proxy.address_text).state == "up"


@aio_test
async def test_a_stalled_server_times_out_its_own_io_and_no_other(servers: Servers) -> None:
    a, b, c = servers
    with FaultProxy(b.address, host="127.0.0.2") as proxy:
        addresses = [a.address_text, proxy.address_text, c.address_text]
        async with gocp.aio.cluster(addresses, size=1, io_timeout=0.25) as cluster:
            held = [await cluster.get(timeout=BOUND) for _ in range(3)]
            proxy.stall()
            for conn in held:
                if conn.address == proxy.address:
                    with pytest.raises(gocp.IOTimeout):
                        await aecho(conn)
                else:
                    await aecho(conn)
                cluster.put(conn)
            proxy.heal()
            assert set(await atake(cluster, 3, io=True)) == {a.address, proxy.address, c.address}


@aio_test
async def test_connection_blocks_and_async_with_conn_give_members_back(servers: Servers) -> None:
    a, b, _ = servers
    async with gocp.aio.cluster([a.address_text, b.address_text], size=1) as cluster:
        async with cluster.connection(timeout=BOUND) as conn:
            await aecho(conn)
            assert cluster.stats().total.in_use == 1
        assert cluster.stats().total.in_use == 0
        member = await cluster.get(timeout=BOUND)
        async with member:
            await aecho(member)
        assert cluster.stats().total.in_use == 0
        used: list[Any] = []
        with pytest.raises(RuntimeError):
            await use_then_fail(cluster.connection(), used)
        broken = server_stats(cluster, text(used[0].address))
        assert (broken.pool.in_use, broken.pool.closed_broken) == (0, 1)


@aio_test
async def test_lifecycle_options_apply_to_each_server(clock: FakeClock) -> None:
    dialer = AioDialer()
    async with gocp.aio.cluster(
        ["a", "b"],
        size=1,
        dial=dialer.dial,
        close=dialer.close,
        min_idle=1,
        max_lifetime=10.0,
        clock=clock,
    ) as cluster:
        # Each server's upkeep task starts with the first use of its pool.
        assert Counter(await atake(cluster, 2)) == {"a": 1, "b": 1}
        first = list(dialer.made)
        assert len(first) == 2
        clock.advance(10.0)  # max_lifetime: each is replaced (min_idle dials it again)
        await until(lambda: all(client.closed for client in first), "every client expired")
        await until(lambda: dialer.dials == {"a": 2, "b": 2}, "min_idle refilled each server")
        await until(lambda: cluster.stats().total.connected == 2)
        assert cluster.stats().total.closed_lifetime == 2


@aio_test
async def test_a_clock_advanced_while_a_servers_upkeep_awaits_a_check_is_not_missed(
    clock: FakeClock,
) -> None:
    """A server's upkeep task awaits a background check (an async check hook) while the
    clock moves past every member's ``idle_timeout``: once the check ends, the upkeep must
    look again at once and close the member idle for too long, not nap on the delay it
    computed before the clock moved (here a quarter of ``check_interval``: 25 s)."""
    dialer = AioDialer()
    gate = asyncio.Event()
    checking = asyncio.Event()

    async def check(client: Client) -> bool:
        checking.set()
        await gate.wait()
        return True

    async with gocp.aio.cluster(
        ["a"],
        size=2,
        dial=dialer.dial,
        check=check,
        close=dialer.close,
        check_interval=100.0,
        idle_timeout=150.0,
        clock=clock,
    ) as cluster:
        first, second = await cluster.get(timeout=0), await cluster.get(timeout=0)
        cluster.put(first)
        clock.advance(100.0)  # `first` is due for a background check
        await asyncio.wait_for(checking.wait(), BOUND)
        cluster.put(second)
        clock.advance(200.0)  # `second` has been idle past idle_timeout
        gate.set()
        await until(lambda: second.closed, "the expired idle client closed", timeout=2.0)
        assert server_stats(cluster, "a").pool.closed_idle >= 1


# -- a hanging server never slows the others -------------------------------------------------


@aio_test
async def test_a_blackholed_server_never_slows_gets_to_healthy_ones(servers: Servers) -> None:
    """SYNs to one server are dropped: the get whose turn it is hangs in its dial up to
    ``dial_timeout`` and then moves on; meanwhile gets go to the healthy servers, fast."""
    a, b, _ = servers
    with hanging_address("127.0.0.3") as hanging:
        addresses = [text(hanging), a.address_text, b.address_text]
        async with gocp.aio.cluster(addresses, size=2, dial_timeout=1.0) as cluster:
            stuck = asyncio.ensure_future(cluster.get())  # its turn: the hanging server
            await until(lambda: server_stats(cluster, text(hanging)).pool.dials == 1)
            latencies = []
            for _ in range(30):
                started = time.monotonic()
                conn = await cluster.get(timeout=0.5)
                latencies.append(time.monotonic() - started)
                assert conn.address in (a.address, b.address)
                await aecho(conn)
                cluster.put(conn)
            assert not stuck.done(), "the hanging dial ended before the other gets"
            assert max(latencies) < 0.5, latencies  # vs 1 s for the hanging dial
            survivor = await asyncio.wait_for(stuck, BOUND)
            assert survivor.address in (a.address, b.address)  # it moved on
            cluster.put(survivor)
            hung = server_stats(cluster, text(hanging))
            assert hung.state == "down"
            assert hung.last_error is not None
            assert "imeout" in hung.last_error or "timed out" in hung.last_error
            assert_cluster_whole(cluster)


@aio_test
async def test_a_get_is_bounded_by_its_timeout_plus_one_dial_timeout_when_every_server_hangs() -> (
    None
):
    with (
        hanging_address("127.0.0.1") as first,
        hanging_address("127.0.0.2") as second,
        hanging_address("127.0.0.3") as third,
    ):
        async with gocp.aio.cluster([first, second, third], size=1, dial_timeout=0.5) as cluster:
            started = time.monotonic()
            with pytest.raises(gocp.ClusterUnavailable) as info:
                await cluster.get(timeout=0.25)
            elapsed = time.monotonic() - started
            assert 0.5 - EARLY <= elapsed < 0.25 + 0.5 + 1.0  # the first dial ran its dial_timeout
            assert len(info.value.reasons) == 3
            assert all("timed out" in why for why in info.value.reasons.values())
            assert_cluster_whole(cluster)


@aio_test
async def test_a_slow_client_dial_never_slows_gets_to_other_servers() -> None:
    dialer = AioDialer()
    gate = dialer.gate("slow")
    async with gocp.aio.cluster(["slow", "fast"], size=2, dial=dialer.dial) as cluster:
        slow = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: dialer.dialling["slow"] == 1, "the slow dial began")
        assert set(await atake(cluster, 10)) == {"fast"}  # its turns pass on to `fast`
        assert not slow.done()
        gate.set()
        client = await slow
        assert client.address == "slow"
        cluster.put(client)
        assert dialer.dials["slow"] == 1  # nobody else dialled it meanwhile


# -- cancellation never loses a slot ------------------------------------------------------


@aio_test
async def test_a_get_cancelled_while_waiting_leaves_nothing_behind() -> None:
    dialer = AioDialer()
    async with gocp.aio.cluster(["a", "b"], size=1, dial=dialer.dial) as cluster:
        held = [await cluster.get(timeout=BOUND) for _ in range(2)]
        getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: cluster.stats().waiting == 1, "the get waits")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert cluster.stats().waiting == 0
        for client in held:
            cluster.put(client)
        assert_cluster_whole(cluster)
        assert Counter(await atake(cluster, 4)) == {"a": 2, "b": 2}


@pytest.mark.parametrize("order", ["put, then cancel", "cancel, then put"])
@aio_test
async def test_a_get_woken_and_cancelled_in_the_same_iteration_takes_nothing(order: str) -> None:
    dialer = AioDialer()
    async with gocp.aio.cluster(["a"], size=1, dial=dialer.dial) as cluster:
        held = await cluster.get(timeout=BOUND)
        getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: cluster.stats().waiting == 1, "the get waits")

        def both() -> None:  # one callback: the getter cannot resume in between
            if order == "put, then cancel":
                cluster.put(held)
                getter.cancel()
            else:
                getter.cancel()
                cluster.put(held)

        asyncio.get_running_loop().call_soon(both)
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert_cluster_whole(cluster)
        assert await cluster.get(timeout=0) is held
        cluster.put(held)


@pytest.mark.parametrize("rated", [False, True], ids=["unrated", "rated"])
@aio_test
async def test_a_get_cancelled_during_its_dial_leaves_the_server_whole(
    rated: bool, clock: FakeClock
) -> None:
    """Cancelled while its dial hangs: the member goes back, the server is not marked
    down (the dial did not fail), its token is given back (it lent nothing), and the
    next get dials it at once."""
    dialer = AioDialer()
    gate = dialer.gate("a")
    rate: dict[str, Any] = {"max_rps": 1, "burst": 2} if rated else {}
    async with gocp.aio.cluster(
        ["a"], size=2, dial=dialer.dial, clock=clock, **rate, **RETRY
    ) as cluster:
        getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: dialer.dialling["a"] == 1, "the dial began")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert dialer.dialling["a"] == 0  # the dial hook was cancelled with it
        assert_cluster_whole(cluster)
        stats = server_stats(cluster, "a")
        assert (stats.state, stats.pool.dial_failures, stats.pool.connected) == ("up", 0, 0)
        if rated:
            assert stats.tokens == 2.0, "the cancelled get kept its token"
        gate.set()
        client = await cluster.get(timeout=0)
        assert dialer.dials["a"] == 2
        cluster.put(client)


@aio_test
async def test_a_get_cancelled_during_failover_leaves_every_server_whole(
    clock: FakeClock,
) -> None:
    """The get's dial to `a` fails (a is down now), it moves on to `b`, whose dial hangs:
    cancelled there, both pools are whole, `b` is not marked down, and `c` serves."""
    dialer = AioDialer()
    dialer.down.add("a")
    gate = dialer.gate("b")
    async with gocp.aio.cluster(
        ["a", "b", "c"], size=1, dial=dialer.dial, clock=clock, **RETRY
    ) as cluster:
        getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: dialer.dialling["b"] == 1, "failed over to b: its dial hangs")
        assert server_stats(cluster, "a").state == "down"
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert_cluster_whole(cluster)
        assert server_stats(cluster, "b").state == "up"
        gate.set()
        client = await cluster.get(timeout=0)  # b's turn: it dials at once
        assert client.address == "b"
        cluster.put(client)
        assert Counter(await atake(cluster, 4)) == {"b": 2, "c": 2}  # a's turn passes to b


@aio_test
async def test_a_socket_get_cancelled_during_a_hanging_connect_leaves_the_pool_whole(
    echo_server: EchoServer,
) -> None:
    with hanging_address("127.0.0.3") as hanging:
        addresses = [text(hanging), echo_server.address_text]
        async with gocp.aio.cluster(addresses, size=1, dial_timeout=BOUND) as cluster:
            getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
            await until(lambda: server_stats(cluster, text(hanging)).pool.dials == 1)
            await iterations(3)
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            assert_cluster_whole(cluster)
            stats = server_stats(cluster, text(hanging))
            assert (stats.pool.connected, stats.pool.dial_failures, stats.state) == (0, 0, "up")
            conn = await cluster.get(timeout=BOUND)  # the hanging server's turn was taken
            assert conn.address == echo_server.address
            await aecho(conn)
            cluster.put(conn)


@aio_test
async def test_a_socket_get_cancelled_at_any_point_of_its_dial_leaks_no_socket(
    echo_server: EchoServer,
) -> None:
    """A get whose member dials (a real, fast connect) cancelled after 0, 1, 2... loop
    iterations: whatever the dial had made is closed (no socket left for the garbage
    collector to warn about, none open at the server), and the pool is whole."""
    async with gocp.aio.cluster([echo_server.address_text], size=1) as cluster:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for count in range(24):
                getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
                await iterations(count)
                getter.cancel()
                (result,) = await settle(getter)
                if not isinstance(result, BaseException):
                    cluster.put(result, broken=True)  # whatever it holds is closed
                gc.collect()  # a socket nobody closed warns when collected
                assert_cluster_whole(cluster)
                await until(
                    lambda: echo_server.active == 0,
                    f"cancelled after {count} loop iterations, the server still sees a "
                    "connection: a socket the dial made was never closed",
                    timeout=1.0,
                )
            unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == [], f"sockets a cancelled dial never closed: {unclosed}"
        assert await atake(cluster, 2, io=True) == [echo_server.address] * 2


@pytest.mark.parametrize("rated", [False, True], ids=["unrated", "rated"])
@pytest.mark.parametrize("scenario", ["failover", "waiting"])
@aio_test
async def test_a_get_cancelled_after_any_number_of_loop_iterations_loses_nothing(
    scenario: str, rated: bool
) -> None:
    """Every await point of a get: ``failover``, its dial to `a` (which fails, yielding
    first) and its dial to `b`; ``waiting``, its wait for the member of `b` a task puts
    back a few iterations later. The get is cancelled after 0, 1, 2... loop iterations
    until one ends on its own; after each, every server's pool is whole, nobody is counted
    waiting, every token not spent on a lend is back, and the cluster serves the next
    get."""
    reached: set[str] = set()
    count = 0
    while True:
        assert count < 200, "the get never finished on its own"
        clock = FakeClock()
        dialer = AioDialer(turns=2)
        rate: dict[str, Any] = {"max_rps": 1, "burst": 4} if rated else {}
        addresses = ["a", "b"] if scenario == "failover" else ["b"]
        dialer.down.add("a")
        cluster = gocp.aio.cluster(
            addresses, size=1, dial=dialer.dial, close=dialer.close, clock=clock, **rate, **RETRY
        )
        putter: asyncio.Task[None] | None = None
        served: Counter[Any] = Counter()  # gets served by each server (a token each)
        try:
            if scenario == "waiting":
                held = await cluster.get(timeout=BOUND)
                served[held.address] += 1

                async def put_back(held: Any = held) -> None:
                    await iterations(3)
                    cluster.put(held)  # noqa: B023 - this run's cluster

                putter = asyncio.ensure_future(put_back())
            getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
            await iterations(count)
            cancelled = not getter.done()
            if cancelled:
                if cluster.stats().waiting:
                    reached.add("waiting")
                if dialer.dialling["a"]:
                    reached.add("dialling a")
                if dialer.dialling["b"]:
                    reached.add("dialling b")
                getter.cancel()
            (result,) = await settle(getter)
            if putter is not None:
                await putter
            if isinstance(result, Client):
                served[result.address] += 1
                cluster.put(result)
            else:
                assert isinstance(result, asyncio.CancelledError), result
            assert_cluster_whole(cluster)
            if rated:
                for address, server in cluster.stats().servers.items():
                    spent = served[address]
                    assert server.tokens == 4.0 - spent, (
                        f"{address} has {server.tokens} tokens after serving {spent} gets"
                    )
            client = await cluster.get(timeout=0)
            assert client.address == "b"
            cluster.put(client)
        except AssertionError as exc:
            raise AssertionError(f"get cancelled after {count} loop iterations: {exc}") from exc
        finally:
            if putter is not None and not putter.done():
                putter.cancel()
                await settle(putter)
            await cluster.close()
        if not cancelled:
            break
        count += 1
    expected = {"dialling a", "dialling b"} if scenario == "failover" else {"waiting"}
    assert reached >= expected, reached


@aio_test
async def test_asyncio_timeout_around_get_behaves_like_its_own_timeout(clock: FakeClock) -> None:
    """Busy servers and a rate limit, a get bounded by its own timeout or by
    ``asyncio.timeout()``: a ``TimeoutError`` either way, nobody left waiting, the same
    state after."""
    dialer = AioDialer()
    states = []
    for bound in ("own", "asyncio.timeout"):
        async with gocp.aio.cluster(
            ["a", "b"], size=1, dial=dialer.dial, max_rps=1, burst=3, clock=clock
        ) as cluster:
            held = [await cluster.get(timeout=BOUND) for _ in range(2)]
            started = time.monotonic()
            with pytest.raises(TimeoutError):  # every server busy
                await bounded(bound, cluster.get(timeout=0.05 if bound == "own" else None))
            assert 0.05 - EARLY <= time.monotonic() - started < 1.0
            for client in held:
                cluster.put(client)
            await atake(cluster, 4)  # spends every token
            with pytest.raises(TimeoutError):  # every server rate limited
                await bounded(bound, cluster.get(timeout=0.05 if bound == "own" else None))
            with pytest.raises(TimeoutError):  # the same for connection()
                await bounded(
                    bound, enter(cluster.connection(timeout=0.05 if bound == "own" else None))
                )
            assert_cluster_whole(cluster)
            stats = cluster.stats()
            states.append(
                (stats.waiting, stats.total.lends, [s.tokens for s in stats.servers.values()])
            )
    assert states[0] == states[1] == (0, 6, [0.0, 0.0])


async def enter(lend: gocp.aio.AioLend[Any]) -> None:
    """Enter and leave an ``async with connection()`` block that does nothing."""
    async with lend:
        pass


# -- closing -------------------------------------------------------------------------------


@aio_test
async def test_close_wakes_waiting_gets_with_pool_closed_and_leaves_no_task_pending(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    before = other_tasks()
    cluster = gocp.aio.cluster(
        ["a", "b"],
        size=1,
        dial=dialer.dial,
        close=dialer.close,
        idle_timeout=100.0,  # each server's pool has an upkeep task
        clock=clock,
    )
    held = [await cluster.get(timeout=BOUND) for _ in range(2)]
    assert other_tasks() - before, "the servers' upkeep runs as tasks"
    waiters = [asyncio.ensure_future(cluster.get()) for _ in range(3)]
    await until(lambda: cluster.stats().waiting == 3, "three gets wait")
    await cluster.close()
    for waiter in waiters:
        with pytest.raises(gocp.PoolClosed):
            await asyncio.wait_for(waiter, 1.0)
    assert other_tasks() - before == set()
    for client in held:
        cluster.put(client)
    await until(lambda: not dialer.live(), "lent clients closed when put back")
    await until(lambda: other_tasks() - before == set(), "their close hooks ended")
    assert cluster.stats().waiting == 0


@aio_test
async def test_a_get_dialling_when_the_cluster_closes_ends_and_leaks_nothing() -> None:
    dialer = AioDialer()
    gate = dialer.gate("a")
    before = other_tasks()
    cluster = gocp.aio.cluster(["a"], size=1, dial=dialer.dial, close=dialer.close)
    getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
    await until(lambda: dialer.dialling["a"] == 1, "the dial began")
    await cluster.close()
    gate.set()
    (outcome,) = await settle(getter)
    if isinstance(outcome, Client):  # its dial won the race with the close
        cluster.put(outcome)
    else:
        assert isinstance(outcome, gocp.PoolClosed), outcome
    await until(lambda: not dialer.live(), "every client closed")
    assert other_tasks() - before == set()


@aio_test
async def test_close_awaits_the_close_hooks_of_a_removed_servers_members() -> None:
    """A removed server's lent client is closed when put back (an async close hook, run
    as a task): ``await cluster.close()`` afterwards must wait for it (nothing pending)."""
    dialer = AioDialer(turns=3)
    before = other_tasks()
    cluster = gocp.aio.cluster(["a", "b"], size=1, dial=dialer.dial, close=dialer.close)
    held = await cluster.get(timeout=BOUND)
    assert held.address == "a"
    await cluster.remove("a")
    cluster.put(held)
    await cluster.close()
    assert other_tasks() - before == set(), "a close hook still runs after close()"
    assert held.closed
    assert dialer.live() == []


@shells_test
async def test_a_server_removed_while_a_get_dials_it_is_forgotten_when_the_dial_fails(
    shell: Shell,
) -> None:
    """A get dials `a` when `a` is removed; the dial then fails and the get moves on to
    `b`. The member went back to `a`'s (closed) pool without a ``put``: `a`, with nothing
    lent, must still be forgotten (out of ``stats().servers``, its counters in the
    totals), as after a put."""
    dialer: Any = Dialer() if shell.threads else AioDialer()
    gate = dialer.gate("a")
    cluster = shell.cluster(["a", "b"], size=1, dial=dialer.dial, close=dialer.close)
    try:
        getter = shell.start_get(cluster, timeout=BOUND)
        if shell.threads:
            await until(dialer.entered["a"].is_set, "the dial to `a` began")
        else:
            await until(lambda: dialer.dialling["a"] == 1, "the dial to `a` began")
        await shell.remove(cluster, "a")
        dialer.down.add("a")
        gate.set()  # the dial fails: the get moves on to `b`
        client = await asyncio.wait_for(getter, BOUND)
        assert client.address == "b"
        cluster.put(client)
        stats = cluster.stats()
        assert list(stats.servers) == ["b"], f"`a` was never forgotten: {stats.servers['a']}"
        assert stats.total.dial_failures == 1
    finally:
        await shell.close(cluster)


@aio_test
async def test_a_server_removed_while_a_get_dials_it_is_forgotten_when_the_get_is_cancelled() -> (
    None
):
    dialer = AioDialer()
    gate = dialer.gate("a")
    async with gocp.aio.cluster(["a", "b"], size=1, dial=dialer.dial) as cluster:
        getter = asyncio.ensure_future(cluster.get(timeout=BOUND))
        await until(lambda: dialer.dialling["a"] == 1, "the dial to `a` began")
        await cluster.remove("a")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        gate.set()
        assert list(cluster.stats().servers) == ["b"], "`a` was never forgotten"
        assert_cluster_whole(cluster)


@aio_test
async def test_a_remove_cancelled_while_its_pool_closes_still_forgets_the_server() -> None:
    dialer = AioDialer()
    dialer.close_gate = gate = asyncio.Event()
    async with gocp.aio.cluster(
        ["a", "b"], size=1, dial=dialer.dial, close=dialer.close
    ) as cluster:
        client = await cluster.get(timeout=BOUND)
        assert client.address == "a"
        cluster.put(client)
        remover = asyncio.ensure_future(cluster.remove("a"))
        await until(lambda: dialer.closing == 1, "the remove awaits a's close hook")
        remover.cancel()
        with pytest.raises(asyncio.CancelledError):
            await remover
        assert cluster.servers == ["b"]
        gate.set()
        await iterations(5)
        gc.collect()  # a close hook cancelled before it ran warns when collected: here
        await until(lambda: list(cluster.stats().servers) == ["b"], "`a` forgotten", timeout=1.0)
        await until(lambda: client.closed, "a's idle client closed", timeout=1.0)


@aio_test
async def test_a_cluster_dropped_without_close_is_collected_and_its_tasks_end(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    before = other_tasks()
    cluster = gocp.aio.cluster(
        ["a"], size=1, dial=dialer.dial, close=dialer.plain_close, idle_timeout=100.0, clock=clock
    )
    client = await cluster.get(timeout=BOUND)
    cluster.put(client)
    assert other_tasks() - before, "the upkeep runs as a task"
    ref = weakref.ref(cluster)
    del cluster
    gc.collect()
    assert ref() is None, "something keeps the cluster alive"
    await until(
        lambda: not other_tasks() - before, "the tasks of a dropped cluster end", timeout=2.0
    )
    await until(lambda: client.closed, "what a dropped cluster held is closed", timeout=1.0)


@aio_test
async def test_async_with_closes_the_cluster(echo_server: EchoServer) -> None:
    async with (
        gocp.aio.cluster([echo_server.address_text], size=1) as cluster,
        cluster.connection() as conn,
    ):
        await aecho(conn)
    assert cluster.closed
    await until(lambda: echo_server.active == 0)


# -- tasks use the cluster while servers come and go ------------------------------------------


@aio_test
async def test_servers_come_and_go_while_tasks_use_the_cluster(servers: Servers) -> None:
    """Four tasks get, echo and put; another cancels gets at random points; meanwhile a
    third server is added and removed thirty times. No member is lent twice at once,
    nothing fails, every member of the removed server is closed, and the end state adds
    up."""
    a, b, c = servers
    rng = random.Random(11)
    async with gocp.aio.cluster([a.address_text, b.address_text], size=2) as cluster:
        stop = asyncio.Event()
        seen: Counter[Any] = Counter()
        held: set[int] = set()

        async def user() -> None:
            while not stop.is_set():
                conn = await cluster.get(timeout=BOUND)
                assert id(conn) not in held, f"{conn!r} lent twice at once"
                held.add(id(conn))
                await aecho(conn)
                held.discard(id(conn))
                seen[conn.address] += 1
                cluster.put(conn)

        async def canceller() -> None:
            while not stop.is_set():
                victim = asyncio.ensure_future(cluster.get(timeout=BOUND))
                await asyncio.sleep(0)
                for _ in range(rng.randrange(6)):
                    await asyncio.sleep(0)
                victim.cancel()
                (got,) = await settle(victim)
                if not isinstance(got, BaseException):
                    cluster.put(got)

        tasks = [asyncio.ensure_future(user()) for _ in range(4)]
        tasks.append(asyncio.ensure_future(canceller()))
        try:
            for _ in range(30):
                cluster.add(c.address_text)
                count = sum(seen.values())
                await until(lambda: sum(seen.values()) >= count + 3)  # noqa: B023 - at once
                await cluster.remove(c.address_text)
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [result for result in results if result is not None] == []
        assert set(seen) <= {a.address, b.address, c.address}
        assert seen[a.address] > 0
        assert seen[b.address] > 0
        await until(lambda: c.active == 0, "every member of the removed server closed")
        assert list(cluster.stats().servers) == [a.address_text, b.address_text]
        assert_cluster_whole(cluster)
