"""SharedCore: the lock-free get and put of a free-threaded build, where threads run at once.

Each crossing two threads can make is made to happen here, deterministically: a deque
that runs "another thread's" step at the exact point inside ``lend``, ``give_back`` or
``enqueue`` where it could land. Then the whole pool is hammered with ``SharedCore`` forced
on this interpreter (on a free-threaded build it is the default: ``scripts/test-free-threaded``
runs these tests and the rest of the thread tests there).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import pytest

import gocp
import gocp.aio
from gocp import _build
from gocp._core import FREE_THREADED, IDLE, LENT, SETTLE, SLOW, PoolCore, SharedCore, Slot
from tests.test_core import Waiter, connected, drain, make_core
from tests.test_lockfree import SIZE, hammer

pytestmark = pytest.mark.timeout(30)

Core = SharedCore[Slot, Waiter]


def shared_core(size: int = 2) -> Core:
    """A SharedCore over ``size`` socket slots (no connection: nothing to dial or check)."""
    core = make_core(size, client=False, kind=SharedCore)
    assert isinstance(core, SharedCore)
    return core


class Crossing(deque[Any]):
    """A deque that runs ``step`` once, at the start of its next ``method`` call: another
    thread's step, landing exactly there."""

    def __init__(self, items: Iterable[Any], method: str, step: Callable[[], None]) -> None:
        super().__init__(items)
        self._method = method
        self._step: Callable[[], None] | None = step

    def _cross(self, method: str) -> None:
        step = self._step
        if step is not None and method == self._method:
            self._step = None
            step()

    def append(self, item: Any) -> None:
        self._cross("append")
        super().append(item)

    def remove(self, item: Any) -> None:
        self._cross("remove")
        super().remove(item)

    def __len__(self) -> int:  # a look at it: ``if deque:``
        self._cross("len")
        return super().__len__()


def lend_all(core: Core) -> list[Slot]:
    slots = []
    while (slot := core.lend(0.0)) is not None:
        slots.append(slot)
    return slots


def test_a_put_that_crosses_a_queueing_get_says_settle_and_settle_serves_it() -> None:
    """The get queues after the put's first look at ``waiters`` and looks at ``idle``
    before the put's append: neither saw the other on its first look."""
    core = shared_core(1)
    (slot,) = lend_all(core)
    waiter = Waiter("late")
    queued: list[Any] = []
    core.idle = Crossing(core.idle, "append", lambda: queued.append(core.enqueue(waiter, 1.0)))

    outcome = core.give_back(slot, 2.0)

    assert queued == [None]  # the get queued: it saw nothing idle
    assert list(core.idle) == [slot]
    assert list(core.waiters) == [waiter]
    assert outcome is SETTLE  # ...unless the put's second look catches it
    assert core.settle_one(3.0) is waiter
    assert core.settle_one(3.0) is None
    assert waiter.slot is slot
    assert slot.state is LENT
    assert not core.idle
    assert not core.waiters
    assert core.wait_time == pytest.approx(2.0)


def test_a_get_that_crosses_a_put_takes_the_member_instead_of_queueing() -> None:
    """The put gives back between the get's look at ``idle`` and its queueing: the put saw
    no waiter, so only the get's second look can take the member."""
    core = shared_core(1)
    (slot,) = lend_all(core)
    given: list[Any] = []
    core.waiters = Crossing(core.waiters, "append", lambda: given.append(core.give_back(slot, 1.0)))
    waiter = Waiter("crossing")

    got = core.enqueue(waiter, 2.0)

    assert given == [None]  # the put saw nobody waiting
    assert got is slot
    assert slot.state is LENT
    assert not core.waiters
    assert not core.idle
    assert core.waits == 0


def test_a_get_first_in_line_is_not_overtaken_but_a_later_one_waits_its_turn() -> None:
    core = shared_core(2)
    first, second = lend_all(core)
    early, late = Waiter("early"), Waiter("late")
    assert core.enqueue(early, 0.0) is None
    core.idle.append(first)  # a put that crossed both: left idle, to be settled
    first.state = IDLE
    assert core.lend(1.0) is None  # a new caller does not pass the queue
    assert core.enqueue(late, 1.0) is None  # nor does a second waiter
    assert core.settle_one(2.0) is early  # the first in line gets it
    assert core.settle_one(2.0) is None
    assert early.slot is first
    assert list(core.waiters) == [late]
    assert core.give_back(second, 3.0) is SLOW  # a waiter: served under the lock
    assert core.give_back_slow(second, 3.0) is late
    assert late.slot is second


def test_two_lends_that_see_the_same_idle_member_take_two_members() -> None:
    core = shared_core(2)
    a, b = core.members
    other: list[Any] = []
    # Another thread lends between this lend's look at idle[0] and its removal of it.
    core.idle = Crossing(core.idle, "remove", lambda: other.append(core.lend(0.0)))

    mine = core.lend(0.0)

    assert other == [a]  # the other thread removed it first
    assert mine is b  # this lend's removal failed: it looked again
    assert a.seq == b.seq == 1
    assert a.state is b.state is LENT
    assert not core.idle


def test_an_interrupt_after_the_claim_puts_the_member_back_first_in_line() -> None:
    core = shared_core(2)
    a, _b = core.members

    def interrupt() -> None:
        deque.remove(idle, a)  # the removal itself...
        raise KeyboardInterrupt  # ...then a signal handler raises as the call returns

    core.idle = idle = Crossing(core.idle, "remove", interrupt)
    with pytest.raises(KeyboardInterrupt):
        core.lend(0.0)
    assert core.idle[0] is a
    assert a.state is IDLE
    assert a.seq == 0
    assert core.lend(0.0) is a


