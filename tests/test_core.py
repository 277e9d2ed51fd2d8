"""PoolCore: the pool's decisions, driven with explicit ``now`` values.

No sockets, no threads, no sleeping: members are plain ``Slot`` objects,
connections are ``Conn`` tokens, waiters are ``Waiter`` records, and each test
plays the shell's part by hand (``prepare`` after a pending lend, ``attach`` a
dialled connection, report a check with ``checked``, drain ``doomed``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gocp._config import Options
from gocp._core import BUSY, CHECK, DIAL, DRAIN, GONE, IDLE, LENT, PoolCore, Slot
from gocp._errors import DialError, PoolClosed, PoolTimeout

INF = float("inf")
ALMOST_ONE = 0.999999


class Waiter:
    """A caller queued in ``get``, as a shell keeps one."""

    __slots__ = ("closed", "name", "since", "slot")

    def __init__(self, name: str = "w") -> None:
        self.name = name
        self.slot: Any = None
        self.closed = False
        self.since = float("nan")

    def __repr__(self) -> str:
        return f"Waiter({self.name})"


class Conn:
    """A connection stand-in: the core only moves it around."""

    _serial = itertools.count(1)

    def __init__(self) -> None:
        self.n = next(Conn._serial)

    def __repr__(self) -> str:
        return f"Conn({self.n})"


Core = PoolCore[Slot, Waiter]


def make_core(
    size: int = 3,
    *,
    client: bool = True,
    random: float | Iterable[float] = 0.5,
    probe_lease: float = 1.0,
    can_check: bool = True,
    check: bool = False,
    kind: type[Core] = PoolCore,
    **options: Any,
) -> Core:
    """A core over ``size`` fresh slots: a client pool (dials in lend) or a socket pool;
    ``kind``: the class (``SharedCore``: the free-threaded build's)."""
    if isinstance(random, (int, float)):
        values: Iterable[float] = itertools.repeat(float(random))
    else:
        values = itertools.cycle(random)
    draws = iter(values)
    return kind(
        [Slot(i) for i in range(size)],
        Options.build(options, sockets=not client, check=check),
        label="t",
        make_overflow=lambda i: Slot(i, overflow=True),
        dial_in_lend=client,
        can_check=can_check,
        random=lambda: next(draws),
        probe_lease=probe_lease,
    )


def review(
    core: Core, slot: Slot, now: float, *, fresh: bool = False, ok: bool = True
) -> list[str]:
    """What a shell does with a slot it was just lent: prepare it, check it, dial it.

    Returns the actions it took (``CHECK``, ``DIAL``)."""
    taken: list[str] = []
    if not (slot.pending or fresh):
        return taken
    action = core.prepare(slot, now, fresh=fresh)
    if action == CHECK:
        taken.append(CHECK)
        core.check_begins(slot)
        core.checked(slot, now, ok)
        action = None if ok else core.prepare(slot, now)
    if action == DIAL:
        taken.append(DIAL)
        assert core.dial_begin(now) == 0.0
        core.attach(slot, Conn(), now)
        core.dial_succeeded()
    return taken


def get(core: Core, now: float, **kwargs: Any) -> Slot:
    """Lend a slot (it must not need to wait) and prepare it as a shell's ``get`` does."""
    slot = core.lend_slow(now)
    assert slot is not None
    review(core, slot, now, **kwargs)
    return slot


def connected(core: Core, now: float = 0.0) -> list[Slot]:
    """Lend every member, dial each, give them back in index order; return them."""
    slots = [get(core, now) for _ in core.members]
    for slot in slots:
        assert slot.conn is not None
        core.give_back_slow(slot, now)
    return slots


def drain(core: Core) -> list[Any]:
    """Take the connections the core doomed (the shell closes them)."""
    doomed = list(core.doomed)
    core.doomed.clear()
    return doomed


# -- 1. lending -------------------------------------------------------------------------


def test_members_lent_in_ring_order_least_recently_returned_first() -> None:
    core = make_core(3, client=False)
    a, b, c = core.members
    assert core.lend_slow(0.0) is a
    assert core.lend_slow(0.0) is b
    assert core.give_back_slow(a, 1.0) is None
    assert list(core.idle) == [c, a]
    assert core.lend_slow(2.0) is c
    assert core.lend_slow(2.0) is a
    assert (a.state, b.state, c.state) == (LENT, LENT, LENT)


def test_lend_returns_none_when_every_member_is_lent() -> None:
    core = make_core(2, client=False)
    core.lend_slow(0.0)
    core.lend_slow(0.0)
    assert core.lend_slow(0.0) is None
    assert core.lend_slow(0.0) is None
    assert core.lends == 2
    assert core.waits == 0  # queueing is the shell's call (enqueue)
    assert not core.extra  # strict pool: max_overflow=0


def test_waiters_are_served_first_come_first_served() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    assert core.lend_slow(0.0) is a
    first, second = Waiter("1"), Waiter("2")
    core.enqueue(first, 1.0)
    core.enqueue(second, 2.0)
    assert (first.since, second.since) == (1.0, 2.0)
    assert core.waits == 2
    assert core.give_back_slow(a, 5.0) is first
    assert first.slot is a
    assert second.slot is None
    assert core.give_back_slow(a, 6.0) is second
    assert second.slot is a
    assert core.give_back_slow(a, 7.0) is None
    assert list(core.idle) == [a]
    assert core.wait_time == (5.0 - 1.0) + (6.0 - 2.0)
    assert core.lends == 3
    assert core.waits == 2
    assert core.timeouts == 0


def test_a_slot_given_back_goes_straight_to_the_first_waiter() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    core.lend_slow(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 0.5)
    assert core.give_back_slow(a, 1.0) is waiter
    assert a.state is LENT  # never idle in between
    assert not core.idle
    assert a.seq == 2
    assert core.lend_slow(1.0) is None  # a caller arriving now cannot take it from the waiter


def test_cancel_a_waiter_whose_time_ran_out() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    core.lend_slow(0.0)
    late, next_one = Waiter("late"), Waiter("next")
    core.enqueue(late, 1.0)
    core.enqueue(next_one, 2.0)
    assert core.cancel(late, 4.0) is True
    assert core.timeouts == 1
    assert core.wait_time == 3.0
    assert list(core.waiters) == [next_one]
    # Withdrawing it again changes nothing.
    assert core.cancel(late, 9.0) is False
    assert (core.timeouts, core.wait_time) == (1, 3.0)
    # The slot goes to the waiter still queued.
    assert core.give_back_slow(a, 5.0) is next_one
    assert late.slot is None


def test_cancel_an_interrupted_waiter_is_not_a_timeout() -> None:
    core = make_core(1, client=False)
    core.lend_slow(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 1.0)
    assert core.cancel(waiter, 1.5, timed_out=False) is True
    assert core.timeouts == 0
    assert core.wait_time == 0.5
    assert not core.waiters


def test_cancel_a_served_waiter_returns_false_and_it_keeps_the_slot() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    core.lend_slow(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 1.0)
    assert core.give_back_slow(a, 3.0) is waiter
    assert core.cancel(waiter, 4.0) is False  # served between its timeout and the cancel
    assert waiter.slot is a
    assert a.state is LENT
    assert core.timeouts == 0
    assert core.wait_time == 2.0  # counted once, when served


def test_cancel_a_waiter_woken_by_close_returns_false() -> None:
    core = make_core(1, client=False)
    core.lend_slow(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 1.0)
    assert core.close() == [waiter]
    waiter.closed = True  # the shell marks it, then wakes it
    assert core.cancel(waiter, 3.0) is False
    assert core.timeouts == 0
    assert core.wait_time == 2.0
    assert not core.waiters


def test_give_back_twice_raises_and_changes_nothing() -> None:
    core = make_core(2, client=False)
    a, b = core.members
    core.lend_slow(0.0)
    core.give_back_slow(a, 1.0)
    before = (list(core.idle), a.state, a.seq, a.idle_since, core.lends)
    with pytest.raises(ValueError, match=r"member #0 of t is not lent \(put twice\?\)"):
        core.give_back_slow(a, 2.0)
    assert (list(core.idle), a.state, a.seq, a.idle_since, core.lends) == before
    assert list(core.idle) == [b, a]


def test_a_stale_put_of_a_retired_overflow_slot_serves_no_waiter() -> None:
    core = make_core(1, client=False, max_overflow=1)
    (a,) = core.members
    core.lend_slow(0.0)
    retired = core.lend_slow(0.0)
    assert retired is not None
    core.give_back_slow(retired, 1.0)
    assert core.lend_slow(2.0) is not None  # a new overflow slot
    waiter = Waiter()
    core.enqueue(waiter, 2.0)
    with pytest.raises(ValueError, match="overflow connection #1 of t is not lent"):
        core.give_back_slow(retired, 3.0)
    assert waiter.slot is None
    assert list(core.waiters) == [waiter]
    assert core.lends == 3
    assert core.give_back_slow(a, 4.0) is waiter


def test_lends_and_uses_count_lends_of_the_current_connection() -> None:
    core = make_core(1)
    (a,) = core.members
    assert core.uses(a) == 0
    assert core.lend_slow(0.0) is a
    assert review(core, a, 0.0) == [DIAL]
    assert core.uses(a) == 1
    core.give_back_slow(a, 1.0)
    get(core, 2.0)
    assert core.uses(a) == 2
    core.broke(a)
    assert core.uses(a) == 0
    core.give_back_slow(a, 3.0)
    assert core.lend_slow(4.0) is a
    assert review(core, a, 4.0) == [DIAL]
    assert core.uses(a) == 1
    assert core.lends == 3
    assert a.seq == 3


def test_describe_names_the_slot_and_the_pool() -> None:
    core = make_core(1, client=False, max_overflow=1)
    (a,) = core.members
    core.lend_slow(0.0)
    overflow = core.lend_slow(0.0)
    assert overflow is not None
    assert core.describe(a) == "member #0 of t"
    assert core.describe(overflow) == "overflow connection #1 of t"


def test_exhausted_says_why() -> None:
    core = make_core(2, client=False, max_overflow=1)
    for _ in range(3):
        core.lend_slow(0.0)
    core.enqueue(Waiter(), 0.0)
    error = core.exhausted(1.5, 2.0, repr)
    assert isinstance(error, PoolTimeout)
    assert error.timeout == 1.5
    assert str(error) == (
        "no member of t became free within 1.5s: size 2, 3 lent, 1 waiting, overflow 1 of 1"
    )


def test_exhausted_names_where_the_longest_held_member_was_taken() -> None:
    core = make_core(2, client=False, leak_timeout=60.0)
    a, b = core.members
    for at, slot in ((1.0, a), (3.0, b)):
        assert core.lend_slow(at) is slot
        slot.stack = f"stack-{slot.index}"
        assert core.prepare(slot, at) is None
    error = core.exhausted(0.0, 10.0, lambda stack: f"<{stack}>")
    assert str(error).endswith("; the longest held (for 9.0s) was taken at <stack-0>")


def test_an_untimed_core_decides_lends_without_the_time() -> None:
    assert make_core().timed is False
    assert make_core(client=False).timed is False
    for option in ("idle_timeout", "max_lifetime", "leak_timeout"):
        assert make_core(**{option: 10.0}).timed is True
    assert make_core(check_interval=10.0).timed is True
    assert make_core(check_interval=10.0, can_check=False).timed is False


# -- 2. client pools --------------------------------------------------------------------


def test_client_slot_without_connection_is_pending_and_prepare_says_dial() -> None:
    core = make_core(2)
    a, _ = core.members
    assert core.lend_slow(0.0) is a
    assert a.pending is True
    assert core.prepare(a, 0.0) == DIAL
    assert a.pending is False
    assert core.dial_begin(0.0) == 0.0
    conn = Conn()
    core.attach(a, conn, 0.0)
    assert (a.conn, core.connected, core.dials) == (conn, 1, 1)
    assert core.by_conn == {id(conn): a}
    core.give_back_slow(a, 1.0)
    core.lend_slow(2.0)  # b, not connected yet
    assert core.lend_slow(2.0) is a
    assert a.pending is False  # connected, no policy: ready as it is
    assert a.conn is conn


def test_socket_slot_without_connection_is_not_pending() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    assert core.lend_slow(0.0) is a
    assert a.pending is False  # socket members dial on their first I/O
    assert core.prepare(a, 0.0) is None
    assert core.prepare(a, 0.0, fresh=True) is None


def test_by_conn_forgets_doomed_connections() -> None:
    core = make_core(2)
    a, b = connected(core)
    first, second = a.conn, b.conn
    assert core.by_conn == {id(first): a, id(second): b}
    get(core, 1.0)
    core.broke(a)
    assert drain(core) == [first]
    assert core.by_conn == {id(second): b}
    assert (a.conn, core.connected, core.broken, core.closed_by["broken"]) == (None, 1, 1, 1)
    core.give_back_slow(a, 2.0)
    get(core, 3.0)  # b
    assert core.lend_slow(3.0) is a
    assert a.pending is True  # no client: dial before use
    assert core.prepare(a, 3.0) == DIAL


def test_broke_without_a_connection_counts_nothing() -> None:
    core = make_core(1)
    slot = core.lend_slow(0.0)
    assert slot is not None
    core.broke(slot)
    assert (core.broken, core.closed_by["broken"], list(core.doomed)) == (0, 0, [])


def test_found_stale_dooms_without_a_close_reason() -> None:
    core = make_core(1, client=False)
    (a,) = core.members
    core.lend_slow(0.0)
    conn = Conn()
    core.attach(a, conn, 0.0)
    core.found_stale(a)
    assert drain(core) == [conn]
    assert core.stale == 1
    assert core.broken == 0
    assert set(core.closed_by.values()) == {0}
    core.found_stale(a)
    assert core.stale == 1


# -- 3. lifecycle -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draw", "lifetime"),
    [(0.0, 100.0), (ALMOST_ONE, 100.0 * (1 - 0.1 * ALMOST_ONE))],
    ids=["no-cut", "cut-almost-10pc"],
)
def test_max_lifetime_is_cut_by_a_random_0_to_10_percent(draw: float, lifetime: float) -> None:
    core = make_core(1, random=draw, max_lifetime=100.0)
    (a,) = core.members
    get(core, 5.0)
    assert a.expires_at == 5.0 + lifetime
    assert a.expires_at == pytest.approx(105.0 if draw == 0.0 else 95.00001)


