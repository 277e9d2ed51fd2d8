"""Keyed pools for asyncio (``gocp.aio.keyed``, DESIGN.md sections 4 and 6).

The contract both shells share is written once (``aioclusterkit.shells_test``) and runs
against the threaded ``gocp.keyed`` (its blocking calls in threads) and the asyncio
``gocp.aio.keyed`` under the default loop and uvloop. Then what is the asyncio shell's
own: coroutine hooks, latency proven with events, and cancellation of a ``get`` at each
of its await points (queued for room, queued in its key, during its dial, during the
eviction that made room, after any number of loop iterations), after which the keyed
pool is whole: every key's pool back to full size, nobody counted waiting, and every key
evictable (the sweep forgets them all once ``key_idle_timeout`` has passed).
``asyncio.timeout()`` around ``get`` leaves what ``get``'s own timeout leaves, and
``await close()`` wakes waiting gets and leaves no task pending.

Socket keys run against real loopback servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3;
key expiry and LRU order on a ``FakeClock`` (advancing it wakes the sweep task). No test
sleeps to wait for something. Each test runs under ``aiokit.run`` (a deadline, no task
left pending) and conftest's ``no_leaks`` (no thread, no descriptor left).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import weakref
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from aioclusterkit import (  # noqa: F401 - collect_after_each_test is an autouse fixture
    AioDialer,
    Shell,
    assert_keyed_whole,
    assert_pool_whole,
    collect_after_each_test,
    shells_test,
)
from aiokit import (
    BOUND,
    EARLY,
    HangingListener,
    aio_test,
    cancel_after,
    iterations,
    other_tasks,
    round_trip,
    settle,
    until,
)
from clusterkit import Client, Dialer, refused_address

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


def key_stats(keyed: Any, key: str) -> gocp.PoolStats:
    stats: gocp.PoolStats = keyed.stats().keys[key]
    return stats


async def aecho(conn: gocp.aio.AioConn, payload: bytes = b"ping") -> None:
    assert await round_trip(conn, payload) == payload


async def use_then_fail(lend: gocp.aio.AioLend[Any]) -> None:
    """An ``async with`` block that does I/O on its member and then raises."""
    async with lend as conn:
        await aecho(conn)
        raise RuntimeError("boom")


async def enter(lend: gocp.aio.AioLend[Any]) -> None:
    """Enter and leave an ``async with connection()`` block that does nothing."""
    async with lend:
        pass


async def bounded(bound: str, call: Coroutine[Any, Any, Any]) -> Any:
    """Await ``call`` as it is (``"own"``: its own timeout) or within ``asyncio.timeout``
    of 0.05 s."""
    if bound == "own":
        return await call
    async with asyncio.timeout(0.05):
        return await call


# == the contract both shells share ==========================================================

# -- a pool per key ------------------------------------------------------------------


@shells_test
async def test_a_pool_per_key_is_made_on_first_use_with_the_shared_settings(
    shell: Shell, servers: Servers
) -> None:
    one, two, _ = servers
    keyed = shell.keyed(size=2)
    try:
        assert keyed.keys == []
        assert keyed.stats().keys_made == 0
        first = await shell.get(keyed, one.address_text)
        assert keyed.keys == [one.address_text]
        assert first.address == one.address
        assert one.accepted == 0  # a socket member dials at its first I/O
        second = await shell.get(keyed, two.address_text)
        assert keyed.keys == [one.address_text, two.address_text]
        assert second.address == two.address
        await shell.echo(first)
        await shell.echo(second)
        stats = keyed.stats()
        assert stats.keys_made == 2
        for key in (one.address_text, two.address_text):
            assert stats.keys[key].size == 2
            assert stats.keys[key].in_use == 1
            assert stats.keys[key].address == key
        keyed.put(first)
        keyed.put(second)
        assert one.accepted == two.accepted == 1
    finally:
        await shell.close(keyed)


@shells_test
async def test_text_and_tuple_addresses_name_the_same_key(
    shell: Shell, echo_server: EchoServer
) -> None:
    host, port = echo_server.address
    keyed = shell.keyed(size=1)
    try:
        conn = await shell.get(keyed, f"{host}:{port}")
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(keyed, (host, port), timeout=0)  # the same key: its member is lent
        assert keyed.keys == [echo_server.address_text]
        keyed.put(conn)
        again = await shell.get(keyed, (host, port), timeout=0)
        assert again is conn
        keyed.put(again)
        assert keyed.stats().keys_made == 1
    finally:
        await shell.close(keyed)


@shells_test
async def test_size_is_per_key(shell: Shell, servers: Servers) -> None:
    keyed = shell.keyed(size=2)
    try:
        held = []
        for server in servers:
            held += [await shell.get(keyed, server.address_text, timeout=0) for _ in range(2)]
            with pytest.raises(gocp.PoolTimeout):
                await shell.get(keyed, server.address_text, timeout=0)
        assert len({id(conn) for conn in held}) == 6
        for conn in held:
            await shell.echo(conn)
            keyed.put(conn)
        assert keyed.stats().total.idle == 6
    finally:
        await shell.close(keyed)


@shells_test
async def test_get_waits_up_to_its_timeout_within_its_key(
    shell: Shell, echo_server: EchoServer
) -> None:
    key = echo_server.address_text
    keyed = shell.keyed(size=1)
    try:
        conn = await shell.get(keyed, key)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(keyed, key, timeout=0.2)
        assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + BOUND
        waiter = shell.start_get(keyed, key, timeout=BOUND)
        await until(lambda: key_stats(keyed, key).waiting == 1, "the get queued in its key")
        keyed.put(conn)
        assert await waiter is conn  # handed to the waiter
        keyed.put(conn)
        assert key_stats(keyed, key).timeouts == 1
    finally:
        await shell.close(keyed)


# -- put knows its key -------------------------------------------------------------------


@shells_test
async def test_put_returns_each_member_to_its_own_key(shell: Shell, servers: Servers) -> None:
    keyed = shell.keyed(size=2)
    try:
        held = {
            server.address_text: await shell.get(keyed, server.address_text) for server in servers
        }
        for key, conn in reversed(list(held.items())):
            await shell.echo(conn)
            keyed.put(conn)
            stats = keyed.stats().keys[key]
            assert (stats.idle, stats.in_use) == (2, 0)
        assert keyed.stats().total.in_use == 0
    finally:
        await shell.close(keyed)


@shells_test
async def test_put_broken_destroys_the_connection(shell: Shell, echo_server: EchoServer) -> None:
    key = echo_server.address_text
    keyed = shell.keyed(size=1)
    try:
        conn = await shell.get(keyed, key)
        await shell.echo(conn)
        await until(lambda: echo_server.active == 1)
        keyed.put(conn, broken=True)
        await until(lambda: echo_server.active == 0, "the broken connection closed")
        stats = key_stats(keyed, key)
        assert stats.closed_broken == 1
        assert (stats.idle, stats.connected) == (1, 0)
        conn = await shell.get(keyed, key)
        await shell.echo(conn)  # the member redials
        keyed.put(conn)
        assert echo_server.accepted == 2
    finally:
        await shell.close(keyed)


@shells_test
async def test_a_second_put_is_refused_and_changes_nothing(
    shell: Shell, echo_server: EchoServer
) -> None:
    key = echo_server.address_text
    keyed = shell.keyed(size=2)
    try:
        conn = await shell.get(keyed, key)
        other = await shell.get(keyed, key)
        keyed.put(conn)
        before = keyed.stats()
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(conn)
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(conn, broken=True)
        assert keyed.stats() == before
        keyed.put(other)
        # Each member is lent once afterwards: the pool did not keep a duplicate.
        both = [await shell.get(keyed, key, timeout=0) for _ in range(2)]
        assert len({id(member) for member in both}) == 2
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(keyed, key, timeout=0)
        for member in both:
            keyed.put(member)
    finally:
        await shell.close(keyed)


@shells_test
async def test_put_of_a_foreign_member_is_refused(shell: Shell, echo_server: EchoServer) -> None:
    keyed = shell.keyed(size=1)
    single = shell.new(echo_server.address, size=1)
    try:
        mine = await shell.get(keyed, echo_server.address_text)
        stranger = await shell.get(single)  # same address, another pool
        before = keyed.stats()
        with pytest.raises(ValueError, match="another pool"):
            keyed.put(stranger)
        with pytest.raises(TypeError):
            keyed.put(object())
        with pytest.raises(TypeError, match="broken"):
            keyed.put(mine, broken=1)
        assert keyed.stats() == before
        single.put(stranger)
        keyed.put(mine)
    finally:
        await shell.close(single)
        await shell.close(keyed)


@shells_test
async def test_client_keys_refuse_a_double_put_and_a_stranger(shell: Shell) -> None:
    dialer = Dialer()
    keyed = shell.keyed(size=1, dial=dialer.dial, close=dialer.close)
    try:
        client = await shell.get(keyed, "a")
        keyed.put(client)
        before = keyed.stats()
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(client)
        with pytest.raises(ValueError, match="not lent"):
            keyed.put(Client("a", 99))
        assert keyed.stats() == before
        assert await shell.get(keyed, "a", timeout=0) is client
        keyed.put(client)
    finally:
        await shell.close(keyed)


@shells_test
async def test_dial_receives_the_key_and_any_hashable_is_a_key(shell: Shell) -> None:
    dialer = Dialer()
    keyed = shell.keyed(size=1, dial=dialer.dial, close=dialer.close)
    try:
        for key in ("db-1", ("shard", 7), 42):
            client = await shell.get(keyed, key)
            assert client.address == key
            keyed.put(client)
        assert keyed.keys == ["db-1", "('shard', 7)", "42"]
        assert set(dialer.dials) == {"db-1", ("shard", 7), 42}
        client = await shell.get(keyed, "db-1")
        keyed.put(client, broken=True)  # destroyed: its close hook ran
        assert client.closed
        with pytest.raises(TypeError, match="key: expected something hashable"):
            await shell.get(keyed, ["not", "hashable"])
    finally:
        await shell.close(keyed)


# -- idle keys are forgotten, busy keys never -------------------------------------------


@shells_test
async def test_idle_keys_are_forgotten_after_key_idle_timeout_never_one_with_a_member_lent(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    early, idle, lent = (server.address_text for server in servers)
    keyed = shell.keyed(size=1, key_idle_timeout=10.0, clock=clock)
    try:
        conn = await shell.get(keyed, early)
        await shell.echo(conn)  # used at 1000
        keyed.put(conn)
        clock.advance(1.0)
        conn = await shell.get(keyed, idle)
        await shell.echo(conn)  # used at 1001
        keyed.put(conn)
        held = await shell.get(keyed, lent)  # lent at 1001, kept
        await shell.echo(held)
        await until(lambda: sum(server.active for server in servers) == 3)
        clock.advance(9.0)  # 1010: `early` is exactly key_idle_timeout old: the sweep wakes
        await until(lambda: early not in keyed.keys, "the idle key forgotten")
        # The same sweep saw the others: `idle` is 9 s old, `lent` is lent.
        assert keyed.keys == [idle, lent]
        await until(lambda: servers[0].active == 0, "its pool closed")
        clock.advance(1.0)  # 1011: `idle` expires; `lent` is as old but lent
        await until(lambda: idle not in keyed.keys)
        assert keyed.keys == [lent]
        conn = await shell.get(keyed, early)  # made anew at 1011: it shows the next sweep
        await shell.echo(conn)
        keyed.put(conn)
        clock.advance(100.0)
        await until(lambda: early not in keyed.keys)
        assert keyed.keys == [lent]  # that sweep left the lent key alone
        await shell.echo(held)  # never closed under its holder
        keyed.put(held)  # its last use: 1111
        clock.advance(10.0)
        await until(lambda: keyed.keys == [], "the key put back forgotten")
        stats = keyed.stats()
        assert (stats.keys_made, stats.keys_expired, stats.keys_evicted) == (4, 4, 0)
        await until(lambda: sum(server.active for server in servers) == 0)
    finally:
        await shell.close(keyed)


@shells_test
async def test_keys_live_forever_without_key_idle_timeout(
    shell: Shell, echo_server: EchoServer, clock: FakeClock
) -> None:
    keyed = shell.keyed(size=1, key_idle_timeout=None, clock=clock)
    try:
        keyed.put(await shell.get(keyed, echo_server.address_text))
        clock.advance(1e6)
        await iterations(10)
        assert keyed.keys == [echo_server.address_text]
        assert keyed.stats().keys_expired == 0
    finally:
        await shell.close(keyed)


# -- max_keys: evict the least recently used key with nothing lent --------------------------


@shells_test
async def test_max_keys_evicts_the_least_recently_used_idle_key(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    one, two, three = (server.address_text for server in servers)
    keyed = shell.keyed(size=1, max_keys=2, key_idle_timeout=None, clock=clock)
    try:
        for key in (one, two, one, three):  # `one` is used again: `two` is the LRU key
            conn = await shell.get(keyed, key)
            await shell.echo(conn)
            keyed.put(conn)
            clock.advance(1.0)
        assert keyed.keys == [one, three]
        stats = keyed.stats()
        assert (stats.keys_made, stats.keys_evicted) == (3, 1)
        await until(lambda: servers[1].active == 0, "the evicted key's pool closed")
        assert servers[0].active == 1  # the others keep their connections
    finally:
        await shell.close(keyed)


@shells_test
async def test_max_keys_never_evicts_a_key_with_a_member_lent(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    one, two, three = (server.address_text for server in servers)
    keyed = shell.keyed(size=1, max_keys=2, key_idle_timeout=None, clock=clock)
    try:
        held = await shell.get(keyed, one)  # the least recently used key, but lent
        await shell.echo(held)
        clock.advance(1.0)
        keyed.put(await shell.get(keyed, two))
        clock.advance(1.0)
        keyed.put(await shell.get(keyed, three))  # evicts `two`, not `one`
        assert keyed.keys == [one, three]
        await shell.echo(held)
        keyed.put(held)
    finally:
        await shell.close(keyed)


@shells_test
async def test_a_new_key_waits_for_room_then_times_out_and_timeout_zero_never_waits(
    shell: Shell, servers: Servers
) -> None:
    one, two, _ = (server.address_text for server in servers)
    keyed = shell.keyed(size=1, max_keys=1)
    try:
        held = await shell.get(keyed, one)
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout, match="max_keys=1") as info:
            await shell.get(keyed, two, timeout=0.2)
        assert 0.2 - EARLY <= time.monotonic() - started < 0.2 + BOUND
        assert info.value.timeout == 0.2
        started = time.monotonic()
        with pytest.raises(gocp.PoolTimeout):
            await shell.get(keyed, two, timeout=0)
        assert time.monotonic() - started < 1.0  # timeout=0 never waits
        assert keyed.keys == [one]
        assert keyed.stats().waiting_for_room == 0
        keyed.put(held)
    finally:
        await shell.close(keyed)


@shells_test
async def test_a_put_wakes_a_get_waiting_for_room_for_a_new_key(
    shell: Shell, servers: Servers
) -> None:
    one, two, _ = (server.address_text for server in servers)
    keyed = shell.keyed(size=1, max_keys=1)
    try:
        held = await shell.get(keyed, one)
        waiter = shell.start_get(keyed, two, timeout=BOUND)
        await until(lambda: keyed.stats().waiting_for_room == 1, "the get queued for room")
        assert not waiter.done()
        keyed.put(held)
        conn = await asyncio.wait_for(waiter, BOUND)
        assert conn.address == servers[1].address
        assert keyed.keys == [two]
        assert keyed.stats().keys_evicted == 1
        assert keyed.stats().waiting_for_room == 0
        keyed.put(conn)
    finally:
        await shell.close(keyed)


# -- stats ------------------------------------------------------------------------------


@shells_test
async def test_stats_per_key_and_totals_that_keep_forgotten_keys(
    shell: Shell, servers: Servers, clock: FakeClock
) -> None:
    one, two, _ = (server.address_text for server in servers)
    keyed = shell.keyed(size=2, key_idle_timeout=10.0, clock=clock)
    try:
        for _ in range(3):
            conn = await shell.get(keyed, one)
            await shell.echo(conn)
            keyed.put(conn)
        clock.advance(5.0)
        held = await shell.get(keyed, two)
        await shell.echo(held)
        keyed.put(await shell.get(keyed, two))
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
        await until(lambda: keyed.keys == [two])
        # Once its pool is closed and its counters kept (meanwhile: another test's).
        await until(lambda: keyed.stats().total.lends == 5, "the forgotten key's lends kept")
        after = keyed.stats()
        assert after.keys_expired == 1
        # The gauges cover open keys; the counters never go down.
        assert (after.total.size, after.total.in_use) == (2, 1)
        assert after.total.lends == 5
        assert after.total.dials >= total.dials
        assert "keys=1" in repr(keyed)
    finally:
        keyed.put(held)
        await shell.close(keyed)
    closed = keyed.stats()
    assert closed.closed
    assert closed.total.lends == 5
    assert "closed" in repr(keyed)


# -- closing and arguments ---------------------------------------------------------------


@shells_test
async def test_close_closes_every_key_and_members_lent_when_they_come_back(
    shell: Shell, servers: Servers
) -> None:
    one, two, _ = (server.address_text for server in servers)
    keyed = shell.keyed(size=2)
    idle = await shell.get(keyed, one)
    await shell.echo(idle)
    keyed.put(idle)
    lent = await shell.get(keyed, two)
    await shell.echo(lent)
    await shell.close(keyed)
    await shell.close(keyed)  # idempotent
    assert keyed.closed
    await until(lambda: servers[0].active == 0, "the idle member closed")
    await shell.echo(lent)  # never closed under its holder
    keyed.put(lent)
    await until(lambda: servers[1].active == 0, "the lent member closed when put back")
    for key in (one, "127.0.0.3:1"):
        with pytest.raises(gocp.PoolClosed):
            await shell.get(keyed, key)
    assert keyed.keys == []


@shells_test
async def test_close_wakes_gets_waiting_for_room_and_in_a_key_with_pool_closed(
    shell: Shell,
) -> None:
    dialer = Dialer()
    keyed = shell.keyed(size=1, max_keys=1, dial=dialer.dial, close=dialer.close)
    held = await shell.get(keyed, "a")
    for_room = shell.start_get(keyed, "b", timeout=BOUND)
    in_key = shell.start_get(keyed, "a", timeout=BOUND)
    await until(lambda: keyed.stats().waiting_for_room == 1, "a get queued for room")
    await until(lambda: key_stats(keyed, "a").waiting == 1, "a get queued in its key")
    started = time.monotonic()
    await shell.close(keyed)
    for waiter in (for_room, in_key):
        with pytest.raises(gocp.PoolClosed):
            await asyncio.wait_for(waiter, 2.0)
    assert time.monotonic() - started < 2.0
    keyed.put(held)
    assert held.closed  # lent when the pool closed: closed when put back


@shells_test
async def test_arguments_are_checked_at_the_call_that_received_them(shell: Shell) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        shell.keyed(max_keys=0)
    with pytest.raises(ValueError, match="key_idle_timeout"):
        shell.keyed(key_idle_timeout=0)
    with pytest.raises(ValueError, match="size"):
        shell.keyed(size=0)
    with pytest.raises(TypeError, match="nonsense"):
        shell.keyed(nonsense=1)
    with pytest.raises(TypeError, match="close"):
        shell.keyed(close=lambda conn: None)  # sockets close themselves
    with pytest.raises(TypeError, match="dial_timeout"):
        shell.keyed(dial=Dialer().dial, dial_timeout=1.0)  # a hook bounds its own I/O
    keyed = shell.keyed()
    try:
        with pytest.raises(ValueError, match="key:"):
            await shell.get(keyed, "no port")
        with pytest.raises(ValueError, match="timeout"):
            await shell.get(keyed, "127.0.0.1:1", timeout=-1)
        assert keyed.keys == []
    finally:
        await shell.close(keyed)


# == the asyncio shell's own =================================================================


@pytest.mark.parametrize("kind", ["async", "plain"])
@aio_test
async def test_coroutine_or_plain_hooks_make_check_and_close_each_keys_clients(
    kind: str, clock: FakeClock
) -> None:
    aio = AioDialer()
    plain = Dialer()
    dial = aio.dial if kind == "async" else plain.dial
    check = aio.check if kind == "async" else plain.check
    close = aio.close if kind == "async" else plain.close
    async with gocp.aio.keyed(
        size=1, dial=dial, check=check, close=close, check_interval=5.0, clock=clock
    ) as keyed:
        clients = {key: await keyed.get(key) for key in ("a", ("b", 2))}
        for key, client in clients.items():
            assert isinstance(client, Client)
            assert client.address == key
            keyed.put(client)
        clock.advance(5.0)  # every key's pool checks its idle client
        await until(lambda: all(client.checks >= 1 for client in clients.values()), "checked")
        clients["a"].closed = True  # it dies: its next check fails and it is replaced
        clock.advance(5.0)
        await until(lambda: key_stats(keyed, "a").closed_check == 1, "the dead client dropped")
        replaced = await keyed.get("a")
        assert replaced is not clients["a"]
        keyed.put(replaced, broken=True)  # destroyed: its close hook (awaited) runs
        await until(lambda: replaced.closed, "the broken client closed")
        assert key_stats(keyed, "('b', 2)").closed_check == 0
    made = aio.made if kind == "async" else plain.made
    assert all(client.closed for client in made)  # close awaited every close hook


@aio_test
async def test_connection_blocks_return_to_the_right_key_and_break_after_failed_io(
    servers: Servers,
) -> None:
    one, two, _ = (server.address_text for server in servers)
    async with gocp.aio.keyed(size=1) as keyed:
        async with keyed.connection(one, timeout=1) as conn:
            await aecho(conn)
            assert key_stats(keyed, one).in_use == 1
        assert key_stats(keyed, one).in_use == 0
        member = await keyed.get(two)
        async with member:
            await aecho(member)
        assert key_stats(keyed, two).in_use == 0
        assert await keyed.get(two, timeout=0) is member
        keyed.put(member)
        async with keyed.connection(one, connect=True) as conn:
            assert conn.connected
        async with keyed.connection(one, fresh=True) as conn:
            await aecho(conn)
        assert key_stats(keyed, one).closed_fresh == 1
        # A block that raised after I/O leaves the member broken (its stream is unknown).
        with pytest.raises(RuntimeError):
            await use_then_fail(keyed.connection(one))
        stats = key_stats(keyed, one)
        assert (stats.in_use, stats.closed_broken) == (0, 1)


@aio_test
async def test_connect_dials_in_get_and_a_refused_dial_raises_there(
    echo_server: EchoServer,
) -> None:
    with refused_address() as refused:
        async with gocp.aio.keyed(size=1) as keyed:
            conn = await keyed.get(echo_server.address_text, connect=True)
            assert conn.connected
            await until(lambda: echo_server.active == 1)
            keyed.put(conn)
            with pytest.raises(gocp.DialError) as info:
                await keyed.get(refused, connect=True, timeout=0.5)
            assert isinstance(info.value.__cause__, ConnectionRefusedError)
            stats = key_stats(keyed, f"{refused[0]}:{refused[1]}")
            assert (stats.idle, stats.in_use) == (1, 0)  # the member went back


@aio_test
async def test_members_of_the_other_shell_are_strangers(echo_server: EchoServer) -> None:
    key = echo_server.address_text
    with gocp.keyed(size=1) as threaded:
        async with gocp.aio.keyed(size=1) as keyed:
            mine = await keyed.get(key)
            theirs = threaded.get(key)
            before = keyed.stats()
            with pytest.raises(ValueError, match="another pool"):
                keyed.put(theirs)
            with pytest.raises((TypeError, ValueError)):
                threaded.put(mine)
            assert keyed.stats() == before
            threaded.put(theirs)
            keyed.put(mine)


# -- keys never block each other ------------------------------------------------------------


@aio_test
async def test_a_hanging_dial_to_one_key_never_delays_another(servers: Servers) -> None:
    """A blackholed server (SYNs dropped): one get hangs in its dial up to ``dial_timeout``;
    gets to other keys, known and new, all finish while it still hangs, each fast."""
    one, two, three = (server.address_text for server in servers)
    with HangingListener() as hanging:
        key = f"{hanging.address[0]}:{hanging.address[1]}"
        async with gocp.aio.keyed(size=1, dial_timeout=1.0) as keyed:
            keyed.put(await keyed.get(one, connect=True))  # a known key
            stuck = asyncio.ensure_future(keyed.get(key, connect=True, timeout=1.0))
            await until(lambda: key in keyed.keys and key_stats(keyed, key).dials == 1)
            latencies = []
            for index in range(20):
                target = (one, two, three)[index % 3]
                started = time.monotonic()
                conn = await keyed.get(target, connect=True, timeout=0.5)
                latencies.append(time.monotonic() - started)
                await aecho(conn)
                keyed.put(conn)
            assert not stuck.done(), "the hanging dial ended before the other gets"
            assert max(latencies) < 0.5, latencies  # vs the 1 s the hanging dial takes
            with pytest.raises(gocp.DialError):
                await stuck
            assert_pool_whole(key_stats(keyed, key))


@aio_test
async def test_a_slow_client_dial_to_one_key_never_delays_another() -> None:
    dialer = AioDialer()
    gate = dialer.gate("slow")
    async with gocp.aio.keyed(size=1, dial=dialer.dial) as keyed:
        keyed.put(await keyed.get("known"))
        slow = asyncio.ensure_future(keyed.get("slow"))
        await until(lambda: dialer.dialling["slow"] == 1, "the slow dial began")
        for key in ("known", "new", "known", "newer"):
            client = await keyed.get(key, timeout=1.0)
            assert client.address == key
            keyed.put(client)
        assert not slow.done()  # still dialling: nobody waited for it
        gate.set()
        client = await slow
        assert client.address == "slow"
        keyed.put(client)


@aio_test
async def test_a_blackholed_key_times_out_its_own_io_and_no_other_key(servers: Servers) -> None:
    one, two, three = servers
    with FaultProxy(two.address, host="127.0.0.2") as proxy:
        async with gocp.aio.keyed(size=1, io_timeout=1.0) as keyed:
            victim = await keyed.get(proxy.address_text)
            await aecho(victim)
            proxy.blackhole()  # everything sent either way is dropped
            stuck = asyncio.ensure_future(aecho(victim))
            for _ in range(10):
                for server in (one, three):
                    async with keyed.connection(server.address_text, timeout=1.0) as conn:
                        await aecho(conn)
            assert not stuck.done(), "the blackholed I/O ended before the others"
            with pytest.raises(gocp.IOTimeout):
                await stuck
            keyed.put(victim)  # it broke: it redials
            proxy.heal()
            async with keyed.connection(proxy.address_text) as conn:
                await aecho(conn)
            assert key_stats(keyed, proxy.address_text).broken == 1


@aio_test
async def test_a_get_waiting_for_room_is_woken_when_a_failed_get_frees_a_key() -> None:
    """A key is busy while a get is on its way into it. When that get fails (its dial
    failed) the key becomes evictable with no put: the get waiting for room is woken then,
    not at its timeout."""
    dialer = AioDialer()
    gate = dialer.gate("a")
    dialer.down.add("a")
    async with gocp.aio.keyed(size=1, max_keys=1, dial=dialer.dial) as keyed:
        failing = asyncio.ensure_future(keyed.get("a"))
        await until(lambda: dialer.dialling["a"] == 1, "the dial of `a` began: `a` is busy")
        waiting = asyncio.ensure_future(keyed.get("b", timeout=4.0))
        await until(lambda: keyed.stats().waiting_for_room == 1, "the get for `b` queued")
        gate.set()  # the dial fails: `a` has nothing lent, nothing on its way
        with pytest.raises(gocp.DialError):
            await failing
        started = time.monotonic()
        client = await asyncio.wait_for(waiting, 2.0)
        assert time.monotonic() - started < 2.0, "the get for `b` slept through `a` freeing"
        assert client.address == "b"
        keyed.put(client)


# -- lifecycle options apply per key -------------------------------------------------------


@aio_test
async def test_max_lifetime_and_min_idle_apply_to_each_key(clock: FakeClock) -> None:
    dialer = AioDialer()
    async with gocp.aio.keyed(
        size=2, dial=dialer.dial, close=dialer.close, max_lifetime=10.0, min_idle=2, clock=clock
    ) as keyed:
        first = {key: await keyed.get(key) for key in ("a", "b")}
        for client in first.values():
            keyed.put(client)
        # min_idle: each key's pool dials its second member in the background.
        await until(lambda: dialer.dials == {"a": 2, "b": 2}, "min_idle filled each key")
        made = list(dialer.made)
        clock.advance(10.0)  # past every lifetime (each is cut by up to 10%)
        await until(lambda: all(client.closed for client in made), "every client expired")
        await until(lambda: dialer.dials == {"a": 4, "b": 4}, "min_idle refilled each key")
        for key in ("a", "b"):
            client = await keyed.get(key)
            assert client not in made
            assert client.address == key
            keyed.put(client)
        assert keyed.stats().total.closed_lifetime == 4


# -- cancellation never loses a slot nor a key -------------------------------------------


@aio_test
async def test_a_get_cancelled_while_waiting_for_room_leaves_nothing_behind(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    async with gocp.aio.keyed(
        size=1, max_keys=1, dial=dialer.dial, key_idle_timeout=10.0, clock=clock
    ) as keyed:
        held = await keyed.get("a")
        getter = asyncio.ensure_future(keyed.get("b", timeout=BOUND))
        await until(lambda: keyed.stats().waiting_for_room == 1, "queued for room")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        stats = keyed.stats()
        assert (stats.waiting_for_room, stats.keys_made, stats.keys_evicted) == (0, 1, 0)
        assert keyed.keys == ["a"]
        keyed.put(held)
        # `a` is evictable: a new key takes its room at once.
        client = await keyed.get("c", timeout=0)
        assert keyed.keys == ["c"]
        keyed.put(client)
        await assert_keyed_whole(keyed, clock, 10.0)


@aio_test
async def test_a_get_cancelled_while_queued_in_its_key_leaves_the_key_evictable(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    async with gocp.aio.keyed(
        size=1, max_keys=1, dial=dialer.dial, key_idle_timeout=10.0, clock=clock
    ) as keyed:
        held = await keyed.get("a")
        getter = asyncio.ensure_future(keyed.get("a", timeout=BOUND))
        await until(lambda: key_stats(keyed, "a").waiting == 1, "queued in its key")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        keyed.put(held)
        stats = key_stats(keyed, "a")
        assert (stats.idle, stats.in_use, stats.waiting) == (1, 0, 0)  # not handed to it
        client = await keyed.get("b", timeout=0)  # `a` is evictable: nothing on its way in
        assert keyed.keys == ["b"]
        keyed.put(client)
        await assert_keyed_whole(keyed, clock, 10.0)


@pytest.mark.parametrize("what", ["client", "socket"])
@aio_test
async def test_a_get_cancelled_during_its_dial_leaves_the_key_evictable(
    what: str, clock: FakeClock
) -> None:
    dialer = AioDialer()
    with HangingListener() as hanging:
        if what == "client":
            keyed = gocp.aio.keyed(
                size=1, max_keys=1, dial=dialer.dial, key_idle_timeout=10.0, clock=clock
            )
            dialer.gate("a")
            key: Any = "a"
        else:
            keyed = gocp.aio.keyed(size=1, max_keys=1, key_idle_timeout=10.0, clock=clock)
            key = f"{hanging.address[0]}:{hanging.address[1]}"
        async with keyed:
            getter = asyncio.ensure_future(keyed.get(key, timeout=BOUND, connect=True))
            await until(lambda: key in keyed.keys and key_stats(keyed, key).dials == 1)
            await iterations(3)
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            stats = key_stats(keyed, key)
            assert (stats.idle, stats.in_use, stats.waiting, stats.connected) == (1, 0, 0, 0)
            assert dialer.dialling[key] == 0  # the dial hook was cancelled with it
            other = await keyed.get("127.0.0.1:1" if what == "socket" else "b", timeout=0)
            assert len(keyed.keys) == 1  # the cancelled key was evictable
            keyed.put(other)
            await assert_keyed_whole(keyed, clock, 10.0)


@aio_test
async def test_a_get_cancelled_while_its_eviction_closes_the_old_key_leaves_nothing_behind(
    clock: FakeClock,
) -> None:
    """A get for a new key evicts the LRU key and awaits the close of its pool (an async
    close hook): cancelled there, the new key must not stay counted as entered (else it
    can never be evicted nor expire), the evicted key's counters must be kept, and the
    evicted client must still be closed."""
    dialer = AioDialer()
    dialer.close_gate = gate = asyncio.Event()
    async with gocp.aio.keyed(
        size=1,
        max_keys=1,
        dial=dialer.dial,
        close=dialer.close,
        key_idle_timeout=10.0,
        clock=clock,
    ) as keyed:
        old = await keyed.get("a")
        keyed.put(old)
        getter = asyncio.ensure_future(keyed.get("b", timeout=BOUND))
        await until(lambda: dialer.closing == 1, "the eviction awaits the close hook of `a`")
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        gate.set()
        await iterations(5)
        gc.collect()  # a close hook cancelled before it ran warns when collected: here
        # The room `b` took is free again: a get for a third key evicts `b` at once.
        try:
            client = await keyed.get("c", timeout=0.5)
        except gocp.PoolTimeout:
            raise AssertionError(f"`b` is still counted busy: {keyed.stats()}") from None
        keyed.put(client)
        assert keyed.stats().total.lends == 2, "the evicted key's counters were lost"
        await until(lambda: old.closed, "the evicted client closed", timeout=1.0)
        await assert_keyed_whole(keyed, clock, 10.0)


@pytest.mark.parametrize("closing", ["plain", "async"])
@aio_test
async def test_a_get_cancelled_after_any_number_of_loop_iterations_loses_nothing(
    closing: str,
) -> None:
    """Every await point of a get for a new key: queued for room, the close of the key it
    evicts (an async close hook yields there, a plain one does not), its dial. The get is
    cancelled after 0, 1, 2... loop iterations until one ends on its own; after each, the
    keyed pool is whole, every key evictable, and every client closed once at close."""
    loop = asyncio.get_running_loop()
    reached: set[str] = set()
    count = 0
    while True:
        assert count < 200, "the get never finished on its own"
        clock = FakeClock()
        dialer = AioDialer(turns=2)
        keyed = gocp.aio.keyed(
            size=1,
            max_keys=2,
            dial=dialer.dial,
            close=dialer.close if closing == "async" else dialer.plain_close,
            key_idle_timeout=10.0,
            clock=clock,
        )
        try:
            old = await keyed.get("old")
            held = await keyed.get("held")
            getter = asyncio.ensure_future(keyed.get("new", timeout=BOUND))
            loop.call_soon(keyed.put, old)  # room: once the get has queued for it
            await iterations(count)
            cancelled = not getter.done()
            if cancelled:
                if keyed.stats().waiting_for_room:
                    reached.add("queued for room")
                if dialer.closing:
                    reached.add("evicting")
                if dialer.dialling["new"]:
                    reached.add("dialling")
                getter.cancel()
            (result,) = await settle(getter)
            gc.collect()  # a close hook cancelled before it ran warns when collected: here
            if isinstance(result, Client):
                keyed.put(result)
            else:
                assert isinstance(result, asyncio.CancelledError), result
            keyed.put(held)
            await until(lambda: dialer.closing == 0, "close hooks ended", timeout=1.0)  # noqa: B023
            await assert_keyed_whole(keyed, clock, 10.0)
            # The sweep closes the keys it forgot (close() during that is another test's).
            await until(lambda: not dialer.live(), "the swept clients closed", timeout=1.0)  # noqa: B023
            await keyed.close()
            assert dialer.closed_twice() == []
        except AssertionError as exc:
            raise AssertionError(f"get cancelled after {count} loop iterations: {exc}") from exc
        finally:
            await keyed.close()
        if not cancelled:
            break
        count += 1
    expected = {"queued for room", "dialling"} | ({"evicting"} if closing == "async" else set())
    assert reached >= expected, reached


@aio_test
async def test_asyncio_timeout_around_get_behaves_like_its_own_timeout(
    clock: FakeClock,
) -> None:
    """Waiting for room and waiting in a key, bounded by ``get``'s own timeout or by
    ``asyncio.timeout()``: a ``TimeoutError`` either way, and the same state after."""
    dialer = AioDialer()
    states = []
    for bound in ("own", "asyncio.timeout"):
        async with gocp.aio.keyed(
            size=1, max_keys=1, dial=dialer.dial, key_idle_timeout=10.0, clock=clock
        ) as keyed:
            held = await keyed.get("a")
            for key in ("b", "a"):  # waiting for room, then waiting in the key
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await bounded(bound, keyed.get(key, timeout=0.05 if bound == "own" else None))
                assert 0.05 - EARLY <= time.monotonic() - started < 1.0
            with pytest.raises(TimeoutError):  # the same for connection()
                await bounded(bound, enter(keyed.connection("a", 0.05 if bound == "own" else None)))
            stats = keyed.stats()
            pool = stats.keys["a"]
            states.append(
                (
                    keyed.keys,
                    stats.keys_made,
                    stats.waiting_for_room,
                    pool.waits,
                    pool.waiting,
                    pool.in_use,
                )
            )
            keyed.put(held)
            await assert_keyed_whole(keyed, clock, 10.0)
    assert states[0] == states[1] == (["a"], 1, 0, 2, 0, 1)


@aio_test
async def test_close_wakes_waiting_gets_with_pool_closed_and_leaves_no_task_pending(
    clock: FakeClock,
) -> None:
    dialer = AioDialer()
    before = other_tasks()
    keyed = gocp.aio.keyed(
        size=1,
        max_keys=2,
        dial=dialer.dial,
        close=dialer.close,
        key_idle_timeout=10.0,
        idle_timeout=100.0,  # each key's pool has an upkeep task too
        clock=clock,
    )
    held = await keyed.get("a")
    dialer.gate("b")
    dialling = asyncio.ensure_future(keyed.get("b", timeout=BOUND))
    await until(lambda: dialer.dialling["b"] == 1, "a dial in flight")
    waiters = [
        asyncio.ensure_future(keyed.get("a", timeout=None)),  # in its key
        asyncio.ensure_future(keyed.get("c", timeout=None)),  # for room
    ]
    await until(lambda: keyed.stats().waiting_for_room == 1 and key_stats(keyed, "a").waiting == 1)
    assert other_tasks() - before - set(waiters) - {dialling}, "the sweep runs as a task"
    await keyed.close()
    for waiter in waiters:
        with pytest.raises(gocp.PoolClosed):
            await asyncio.wait_for(waiter, 1.0)
    assert other_tasks() - before == {dialling}  # only the test's own get, in its dial
    dialer.gates["b"].set()
    (outcome,) = await settle(dialling)
    if isinstance(outcome, Client):  # its dial won the race with the close
        keyed.put(outcome)
    else:
        assert isinstance(outcome, gocp.PoolClosed), outcome
    keyed.put(held)
    await until(lambda: not dialer.live(), "every client closed")
    assert other_tasks() - before == set()
    assert keyed.stats().closed


@aio_test
async def test_async_with_closes_the_keyed_pool(echo_server: EchoServer) -> None:
    async with gocp.aio.keyed(size=1) as keyed, keyed.connection(echo_server.address) as conn:
        await aecho(conn)
    assert keyed.closed
    await until(lambda: echo_server.active == 0)


# -- the sweep task ------------------------------------------------------------------


@aio_test
async def test_close_during_a_sweep_still_closes_the_swept_key_and_keeps_its_counters(
    clock: FakeClock,
) -> None:
    """The sweep awaits the close of an expired key's pool (an async close hook) when
    ``close()`` is called: once ``close()`` returns, the swept client is closed (its hook
    awaited: no task left pending), and the key's counters are kept in the totals."""
    dialer = AioDialer()
    dialer.close_gate = gate = asyncio.Event()
    before = other_tasks()
    keyed = gocp.aio.keyed(
        size=1, dial=dialer.dial, close=dialer.close, key_idle_timeout=10.0, clock=clock
    )
    client = await keyed.get("a")
    keyed.put(client)
    clock.advance(10.0)
    await until(lambda: dialer.closing == 1, "the sweep awaits the close hook")
    closing = asyncio.ensure_future(keyed.close())
    await iterations(5)
    assert not closing.done(), "close() returned while a close hook still ran"
    gate.set()
    await closing
    left = other_tasks() - before
    await until(lambda: dialer.closing == 0)  # let the hook end, whatever close() did
    gc.collect()  # a close hook cancelled before it ran warns when collected: here
    assert left == set(), f"close() left tasks pending: {left}"
    assert client.closed, "the swept client was never closed"
    assert keyed.stats().total.lends == 1, "the swept key's counters were lost"