def test_put_twice_is_refused_and_changes_nothing() -> None:
    core = shared_core(1)
    (slot,) = lend_all(core)
    assert core.give_back(slot, 1.0) is None
    with pytest.raises(ValueError, match="not lent"):
        core.give_back(slot, 2.0)
    assert list(core.idle) == [slot]


def test_close_takes_every_idle_member() -> None:
    core = shared_core(3)
    assert core.close() == []
    assert not core.idle
    assert core.lend(0.0) is None


def test_each_shell_gets_the_core_its_build_needs() -> None:
    with gocp.pool(object, size=1) as pool:
        assert type(pool._core) is (SharedCore if FREE_THREADED else PoolCore)

    async def aio() -> type:
        async with gocp.aio.pool(object, size=1) as pool:
            return type(pool._core)

    assert asyncio.run(aio()) is PoolCore  # one thread: the loop's


@pytest.mark.timeout(60)
def test_a_pool_on_the_shared_core_loses_no_member_and_no_lend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_build, "FREE_THREADED", True)
    with gocp.pool(object, size=SIZE) as pool:
        assert type(pool._core) is SharedCore
        result = hammer(pool, 1.0)
        assert result["alive"] == []
        assert result["errors"] == []  # no get waited 5 s in vain
        stats = pool.stats()
        assert stats.lends == result["lends"]
        assert (stats.idle, stats.in_use, stats.waiting) == (SIZE, 0, 0)
        assert stats.waits > 0


@pytest.mark.timeout(60)
def test_waiters_on_the_shared_core_are_served_in_arrival_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 callers queue one by one on an exhausted pool; each is served in turn."""
    monkeypatch.setattr(_build, "FREE_THREADED", True)
    with gocp.pool(object, size=1) as pool:
        held = pool.get()
        served: list[int | None] = []

        def take_turn() -> None:
            conn = pool.get(timeout=10)
            served.append(threading.get_ident())  # while it holds the only member
            pool.put(conn)

        threads = []
        for number in range(8):
            thread = threading.Thread(target=take_turn)
            threads.append(thread)
            thread.start()
            poll_until(lambda n=number: pool.stats().waiting == n + 1)
        pool.put(held)
        for thread in threads:
            thread.join(10)
        assert served == [thread.ident for thread in threads]
        assert pool.stats().waiting == 0


def poll_until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``done`` until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.001)


def test_a_put_that_crosses_close_says_settle_and_settling_closes_the_member() -> None:
    """close empties ``idle`` between the put's looks and its append: without a second
    look the closed pool would keep an idle member with an open connection."""
    core = make_core(1, kind=SharedCore)
    (slot,) = connected(core)
    held = core.lend(1.0)
    assert held is slot
    conn = slot.conn
    core.idle = Crossing(core.idle, "append", core.close)

    outcome = core.give_back(slot, 2.0)

    assert outcome is SETTLE
    assert core.settle_one(3.0) is None
    assert drain(core) == [conn]  # closed, as close would have
    assert not core.idle
    assert core.lend(4.0) is None  # a closed pool lends nothing


def test_close_run_again_finishes_its_own_slot_and_no_other() -> None:
    """An interrupted close is finished by running it again; it must not take a slot
    that a lend without the lock removed from ``idle`` and has not marked yet."""
    core = make_core(2, kind=SharedCore)
    first, second = connected(core)
    interrupted = []
    original = core.doom

    def doom_once(slot: Slot, reason: str | None) -> None:
        if not interrupted:
            interrupted.append(slot)
            raise KeyboardInterrupt  # at doom's entry, the slot claimed by close
        original(slot, reason)

    core.doom = doom_once  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        core.close()
    assert interrupted == [first]
    assert core.dooming is first
    core.idle.remove(second)  # a lend claimed it, and will mark it lent
    core.close()
    assert first.conn is None  # the interrupted close's slot: finished
    assert second.conn is not None  # the lend's: untouched
    assert core.dooming is None


def test_two_puts_of_one_member_at_once_give_it_back_once() -> None:
    """The second put comes between the first one's look at the member's state and its
    append: both saw it lent; only one may give it back, or it would be lent twice."""
    core = shared_core(1)
    (slot,) = lend_all(core)
    other: list[Any] = []
    # Another thread puts the same member at the first put's look at ``waiters``.
    core.waiters = Crossing(core.waiters, "len", lambda: other.append(core.give_back(slot, 1.5)))

    with pytest.raises(ValueError, match="put twice"):
        core.give_back(slot, 1.0)

    assert other == [None]  # the other put gave it back
    assert list(core.idle) == [slot]  # once
    assert core.held == {}
    assert core.lend(2.0) is slot
    assert core.lend(2.0) is None  # not a second time


def test_every_way_of_lending_marks_the_member_held_and_every_way_back_clears_it() -> None:
    core = make_core(1, client=False, kind=SharedCore, max_overflow=1)
    assert isinstance(core, SharedCore)
    member = core.lend(0.0)
    overflow = core.lend_slow(0.0)  # every member lent: an overflow slot
    assert member is not None
    assert overflow is not None
    assert overflow.overflow
    assert core.held == {member.index: None, overflow.index: None}
    waiter = Waiter("queued")
    assert core.enqueue(waiter, 0.0) is None
    assert core.give_back(member, 1.0) is SLOW  # a waiter: under the lock
    assert core.give_back_slow(member, 1.0) is waiter  # handed over: still held
    assert core.held == {member.index: None, overflow.index: None}
    assert core.give_back(overflow, 2.0) is SLOW  # an overflow slot closes
    assert core.give_back_slow(overflow, 2.0) is None
    assert core.held == {member.index: None}
    assert core.give_back(member, 3.0) is None  # the waiter's put
    assert core.held == {}