def test_lifetime_expired_at_lend_dooms_it_and_the_client_redials() -> None:
    core = make_core(1, random=0.0, max_lifetime=100.0)
    (a,) = core.members
    get(core, 0.0)
    first = a.conn
    core.give_back_slow(a, 1.0)
    assert core.lend_slow(99.5) is a
    assert a.pending is False
    core.give_back_slow(a, 99.6)
    assert core.lend_slow(100.0) is a
    assert a.pending is True
    assert core.prepare(a, 100.0) == DIAL
    assert drain(core) == [first]
    assert core.closed_by["lifetime"] == 1
    assert core.connected == 0


def test_lifetime_expired_at_give_back_but_never_while_lent() -> None:
    core = make_core(1, random=0.0, max_lifetime=100.0)
    (a,) = core.members
    get(core, 0.0)
    conn = a.conn
    tasks, _ = core.maintain(150.0)
    assert tasks == []
    assert a.conn is conn  # lent: left alone
    assert not core.doomed
    assert core.give_back_slow(a, 150.0) is DRAIN
    assert drain(core) == [conn]
    assert core.closed_by["lifetime"] == 1
    assert list(core.idle) == [a]
    assert core.lend_slow(151.0) is a
    assert core.prepare(a, 151.0) == DIAL


def test_lifetime_expired_at_give_back_to_a_waiter_hands_over_an_empty_slot() -> None:
    core = make_core(1, random=0.0, max_lifetime=100.0)
    (a,) = core.members
    get(core, 0.0)
    conn = a.conn
    waiter = Waiter()
    core.enqueue(waiter, 50.0)
    assert core.give_back_slow(a, 100.0) is waiter
    assert drain(core) == [conn]
    assert a.pending is True
    assert core.prepare(a, 100.0) == DIAL