class GatedClose:
    """A close hook held until ``release()``: a plain function blocking on a
    ``threading.Event`` (the threaded shell runs it in its background thread) or a
    coroutine function awaiting an ``asyncio.Event``. ``closing`` counts hooks held."""

    def __init__(self, shell: Shell) -> None:
        self.threads = shell.threads
        self._thread_gate = threading.Event()
        self._loop_gate = asyncio.Event()
        self.closing = 0
        self.closed: list[Client] = []

    @property
    def hook(self) -> Any:
        return self._plain if self.threads else self._async

    def release(self) -> None:
        self._thread_gate.set()
        self._loop_gate.set()

    def _plain(self, client: Client) -> None:
        self.closing += 1
        try:
            assert self._thread_gate.wait(BOUND), "the test never released the close hook"
            client.closed = True
            self.closed.append(client)
        finally:
            self.closing -= 1

    async def _async(self, client: Client) -> None:
        self.closing += 1
        try:
            await self._loop_gate.wait()
            client.closed = True
            self.closed.append(client)
        finally:
            self.closing -= 1


@shells_test
async def test_the_totals_never_go_down_while_a_key_is_being_closed(
    shell: Shell, clock: FakeClock
) -> None:
    """The sweep forgets an idle key and closes its pool (a close hook that takes its
    time): meanwhile ``stats().total`` must still count that key's lends."""
    closer = GatedClose(shell)
    keyed = shell.keyed(
        size=1, dial=Dialer().dial, close=closer.hook, key_idle_timeout=10.0, clock=clock
    )
    try:
        keyed.put(await shell.get(keyed, "a"))
        assert keyed.stats().total.lends == 1
        clock.advance(10.0)
        await until(lambda: closer.closing == 1, "the sweep closes the key's client")
        during = keyed.stats()
        closer.release()
        await until(lambda: closer.closing == 0)
        assert during.total.lends == 1, f"the total went down while the key closed: {during}"
        assert keyed.stats().total.lends == 1
    finally:
        closer.release()
        await shell.close(keyed)