def test_idle_timeout_at_lend_dooms_an_idle_connection() -> None:
    core = make_core(2, idle_timeout=10.0)
    a, b = connected(core, 0.0)
    assert core.lend_slow(9.5) is a
    assert a.pending is False  # idle 9.5s
    assert core.lend_slow(10.0) is b
    assert b.pending is True  # idle 10s
    first = b.conn
    assert core.prepare(b, 10.0) == DIAL
    assert drain(core) == [first]
    assert core.closed_by["idle"] == 1
    assert core.connected == 1


def test_idle_timeout_at_lend_keeps_min_idle_connected() -> None:
    core = make_core(1, idle_timeout=10.0, min_idle=1)
    (a,) = core.members
    get(core, 0.0)
    core.give_back_slow(a, 0.0)
    assert core.lend_slow(50.0) is a
    assert a.pending is True
    assert core.prepare(a, 50.0) is None  # the only connected member: kept
    assert not core.doomed
    assert core.closed_by["idle"] == 0


def test_maintain_closes_idle_connections_oldest_first_down_to_min_idle() -> None:
    core = make_core(3, idle_timeout=10.0, min_idle=1)
    a, b, c = core.members
    for _ in core.members:
        get(core, 0.0)
    for at, slot in ((1.0, a), (2.0, b), (3.0, c)):
        core.give_back_slow(slot, at)
    conns = [a.conn, b.conn, c.conn]
    assert core.maintain(5.0) == ([], 11.0)
    assert core.maintain(100.0) == ([], INF)  # c kept: the last connected one
    assert drain(core) == conns[:2]
    assert (a.conn, b.conn, c.conn) == (None, None, conns[2])
    assert core.connected == 1
    assert core.closed_by["idle"] == 2
    # the slots stay (the closed ones now behind the connected one) and redial when lent
    assert list(core.idle) == [c, a, b]


def test_maintain_replaces_idle_connections_past_their_lifetime_even_at_min_idle() -> None:
    core = make_core(2, random=0.0, min_idle=2, max_lifetime=10.0)
    a, b = connected(core, 0.0)
    conns = [a.conn, b.conn]
    assert core.maintain(5.0) == ([], 10.0)
    tasks, due = core.maintain(10.0)
    assert drain(core) == conns
    assert core.closed_by["lifetime"] == 2
    assert tasks == [(DIAL, a), (DIAL, b)]  # and min_idle dials their replacements
    assert (core.busy_dials, due) == (2, INF)


def test_check_at_lend_only_after_idle_that_long() -> None:
    core = make_core(1, check=True, check_interval=10.0)
    (a,) = core.members
    get(core, 0.0)
    core.give_back_slow(a, 5.0)
    assert core.lend_slow(14.5) is a
    assert a.pending is False
    core.give_back_slow(a, 14.5)
    assert core.lend_slow(24.5) is a
    assert a.pending is True
    assert core.prepare(a, 24.5) == CHECK
    core.checked(a, 24.5, True)
    assert a.checked_at == 24.5
    core.give_back_slow(a, 25.0)
    assert core.lend_slow(30.0) is a
    assert a.pending is False


def test_check_interval_counts_from_the_last_put_not_the_connection() -> None:
    """A member held for long and just put back is not checked: it was in use."""
    core = make_core(1, check=True, check_interval=10.0)
    (a,) = core.members
    get(core, 0.0)
    core.give_back_slow(a, 50.0)
    assert core.lend_slow(55.0) is a
    assert a.pending is False
    assert core.prepare(a, 55.0) is None


def test_check_interval_defaults_to_30s_with_a_check_and_needs_can_check() -> None:
    assert make_core(check=True).check_interval == 30.0
    assert make_core().check_interval == INF
    assert make_core(check=True, can_check=False).check_interval == INF


def test_io_failing_during_a_check_counts_as_the_check_failing() -> None:
    core = make_core(1, client=False, check=True, check_interval=10.0)
    (a,) = core.members
    core.lend_slow(0.0)
    first = Conn()
    core.attach(a, first, 0.0)
    core.give_back_slow(a, 0.0)
    assert core.lend_slow(10.0) is a
    assert core.prepare(a, 10.0) == CHECK
    core.check_begins(a)
    core.broke(a)  # the check's own I/O failed
    assert drain(core) == [first]
    assert (core.closed_by["check"], core.closed_by["broken"], core.broken) == (1, 0, 0)
    core.checked(a, 10.0, False)  # the check reports the failure it saw: counted once
    assert core.closed_by["check"] == 1
    assert not core.checking
    second = Conn()
    core.attach(a, second, 11.0)
    core.broke(a)  # the holder's I/O, after the check: a broken connection
    assert drain(core) == [second]
    assert (core.closed_by["check"], core.closed_by["broken"], core.broken) == (1, 1, 1)


def test_an_interrupted_check_ends_when_its_slot_comes_back() -> None:
    """A check whose ``checked`` never ran does not make later I/O failures check failures."""
    core = make_core(1, check=True, check_interval=10.0)
    (a,) = connected(core, 0.0)
    assert core.lend_slow(10.0) is a
    assert core.prepare(a, 10.0) == CHECK
    core.check_begins(a)
    assert core.give_back_slow(a, 10.0) is None  # the shell undoing the interrupted get
    assert not core.checking
    assert list(core.idle) == [a]
    tasks, _ = core.maintain(20.0)
    assert tasks == [(CHECK, a)]
    core.check_begins(a)
    assert core.restore(a, 20.0) is None  # the background check, interrupted
    assert not core.checking
    get(core, 21.0)
    core.broke(a)
    assert (core.broken, core.closed_by["broken"], core.closed_by["check"]) == (1, 1, 0)


def test_a_failed_check_dooms_the_connection_and_the_client_redials() -> None:
    core = make_core(1, check=True, check_interval=10.0)
    (a,) = core.members
    get(core, 0.0)
    first = a.conn
    core.give_back_slow(a, 0.0)
    assert core.lend_slow(20.0) is a
    assert core.prepare(a, 20.0) == CHECK
    core.checked(a, 20.0, False, hook_failed=True)
    assert drain(core) == [first]
    assert (core.closed_by["check"], core.hook_failures) == (1, 1)
    assert core.prepare(a, 20.0) == DIAL
    core.attach(a, Conn(), 20.0)
    core.checked(a, 20.0, False)  # a check that returned False: no hook failure
    assert (core.closed_by["check"], core.hook_failures) == (2, 1)


def test_maintain_checks_idle_members_busy_and_restore_serves_a_waiter_first() -> None:
    core = make_core(2, check=True, check_interval=10.0)
    a, b = connected(core, 0.0)
    conn_b = b.conn
    assert core.maintain(9.0) == ([], 10.0)
    tasks, due = core.maintain(10.0)
    assert tasks == [(CHECK, a), (CHECK, b)]
    assert due == INF
    assert (a.state, b.state) == (BUSY, BUSY)
    assert not core.idle
    assert core.lend_slow(10.0) is None  # both busy: the caller queues
    waiter = Waiter()
    core.enqueue(waiter, 10.0)
    core.checked(a, 10.5, True)
    assert core.restore(a, 10.5) is waiter
    assert waiter.slot is a
    assert a.state is LENT
    assert review(core, a, 10.5) == []  # checked just now: not checked again
    assert core.lends == 3
    assert core.wait_time == 0.5
    core.checked(b, 10.5, False)
    assert core.restore(b, 10.5) is None
    assert drain(core) == [conn_b]
    assert list(core.idle) == [b]
    assert b.state is IDLE


def test_a_passed_background_check_resets_the_check_interval() -> None:
    core = make_core(1, check=True, check_interval=10.0)
    (a,) = connected(core, 0.0)
    tasks, _ = core.maintain(10.0)
    assert tasks == [(CHECK, a)]
    core.checked(a, 10.0, True)
    core.restore(a, 10.0)
    assert core.maintain(15.0) == ([], 20.0)
    assert core.lend_slow(15.0) is a
    assert core.prepare(a, 15.0) is None  # checked 5s ago: no check


def test_min_idle_dials_in_the_background_within_the_backoff() -> None:
    core = make_core(3, random=0.0, min_idle=2, retry_min=1.0, retry_max=4.0)
    a, b, c = core.members
    assert core.ready is False
    tasks, due = core.maintain(0.0)
    assert tasks == [(DIAL, a), (DIAL, b)]
    assert due == INF
    assert (a.state, b.state, core.busy_dials) == (BUSY, BUSY, 2)
    assert core.maintain(0.0) == ([], INF)  # both dials are in flight
    # a's dial works, b's fails.
    assert core.dial_begin(0.0) == 0.0
    assert core.dial_begin(0.0) == 0.0
    core.attach(a, Conn(), 0.125)
    core.dial_succeeded()
    assert core.restore(a, 0.125, dialled=True) is None
    assert core.busy_dials == 1
    core.dial_failed(0.25, 0.0, OSError("refused"))  # next attempt at 1.25
    assert core.restore(b, 0.25, dialled=True) is None
    assert core.busy_dials == 0
    assert core.dials == 2
    assert core.ready is False
    assert core.maintain(0.5) == ([], 1.25)  # inside the backoff window: look again at its end
    tasks, _ = core.maintain(1.25)
    assert tasks == [(DIAL, c)]  # the least recently returned slot with no connection
    assert core.busy_dials == 1
    core.attach(c, Conn(), 1.5)
    core.restore(c, 1.5, dialled=True)
    assert core.ready is True
    assert list(core.idle) == [a, b, c]


def test_a_background_dial_restored_to_a_waiter_keeps_its_connection() -> None:
    core = make_core(1, min_idle=1)
    (a,) = core.members
    tasks, _ = core.maintain(0.0)
    assert tasks == [(DIAL, a)]
    assert core.lend_slow(0.0) is None
    waiter = Waiter()
    core.enqueue(waiter, 0.0)
    conn = Conn()
    core.attach(a, conn, 0.5)
    assert core.uses(a) == 0
    assert core.restore(a, 0.5, dialled=True) is waiter
    assert a.pending is False
    assert (a.conn, core.uses(a), core.busy_dials) == (conn, 1, 0)


def test_leak_timeout_makes_every_lend_pending_and_reports_each_lend_once() -> None:
    core = make_core(2, client=False, leak_timeout=10.0)
    a, b = core.members
    assert core.lend_slow(1.0) is a
    assert a.pending is True  # even a socket member with no connection: record the lend
    assert core.prepare(a, 1.0) is None
    assert a.lent_at == 1.0
    assert core.maintain(5.0) == ([], 11.0)
    assert core.maintain(11.0) == ([("leak", a)], INF)
    assert core.leaks == 1
    assert core.maintain(30.0) == ([], INF)  # this lend was reported already
    assert core.leaks == 1
    core.give_back_slow(a, 30.0)
    assert core.lend_slow(31.0) is b
    core.prepare(b, 31.0)
    assert core.lend_slow(31.0) is a
    assert a.pending is True
    core.prepare(a, 31.0)
    assert core.maintain(40.0) == ([], 41.0)
    tasks, _ = core.maintain(42.0)
    assert tasks == [("leak", a), ("leak", b)]
    assert core.leaks == 3


def test_with_leak_timeout_a_connected_member_is_pending_and_timed_from_its_lend() -> None:
    core = make_core(1, leak_timeout=10.0)
    (a,) = core.members
    get(core, 0.0)
    core.give_back_slow(a, 1.0)
    assert core.lend_slow(1.0) is a
    assert a.pending is True  # reviewed (the shell records where it was taken)
    assert a.lent_at == 1.0
    assert core.prepare(a, 2.0) is None
    assert a.lent_at == 1.0


def test_maintain_does_not_report_a_lend_before_prepare_ran() -> None:
    """The shell prepares a slot after releasing its lock: a background pass in between
    sees the new lend, not the previous one."""
    core = make_core(1, leak_timeout=10.0)
    (a,) = core.members
    assert core.lend_slow(0.0) is a  # first lend; its holder has not called prepare yet
    assert core.maintain(0.0) == ([], 10.0)
    core.prepare(a, 0.0)
    core.give_back_slow(a, 5.0)
    assert core.lend_slow(100.0) is a  # lent again, long after the previous lend began
    assert core.maintain(100.0) == ([], 110.0)
    waiter = Waiter()
    core.enqueue(waiter, 100.0)
    assert core.give_back_slow(a, 200.0) is waiter  # served: a lend too
    assert core.maintain(200.0) == ([], 210.0)
    assert core.leaks == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # a idle since 10 (connected at 0), b lent at 5; maintain at 12
        ({"check_interval": 30.0}, 40.0),  # a's check: 10 + 30
        ({"idle_timeout": 50.0}, 60.0),  # a's idle expiry: 10 + 50
        ({"max_lifetime": 35.0}, 35.0),  # a's lifetime (random 0: no cut)
        ({"leak_timeout": 20.0}, 25.0),  # b's leak: 5 + 20
        ({"check_interval": 30.0, "idle_timeout": 25.0, "max_lifetime": 100.0}, 35.0),
        ({"check_interval": 30.0, "idle_timeout": 50.0, "leak_timeout": 30.0}, 35.0),
        ({"check_interval": 30.0, "max_lifetime": 33.0, "leak_timeout": 30.0}, 33.0),
        ({"idle_timeout": 50.0, "min_idle": 2}, INF),  # no idle expiry at min_idle
        ({}, INF),
    ],
)
def test_maintain_says_when_the_earliest_deadline_is_due(
    options: dict[str, Any], expected: float
) -> None:
    core = make_core(2, random=0.0, check=True, **{"check_interval": None, **options})
    a, b = core.members
    for slot in (a, b):
        assert core.lend_slow(0.0) is slot
        review(core, slot, 0.0)
    core.give_back_slow(b, 3.0)
    assert core.lend_slow(5.0) is b
    review(core, b, 5.0)
    core.give_back_slow(a, 10.0)
    assert core.maintain(12.0) == ([], expected)


def test_maintain_says_when_the_backoff_lets_min_idle_dial_again() -> None:
    core = make_core(2, random=0.0, min_idle=1, retry_min=2.0, retry_max=8.0)
    (a, _) = core.members
    tasks, _ = core.maintain(0.0)
    assert tasks == [(DIAL, a)]
    core.dial_begin(0.0)
    core.dial_failed(1.0, 0.0, OSError("refused"))  # next attempt at 3.0
    core.restore(a, 1.0, dialled=True)
    assert core.maintain(1.5) == ([], 3.0)


def test_fresh_replaces_the_connection() -> None:
    core = make_core(1)
    (a,) = core.members
    get(core, 0.0)
    first = a.conn
    core.give_back_slow(a, 1.0)
    assert core.lend_slow(2.0) is a
    assert a.pending is False
    assert review(core, a, 2.0, fresh=True) == [DIAL]
    assert drain(core) == [first]
    assert core.closed_by["fresh"] == 1
    assert a.conn is not first
    assert core.uses(a) == 1


def test_fresh_on_a_slot_without_connection_closes_nothing() -> None:
    core = make_core(1)
    slot = core.lend_slow(0.0)
    assert slot is not None
    assert core.prepare(slot, 0.0, fresh=True) == DIAL
    assert core.closed_by["fresh"] == 0
    socket_core = make_core(1, client=False)
    (s,) = socket_core.members
    socket_core.lend_slow(0.0)
    conn = Conn()
    socket_core.attach(s, conn, 0.0)
    assert socket_core.prepare(s, 1.0, fresh=True) is None  # the member dials on first I/O
    assert drain(socket_core) == [conn]
    assert socket_core.closed_by["fresh"] == 1


# -- 4. overflow ------------------------------------------------------------------------