@aio_test
async def test_a_clock_advanced_while_the_sweep_closes_a_key_is_not_missed(
    clock: FakeClock,
) -> None:
    """The sweep closes `a` (its close hook awaited) while the clock moves past the
    expiry of `b`: the sweep must look again at once, not sleep on the delay it
    computed before the clock moved (here 50 s of real time)."""
    dialer = AioDialer()
    dialer.close_gate = gate = asyncio.Event()
    async with gocp.aio.keyed(
        size=1, dial=dialer.dial, close=dialer.close, key_idle_timeout=100.0, clock=clock
    ) as keyed:
        keyed.put(await keyed.get("a"))  # used at 1000
        clock.advance(50.0)
        keyed.put(await keyed.get("b"))  # used at 1050
        clock.advance(50.0)  # 1100: `a` expires
        await until(lambda: dialer.closing == 1, "the sweep awaits the close of `a`")
        clock.advance(50.0)  # 1150: `b` expires
        gate.set()
        await until(lambda: keyed.keys == [], "`b` forgotten", timeout=2.0)


@aio_test
async def test_a_keyed_pool_dropped_without_close_is_collected_and_its_sweep_task_ends() -> None:
    dialer = AioDialer()
    before = other_tasks()
    keyed = gocp.aio.keyed(size=1, dial=dialer.dial, close=dialer.plain_close)
    client = await keyed.get("a")
    keyed.put(client)
    assert other_tasks() - before, "the sweep runs as a task"
    ref = weakref.ref(keyed)
    del keyed
    gc.collect()
    assert ref() is None, "the sweep task keeps the keyed pool alive"
    await until(lambda: not other_tasks() - before, "the sweep task of a dropped pool ends")
    await until(lambda: client.closed, "what a dropped keyed pool held is closed")