def test_overflow_slots_are_lent_only_when_nothing_is_idle_and_never_beyond_the_cap() -> None:
    core = make_core(1, max_overflow=2)
    (a,) = core.members
    assert core.lend_slow(0.0) is a
    first = core.lend_slow(0.0)
    second = core.lend_slow(0.0)
    assert first is not None
    assert second is not None
    assert (first.overflow, second.overflow) == (True, True)
    assert first not in core.members
    assert first.state is LENT
    assert first.pending is True  # a client: dial it
    assert core.prepare(first, 0.0) == DIAL
    assert core.lend_slow(0.0) is None  # the cap
    assert list(core.extra) == [first, second]
    core.give_back_slow(a, 1.0)
    assert core.lend_slow(1.0) is a  # an idle member before any overflow


def test_no_overflow_slot_while_a_caller_waits() -> None:
    core = make_core(1, max_overflow=1)
    core.lend_slow(0.0)
    waiter = Waiter()
    core.enqueue(waiter, 0.0)
    assert core.lend_slow(0.0) is None  # a newcomer never jumps the queue
    assert not core.extra


def test_socket_overflow_slot_is_not_pending() -> None:
    core = make_core(1, client=False, max_overflow=1)
    core.lend_slow(0.0)
    overflow = core.lend_slow(0.0)
    assert overflow is not None
    assert overflow.pending is False


def test_overflow_given_back_goes_to_the_first_waiter_with_its_connection() -> None:
    core = make_core(1, max_overflow=1)
    core.lend_slow(0.0)
    overflow = get(core, 0.0)
    conn = overflow.conn
    waiter = Waiter()
    core.enqueue(waiter, 1.0)
    assert core.give_back_slow(overflow, 2.0) is waiter
    assert waiter.slot is overflow
    assert overflow.conn is conn
    assert overflow.pending is False
    assert overflow.state is LENT
    assert not core.doomed
    assert list(core.extra) == [overflow]
    assert core.uses(overflow) == 2
    assert core.connected == 0  # the member was never dialled; overflow is not a member


def test_overflow_given_back_without_waiters_is_closed_and_retired() -> None:
    core = make_core(1, max_overflow=1)
    core.lend_slow(0.0)
    overflow = get(core, 0.0)
    conn = overflow.conn
    assert core.lends == 2
    assert core.give_back_slow(overflow, 1.0) is DRAIN
    assert drain(core) == [conn]
    assert core.closed_by["overflow"] == 1
    assert overflow.state is GONE
    assert not core.extra
    assert core.connected == 0
    assert core.by_conn == {}
    assert core.lends == 2  # its lends still count
    with pytest.raises(ValueError, match="overflow connection #1 of t is not lent"):
        core.give_back_slow(overflow, 2.0)
    again = core.lend_slow(3.0)  # a new overflow slot
    assert again is not None
    assert again is not overflow
    assert core.lends == 3


def test_overflow_without_connection_is_retired_without_counting_a_close() -> None:
    core = make_core(1, max_overflow=1)
    core.lend_slow(0.0)
    overflow = core.lend_slow(0.0)  # its dial failed, say: the shell gives it back
    assert overflow is not None
    assert core.give_back_slow(overflow, 0.0) is None
    assert overflow.state is GONE
    assert core.closed_by["overflow"] == 0


def test_open_overflow_slots_have_distinct_indices() -> None:
    core = make_core(1, max_overflow=2)
    core.lend_slow(0.0)
    first = core.lend_slow(0.0)
    second = core.lend_slow(0.0)
    assert first is not None
    assert second is not None
    core.give_back_slow(first, 1.0)  # retired
    third = core.lend_slow(2.0)
    assert third is not None
    assert (first.index, second.index, third.index) == (1, 2, 3)
    assert core.describe(third) == "overflow connection #3 of t"


def test_overflow_connection_past_max_lifetime_is_not_handed_to_a_waiter() -> None:
    """Under sustained load an overflow connection circulates; it still ages out."""
    core = make_core(1, random=0.0, max_overflow=1, max_lifetime=10.0)
    core.lend_slow(0.0)
    overflow = get(core, 0.0)
    conn = overflow.conn
    first, second = Waiter("1"), Waiter("2")
    core.enqueue(first, 1.0)
    core.enqueue(second, 2.0)
    assert core.give_back_slow(overflow, 5.0) is first
    assert overflow.conn is conn
    assert overflow.pending is False
    assert core.give_back_slow(overflow, 20.0) is second
    assert drain(core) == [conn]
    assert core.closed_by["lifetime"] == 1
    assert core.prepare(overflow, 20.0) == DIAL


def test_idle_timeout_keeps_min_idle_members_connected_while_overflow_is_open() -> None:
    core = make_core(2, min_idle=2, max_overflow=1, idle_timeout=5.0)
    a, _ = core.members
    get(core, 0.0)
    get(core, 0.0)
    overflow = get(core, 0.0)
    assert overflow.conn is not None
    core.give_back_slow(a, 1.0)
    assert core.connected == 2  # members only: overflow connections are not members
    assert core.ready is True
    tasks, _ = core.maintain(10.0)
    assert drain(core) == []  # a and b are the only connected members: min_idle=2
    assert a.conn is not None
    assert tasks == []


def test_attach_refuses_a_connection_another_slot_holds() -> None:
    """A dial hook that hands out one cached client twice: the second attach is refused
    and changes nothing, so the client is closed once."""
    core = make_core(2)
    a, b = core.members
    shared = Conn()
    core.lend_slow(0.0)
    core.lend_slow(0.0)
    assert core.holds(shared) is False
    core.attach(a, shared, 0.0)
    assert core.holds(shared) is True
    with pytest.raises(ValueError, match="member #1 of t: this connection is another slot's"):
        core.attach(b, shared, 0.0)
    assert (b.conn, core.connected, core.by_conn) == (None, 1, {id(shared): a})
    core.give_back_slow(a, 1.0)
    core.give_back_slow(b, 1.0)
    core.close()
    assert drain(core) == [shared]
    assert core.holds(shared) is False
    assert not core.idle


# -- 5. backoff -------------------------------------------------------------------------


def test_dial_backoff_through_the_core() -> None:
    core = make_core(1, random=0.0, probe_lease=2.0, retry_min=1.0, retry_max=8.0)
    assert core.dial_begin(0.0) == 0.0
    assert core.dials == 1
    refused = OSError("refused")
    error = core.dial_failed(0.5, 0.0, refused)
    assert isinstance(error, DialError)
    assert str(error) == "dial t failed: OSError: refused; next attempt in 1.000s"
    assert (error.address, error.retry_in, error.__cause__) == ("t", 1.0, refused)
    assert core.dial_failures == 1
    # Inside the window: refused, not counted.
    assert core.dial_begin(1.0) == 0.5
    assert core.dials == 1
    error = core.backoff_error(0.5)
    assert str(error) == (
        "dial t: backing off after 1 failed attempts (last: OSError: refused); "
        "next attempt in 0.500s"
    )
    assert (error.address, error.retry_in, error.__cause__) == ("t", 0.5, refused)
    # The window ends: one probe, the others wait for its lease.
    assert core.dial_begin(1.5) == 0.0
    assert core.dials == 2
    assert core.dial_begin(2.0) == 1.5
    error = core.backoff_error(1.5)
    assert str(error) == (
        "dial t: another caller is probing it after 1 failed attempts "
        "(last: OSError: refused); next attempt in 1.500s"
    )
    assert error.__cause__ is refused
    # The probe's lease runs out: a new probe may start.
    assert core.dial_begin(3.5) == 0.0
    assert core.dials == 3
    core.dial_abandoned(1.5)  # the first probe, reporting late: not the probe now
    assert core.dial_begin(4.0) == 1.5
    core.dial_abandoned(3.5)  # the probe itself
    assert core.dial_begin(4.0) == 0.0
    assert core.dials == 4
    error = core.dial_failed(4.5, 4.0, OSError("again"))
    assert error.retry_in == 2.0  # the second failure: the bound doubled
    assert core.dial_failures == 2
    assert core.dial_begin(6.5) == 0.0
    assert core.dial_succeeded() == 2
    assert core.dial_begin(6.6) == 0.0  # healthy: no probe, anyone dials
    assert core.dial_begin(6.6) == 0.0
    assert core.dials == 7
    assert core.dial_succeeded() == 0


def test_overlapping_dial_failures_count_once_in_the_backoff() -> None:
    core = make_core(1, random=0.0, retry_min=1.0, retry_max=8.0)
    assert core.dial_begin(0.0) == 0.0
    assert core.dial_begin(0.0) == 0.0
    assert core.dial_failed(1.0, 0.0, OSError("one")).retry_in == 1.0
    late = core.dial_failed(1.2, 0.0, OSError("two"))
    assert late.retry_in == pytest.approx(0.8)  # the same window
    assert core.backoff.failures == 1
    assert core.dial_failures == 2


def test_dial_begin_on_a_closed_pool_raises() -> None:
    core = make_core(1)
    core.close()
    with pytest.raises(PoolClosed, match="pool t is closed: not dialling"):
        core.dial_begin(0.0)
    assert core.dials == 0


def test_maintain_does_not_dial_for_min_idle_while_a_probe_holds_the_lease() -> None:
    core = make_core(2, random=0.0, probe_lease=2.0, min_idle=1, retry_min=1.0, retry_max=4.0)
    a, _ = core.members
    tasks, _ = core.maintain(0.0)
    assert tasks == [(DIAL, a)]
    assert core.dial_begin(0.0) == 0.0
    core.dial_failed(0.0, 0.0, OSError("refused"))  # next attempt at 1.0
    core.restore(a, 0.0, dialled=True)
    assert core.dial_begin(1.0) == 0.0  # a get() probes, holding the lease until 3.0
    assert core.maintain(1.5) == ([], 3.0)
    assert core.maintain(3.0) == ([(DIAL, core.members[1])], INF)  # the lease ran out


# -- 6. close ---------------------------------------------------------------------------


def test_close_dooms_idle_connections_and_lends_nothing() -> None:
    core = make_core(3)
    a, b, c = core.members
    for _ in range(3):
        get(core, 0.0)
    core.give_back_slow(b, 1.0)
    core.give_back_slow(c, 1.0)
    conn_a, conn_b, conn_c = a.conn, b.conn, c.conn
    assert core.close() == []
    assert drain(core) == [conn_b, conn_c]
    assert not core.idle
    assert core.connected == 1
    assert a.conn is conn_a  # lent: still usable
    with pytest.raises(PoolClosed, match="pool t is closed"):
        core.lend_slow(2.0)
    assert core.give_back_slow(a, 3.0) is DRAIN
    assert drain(core) == [conn_a]
    assert a.state is IDLE
    assert not core.idle  # never lent again
    assert core.connected == 0
    assert core.by_conn == {}
    assert set(core.closed_by.values()) == {0}  # closing is not a policy
    with pytest.raises(PoolClosed):
        core.lend_slow(4.0)
    with pytest.raises(ValueError, match="not lent"):
        core.give_back_slow(a, 5.0)
    assert core.maintain(6.0) == ([], INF)
    assert core.close() == []  # idempotent
    assert not core.doomed
    assert core.ready is True


def test_close_retires_lent_overflow_slots_when_given_back() -> None:
    core = make_core(1, max_overflow=1)
    get(core, 0.0)
    overflow = get(core, 0.0)
    conn = overflow.conn
    core.close()
    assert overflow.conn is conn
    assert core.give_back_slow(overflow, 1.0) is DRAIN
    assert drain(core) == [conn]
    assert overflow.state is GONE
    assert not core.extra
    assert core.closed_by["overflow"] == 0
    assert core.lends == 2


def test_close_returns_the_waiters_until_the_shell_marks_them_closed() -> None:
    core = make_core(1)
    (a,) = core.members
    get(core, 0.0)
    first, second = Waiter("1"), Waiter("2")
    core.enqueue(first, 1.0)
    core.enqueue(second, 1.0)
    assert core.close() == [first, second]
    first.closed = True  # interrupted here: the second was not woken
    assert core.close() == [second]
    second.closed = True
    assert core.close() == []
    # The pool closed: a give back serves nobody.
    assert core.give_back_slow(a, 2.0) is DRAIN
    assert (first.slot, second.slot) == (None, None)
    assert core.cancel(first, 3.0, timed_out=False) is False
    assert core.cancel(second, 3.0, timed_out=False) is False
    assert not core.waiters
    assert core.timeouts == 0
    assert core.wait_time == 4.0


def test_attach_on_a_closed_pool_dooms_a_busy_slots_connection_not_a_lent_ones() -> None:
    core = make_core(2, min_idle=1)
    a, b = core.members
    tasks, _ = core.maintain(0.0)
    assert tasks == [(DIAL, a)]
    assert core.lend_slow(0.0) is b
    assert core.prepare(b, 0.0) == DIAL
    core.close()
    busy_conn, lent_conn = Conn(), Conn()
    core.attach(a, busy_conn, 1.0)
    assert drain(core) == [busy_conn]
    assert a.conn is None
    core.attach(b, lent_conn, 1.0)
    assert b.conn is lent_conn
    assert not core.doomed
    assert core.restore(a, 1.0, dialled=True) is None
    assert a.state is IDLE
    assert not core.idle
    assert core.busy_dials == 0
    assert core.give_back_slow(b, 2.0) is DRAIN
    assert drain(core) == [lent_conn]
    assert core.connected == 0


def test_restore_on_a_closed_pool_dooms_and_serves_nobody() -> None:
    core = make_core(1, check=True, check_interval=5.0)
    (a,) = connected(core, 0.0)
    conn = a.conn
    tasks, _ = core.maintain(5.0)
    assert tasks == [(CHECK, a)]
    core.close()
    core.checked(a, 5.5, True)
    assert core.restore(a, 5.5) is None
    assert drain(core) == [conn]
    assert a.state is IDLE
    assert not core.idle


# -- 7. after fork ----------------------------------------------------------------------


def forked_pool(release_lent: bool) -> tuple[Core, list[Slot], list[Any]]:
    """A pool with a idle, b busy (checked), c lent and d idle with no connection, forked."""
    core = make_core(4, check=True, check_interval=10.0)
    a, b, c, d = core.members
    for _ in range(3):
        get(core, 0.0)
    conns = [a.conn, b.conn, c.conn]
    core.give_back_slow(b, 0.0)
    core.give_back_slow(a, 1.0)
    tasks, _ = core.maintain(10.0)
    assert tasks == [(CHECK, b)]
    core.broke(c)  # a connection waiting in doomed: the parent closes it
    core.attach(c, Conn(), 10.0)
    conns[2] = c.conn
    assert core.dial_begin(10.0) == 0.0
    core.dial_failed(10.0, 10.0, OSError("down"))
    assert core.dial_begin(20.0) == 0.0  # a probe, in a thread the child will not have
    core.after_fork(release_lent=release_lent)
    assert list(core.idle) == [d, a, b]
    return core, [a, b, c, d], conns


def test_after_fork_releases_idle_busy_and_lent_connections() -> None:
    core, (a, b, c, d), (conn_a, conn_b, conn_c) = forked_pool(release_lent=True)
    assert core.released == [conn_a, conn_b, conn_c]
    assert not core.doomed
    assert (a.conn, b.conn, c.conn) == (None, None, None)
    assert (b.state, c.state) == (IDLE, LENT)
    assert core.connected == 0
    assert core.by_conn == {}
    assert [core.lend_slow(21.0) for _ in range(3)] == [d, a, b]
    assert core.lend_slow(21.0) is None  # c is still lent: never lent again before it is put back
    assert core.give_back_slow(c, 22.0) is None
    assert core.lend_slow(22.0) is c


def test_after_fork_keeps_a_lent_client_until_it_is_put_back() -> None:
    core, (a, b, c, d), (conn_a, conn_b, conn_c) = forked_pool(release_lent=False)
    assert core.released == [conn_a, conn_b]
    assert not core.doomed
    assert c.conn is conn_c  # the holder has it in hand
    assert core.by_conn == {id(conn_c): c}
    assert core.connected == 1
    assert [core.lend_slow(21.0) for _ in range(3)] == [d, a, b]
    assert core.lend_slow(21.0) is None
    assert core.give_back_slow(c, 22.0) is None
    assert core.released == [conn_a, conn_b, conn_c]  # dropped without a close
    assert not core.doomed
    assert core.connected == 0
    assert core.by_conn == {}
    assert core.lend_slow(23.0) is c
    assert core.prepare(c, 23.0) == DIAL