# -- many tasks, few keys ---------------------------------------------------------------


@pytest.mark.parametrize("closing", ["plain", "async"])
@aio_test
async def test_tasks_on_more_keys_than_max_keys_never_share_a_member_nor_lose_one(
    closing: str,
) -> None:
    """Eight tasks get and put on six keys with room for three, with dials (and async
    closes) that yield; another task cancels gets at random points. Keys are evicted and
    made all the time. No member is ever lent twice at once, no put is refused, every
    evicted key's client is closed, and every key is left evictable."""
    clock = FakeClock()
    dialer = AioDialer(turns=1)
    keys = [f"k{index}" for index in range(6)]
    held: dict[int, str] = {}
    rng = random.Random(7)
    async with gocp.aio.keyed(
        size=1,
        max_keys=3,
        dial=dialer.dial,
        close=dialer.close if closing == "async" else dialer.plain_close,
        key_idle_timeout=10.0,
        clock=clock,
    ) as keyed:

        async def user(number: int) -> None:
            for step in range(150):
                key = keys[(number * 7 + step * 5) % len(keys)]
                try:
                    client = await keyed.get(key, timeout=1.0)
                except gocp.PoolTimeout:
                    continue
                assert held.get(id(client)) is None, f"{client} lent twice at once"
                held[id(client)] = f"task {number}"
                assert client.address == key
                assert not client.closed
                await iterations(rng.randrange(3))
                del held[id(client)]
                keyed.put(client)

        async def canceller() -> None:
            for _ in range(100):
                victim = asyncio.ensure_future(keyed.get(rng.choice(keys), timeout=1.0))
                await cancel_after(victim, rng.randrange(8))
                (got,) = await settle(victim)
                if isinstance(got, Client):
                    keyed.put(got)

        await asyncio.gather(*(user(number) for number in range(8)), canceller())
        gc.collect()  # a close hook cancelled before it ran warns when collected: here
        stats = keyed.stats()
        assert len(stats.keys) <= 3
        assert stats.total.in_use == 0
        assert stats.waiting_for_room == 0
        assert stats.keys_made - stats.keys_evicted == len(stats.keys)
        assert stats.keys_evicted > 0  # the eviction path ran
        for key, pool in stats.keys.items():
            assert_pool_whole(pool, key)
        await until(lambda: dialer.closing == 0)
        live = {client.address for client in dialer.live()}
        assert live <= set(keyed.keys), f"clients of evicted keys never closed: {live}"
        await assert_keyed_whole(keyed, clock, 10.0)