def test_after_fork_clears_waiters_and_ends_the_probe() -> None:
    core = make_core(1, random=0.0, probe_lease=5.0, retry_min=1.0, retry_max=2.0, min_idle=1)
    assert core.dial_begin(0.0) == 0.0
    core.dial_failed(0.0, 0.0, OSError("down"))
    (a,) = core.members
    assert core.maintain(1.0) == ([(DIAL, a)], INF)
    assert core.dial_begin(1.0) == 0.0  # the background dial probes until 6.0
    assert core.dial_begin(2.0) == 4.0
    core.check_begins(a)  # say it were being checked instead
    core.after_fork(release_lent=True)
    assert core.busy_dials == 0
    assert not core.checking
    assert list(core.idle) == [a]
    assert core.dial_begin(2.0) == 0.0  # the prober is gone with its thread
    assert core.lend_slow(2.0) is a
    waiter = Waiter()
    core.enqueue(waiter, 2.0)
    core.after_fork(release_lent=True)
    assert not core.waiters
    assert core.give_back_slow(a, 3.0) is None
    assert waiter.slot is None


def test_after_fork_of_a_closed_pool_lends_nothing() -> None:
    core = make_core(3, min_idle=1)
    a, b, c = core.members
    assert core.maintain(0.0) == ([(DIAL, a)], INF)
    assert core.lend_slow(0.0) is b  # lent, no client yet
    assert core.lend_slow(0.0) is c
    review(core, c, 0.0)
    conn = c.conn
    core.close()
    core.after_fork(release_lent=False)
    assert a.state is IDLE
    assert not core.idle
    assert (b.state, b.conn, b.inherited) == (LENT, None, False)
    assert (c.conn, c.inherited) == (conn, True)
    with pytest.raises(PoolClosed):
        core.lend_slow(1.0)
    assert core.give_back_slow(b, 1.0) is DRAIN
    assert b.state is IDLE
    assert not core.idle


def test_an_inherited_client_put_back_to_a_closed_pool_is_released_not_closed() -> None:
    core = make_core(1)
    (a,) = core.members
    get(core, 0.0)
    conn = a.conn
    core.close()
    core.after_fork(release_lent=False)
    assert core.give_back_slow(a, 1.0) is DRAIN
    assert drain(core) == []
    assert core.released == [conn]


def test_a_broken_inherited_client_is_released_not_closed() -> None:
    core = make_core(1)
    (a,) = core.members
    get(core, 0.0)
    conn = a.conn
    core.after_fork(release_lent=False)
    core.broke(a)  # put(client, broken=True) in the child
    assert core.released == [conn]
    assert a.conn is None
    assert core.give_back_slow(a, 1.0) is None
    assert drain(core) == []
    assert core.lend_slow(2.0) is a
    assert core.prepare(a, 2.0) == DIAL


# -- 8. a model of a client pool --------------------------------------------------------


COUNTERS = (
    "lends",
    "waits",
    "timeouts",
    "dials",
    "dial_failures",
    "broken",
    "stale",
    "leaks",
    "hook_failures",
    "wait_time",
)


class ClientPoolModel(RuleBasedStateMachine):
    """Random lends, waits, returns, cancels, time steps, background passes and a close
    on a client pool with overflow and lifecycle options, playing the shell's part."""

    def __init__(self) -> None:
        super().__init__()
        self.core: Core | None = None
        self.now = 0.0
        self.held: list[Slot] = []  # slots lent to callers (including served waiters)
        self.queued: list[Waiter] = []  # waiters not served (woken by close ones too)
        self.tasks: list[tuple[str, Slot]] = []  # maintain's tasks not finished yet
        self.attached: dict[int, Conn] = {}  # every connection ever attached, by id
        self.doomed: set[int] = set()
        self.reported: set[tuple[Slot, int]] = set()  # (slot, seq) reported as leaks
        self.lends = self.waits = self.timeouts = self.leaks = 0
        self.wait_time = 0.0
        self.last: dict[str, float] = {}
        self.serial = itertools.count()

    @initialize(
        size=st.integers(1, 3),
        max_overflow=st.integers(0, 2),
        idle_timeout=st.sampled_from([None, 2.0, 5.0]),
        max_lifetime=st.sampled_from([None, 4.0, 12.0]),
        check_interval=st.sampled_from([None, 1.5, 3.0]),
        min_idle=st.integers(0, 2),
        leak_timeout=st.sampled_from([None, 3.0]),
    )
    def build(self, size: int, min_idle: int, **options: Any) -> None:
        self.core = make_core(
            size,
            random=(0.0, 0.5, ALMOST_ONE),
            retry_min=0.5,
            retry_max=2.0,
            min_idle=min(min_idle, size),
            **options,
        )

    @property
    def pool(self) -> Core:
        assert self.core is not None
        return self.core

    # -- the shell's part --

    def dial(self, slot: Slot, ok: bool) -> bool:
        core = self.pool
        try:
            wait = core.dial_begin(self.now)
        except PoolClosed:
            assert core.closed
            return False
        if wait:
            assert wait > 0.0
            return False
        if not ok:
            error = core.dial_failed(self.now, self.now, OSError("down"))
            assert error.retry_in > 0.0
            return False
        conn = Conn()
        self.attached[id(conn)] = conn
        core.attach(slot, conn, self.now)
        core.dial_succeeded()
        assert core.uses(slot) == (1 if slot.state is LENT else 0)
        return True

    def prepare(self, slot: Slot, *, fresh: bool, ok: bool, broke: bool) -> bool:
        """Review a slot just handed out; False if ``get`` fails (its dial did).
        ``ok``: checks and dials succeed; ``broke``: a failing check's I/O fails."""
        core = self.pool
        if not (slot.pending or fresh):
            return True
        action = core.prepare(slot, self.now, fresh=fresh)
        assert not slot.pending
        if action == CHECK:
            assert slot.conn is not None
            core.check_begins(slot)
            if broke and not ok:
                core.broke(slot)
            core.checked(slot, self.now, ok, hook_failed=not ok and not broke)
            if ok:
                return True
            action = core.prepare(slot, self.now)
        if action == DIAL:
            assert slot.conn is None
            return self.dial(slot, ok)
        assert action is None
        assert slot.conn is not None
        return True

    def hand_out(
        self, slot: Slot, *, fresh: bool = False, ok: bool = True, broke: bool = False
    ) -> None:
        """A lent slot reaches its caller; one whose dial fails goes back (maybe to a waiter)."""
        pending = [slot]
        while pending:
            slot = pending.pop()
            assert slot.state is LENT
            assert slot not in self.held, "lent to two callers"
            if self.prepare(slot, fresh=fresh, ok=ok, broke=broke):
                assert slot.expires_at > self.now, "lent past its lifetime"
                self.held.append(slot)
            else:
                pending.extend(self.served(self.pool.give_back_slow(slot, self.now)))
            fresh = False

    def served(self, result: Any) -> list[Slot]:
        if result is None or result is DRAIN:
            return []
        assert result is self.queued[0], "not the first waiter"
        del self.queued[0]
        self.lends += 1
        self.wait_time += self.now - result.since
        return [result.slot]

    def settle(self) -> None:
        """Close what the core doomed (each was attached, each is closed once)."""
        for conn in drain(self.pool):
            assert id(conn) in self.attached
            assert conn is self.attached[id(conn)]
            assert id(conn) not in self.doomed, "doomed twice"
            self.doomed.add(id(conn))
        assert not self.pool.released

    # -- rules --

    @rule(count=st.integers(1, 4), fresh=st.booleans(), ok=st.booleans(), broke=st.booleans())
    def get(self, count: int, fresh: bool, ok: bool, broke: bool) -> None:
        """``count`` callers call ``get``: each is lent a slot or queues."""
        core = self.pool
        for _ in range(count):
            if core.closed:
                with pytest.raises(PoolClosed):
                    core.lend_slow(self.now)
                return
            first = core.idle[0] if core.idle else None
            slot = core.lend_slow(self.now)
            if slot is None:
                assert first is None
                waiter = Waiter(f"w{next(self.serial)}")
                core.enqueue(waiter, self.now)
                self.queued.append(waiter)
                self.waits += 1
            else:
                assert slot is first or (first is None and slot.overflow)
                self.lends += 1
                self.hand_out(slot, fresh=fresh, ok=ok, broke=broke)
            self.settle()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), broken=st.booleans(), ok=st.booleans())
    def put(self, data: st.DataObject, broken: bool, ok: bool) -> None:
        core = self.pool
        slot = data.draw(st.sampled_from(self.held))
        self.held.remove(slot)
        if broken:
            core.broke(slot)
            assert slot.conn is None
        conn, expired = slot.conn, self.now >= slot.expires_at
        result = core.give_back_slow(slot, self.now)
        if expired:
            assert conn in core.doomed, "kept past its lifetime"
        if core.closed:
            assert result is DRAIN
            assert slot.conn is None
            assert slot.state is (GONE if slot.overflow else IDLE)
        for next_slot in self.served(result):
            self.hand_out(next_slot, ok=ok)
        self.settle()

    @rule(data=st.data())
    def put_twice(self, data: st.DataObject) -> None:
        core = self.pool
        candidates = [slot for slot in core.members if slot.state is not LENT]
        if not candidates:
            return
        slot = data.draw(st.sampled_from(candidates))
        before = (slot.state, list(core.idle), core.lends, slot.idle_since, list(core.waiters))
        with pytest.raises(ValueError, match="not lent"):
            core.give_back_slow(slot, self.now)
        assert (slot.state, list(core.idle), core.lends, slot.idle_since, list(core.waiters)) == (
            before
        )

    @precondition(lambda self: self.queued)
    @rule(data=st.data(), timed_out=st.booleans())
    def cancel(self, data: st.DataObject, timed_out: bool) -> None:
        waiter = data.draw(st.sampled_from(self.queued))
        self.queued.remove(waiter)
        expected = not waiter.closed
        assert self.pool.cancel(waiter, self.now, timed_out=timed_out) is expected
        assert waiter.slot is None
        self.wait_time += self.now - waiter.since
        if expected and timed_out:
            self.timeouts += 1

    @rule(step=st.sampled_from([0.25, 1.0, 2.5, 7.0]))
    def advance(self, step: float) -> None:
        self.now += step

    @rule()
    def maintain(self) -> None:
        core = self.pool
        tasks, due = core.maintain(self.now)
        if core.closed:
            assert (tasks, due) == ([], INF)
        assert due > self.now
        for kind, slot in tasks:
            if kind == "leak":
                assert slot in self.held
                key = (slot, slot.seq)
                assert key not in self.reported, "a lend reported twice"
                self.reported.add(key)
                self.leaks += 1
            else:
                assert kind in (CHECK, DIAL)
                assert slot.state is BUSY
                assert (slot.conn is not None) is (kind == CHECK)
                self.tasks.append((kind, slot))
        self.settle()

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), ok=st.booleans(), broke=st.booleans())
    def finish_task(self, data: st.DataObject, ok: bool, broke: bool) -> None:
        """A background check or dial ends (a check's own I/O may fail: ``broke``)."""
        core = self.pool
        kind, slot = data.draw(st.sampled_from(self.tasks))
        self.tasks.remove((kind, slot))
        if kind == CHECK:
            core.check_begins(slot)
            if broke:
                broken, check = core.broken, core.closed_by["check"]
                core.broke(slot)
                assert (core.broken, core.closed_by["check"]) == (broken, check + 1)
                ok = False
            core.checked(slot, self.now, ok, hook_failed=not ok and not broke)
            assert not core.checking
            result = core.restore(slot, self.now)
        else:
            self.dial(slot, ok)
            result = core.restore(slot, self.now, dialled=True)
        if core.closed:
            assert result is None
            assert slot.conn is None
        for next_slot in self.served(result):
            self.hand_out(next_slot, ok=ok)
        self.settle()

    @rule(interrupted=st.booleans(), chance=st.integers(0, 7))
    def close(self, interrupted: bool, chance: int) -> None:
        """Close the pool (rarely: a closed pool has little left to explore)."""
        if chance:
            return
        core = self.pool
        unwoken = [waiter for waiter in self.queued if not waiter.closed]
        woken = core.close()
        assert woken == unwoken
        if interrupted and woken:
            woken[0].closed = True
            woken = core.close()
            assert woken == unwoken[1:]
        for waiter in woken:
            waiter.closed = True
        assert core.close() == []
        assert not core.idle
        self.settle()

    def teardown(self) -> None:
        """Close (with background checks in flight), then give everything back: every
        connection made is closed exactly once."""
        if self.core is None:
            return
        core = self.core
        self.now += 3.0
        self.maintain()
        for waiter in core.close():
            waiter.closed = True
        for waiter in self.queued:
            assert waiter.closed
            assert core.cancel(waiter, self.now, timed_out=False) is False
        for slot in self.held:
            assert core.give_back_slow(slot, self.now) is DRAIN
        for kind, slot in self.tasks:
            if kind == CHECK:
                core.checked(slot, self.now, True)
                assert core.restore(slot, self.now) is None
            else:
                assert not self.dial(slot, True)
                assert core.restore(slot, self.now, dialled=True) is None
        self.settle()
        assert not core.waiters
        assert not core.extra
        assert core.connected == 0
        assert core.busy_dials == 0
        assert self.doomed == set(self.attached)
        assert all(slot.state is IDLE for slot in core.members)

    # -- invariants --

    @invariant()
    def every_member_is_in_exactly_one_place(self) -> None:
        if self.core is None:
            return
        core = self.core
        idle = list(core.idle)
        assert len(set(map(id, idle))) == len(idle)
        assert len(set(map(id, self.held))) == len(self.held)
        busy = [slot for _, slot in self.tasks]
        for slot in core.members:
            places = (slot in idle) + (slot in self.held) + (slot in busy)
            if slot.state is IDLE and core.closed:
                assert places == 0  # closed: never lent again
            else:
                assert places == 1
            assert slot.state is not GONE
            if slot in idle:
                assert slot.state is IDLE
            assert (slot.state is LENT) is (slot in self.held)
            assert (slot.state is BUSY) is (slot in busy)
        for slot in core.extra:
            assert slot.overflow
            assert slot.state is LENT
            assert slot in self.held
        for slot in self.held:
            assert slot.state is LENT
            assert not slot.pending  # its holder prepared it
            assert slot in core.members or slot in core.extra
        assert not core.checking

    @invariant()
    def no_member_is_idle_while_a_caller_waits(self) -> None:
        if self.core is None:
            return
        assert list(self.core.waiters) == self.queued
        if any(not waiter.closed for waiter in self.core.waiters):
            assert not self.core.idle

    @invariant()
    def connections_are_where_the_core_says(self) -> None:
        if self.core is None:
            return
        core = self.core
        slots = (*core.members, *core.extra)
        conns = [slot.conn for slot in slots if slot.conn is not None]
        assert core.connected == sum(1 for slot in core.members if slot.conn is not None)
        assert len(set(map(id, conns))) == len(conns)
        assert core.by_conn == {id(slot.conn): slot for slot in slots if slot.conn is not None}
        for conn in conns:
            assert self.attached.get(id(conn)) is conn
            assert id(conn) not in self.doomed
        assert len(core.extra) <= core.max_overflow
        assert core.busy_dials == sum(1 for kind, _ in self.tasks if kind == DIAL)

    @invariant()
    def counters_match_the_model_and_never_decrease(self) -> None:
        if self.core is None:
            return
        core = self.core
        assert core.lends == self.lends
        assert core.wait_time == pytest.approx(self.wait_time)
        assert (core.waits, core.timeouts, core.leaks) == (self.waits, self.timeouts, self.leaks)
        now = {name: getattr(core, name) for name in COUNTERS}
        now.update({f"closed_{reason}": count for reason, count in core.closed_by.items()})
        for name, value in now.items():
            assert value >= self.last.get(name, 0), name
        self.last = now


TestClientPoolModel = ClientPoolModel.TestCase
TestClientPoolModel.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
