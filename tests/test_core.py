"""PoolCore: the lending decisions, with plain objects as members and waiters (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import gocp
from gocp._core import PoolCore


class Member:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lent = False

    def __repr__(self) -> str:
        return f"Member({self.name})"


class Waiter:
    def __init__(self, name: str = "w") -> None:
        self.name = name
        self.member: Member | None = None

    def __repr__(self) -> str:
        return f"Waiter({self.name})"


def make(n: int = 3) -> tuple[PoolCore[Member, Waiter], list[Member]]:
    members = [Member(str(i)) for i in range(n)]
    return PoolCore(members), members


def test_members_are_fixed_and_all_idle_at_first():
    core, members = make(3)
    assert core.members == tuple(members)
    assert list(core.idle) == members
    assert not any(m._lent for m in members)
    assert not core.waiters
    assert not core.closed


def test_lend_in_ring_order_least_recently_returned_first():
    core, (a, b, c) = make(3)
    assert core.lend() is a
    assert core.lend() is b
    assert a._lent
    assert b._lent
    assert not c._lent
    assert core.give_back(a) is None
    assert not a._lent
    # c has been idle longest, then a.
    assert core.lend() is c
    assert core.lend() is a
    assert core.lends == 4


def test_lend_none_when_all_lent():
    core, _members = make(2)
    core.lend()
    core.lend()
    assert core.lend() is None
    assert core.lends == 2


def test_give_back_serves_waiters_first_come_first_served():
    core, (a,) = make(1)
    assert core.lend() is a
    first, second, third = Waiter("1"), Waiter("2"), Waiter("3")
    for waiter in (first, second, third):
        assert core.lend() is None
        core.enqueue(waiter)
    assert core.waits == 3
    assert core.give_back(a) is first
    assert first.member is a
    assert a._lent  # handed over directly, never idle in between
    assert not core.idle
    assert core.give_back(a) is second
    assert core.give_back(a) is third
    assert core.give_back(a) is None
    assert list(core.idle) == [a]
    assert core.lends == 4


def test_cancel_withdraws_a_waiter():
    core, (a,) = make(1)
    core.lend()
    w1, w2 = Waiter("1"), Waiter("2")
    core.enqueue(w1)
    core.enqueue(w2)
    assert core.cancel(w1) is True
    assert core.timeouts == 1
    assert core.give_back(a) is w2
    assert w1.member is None


def test_cancel_after_being_served_is_false():
    core, (a,) = make(1)
    core.lend()
    waiter = Waiter()
    core.enqueue(waiter)
    core.give_back(a)
    assert core.cancel(waiter) is False
    assert core.timeouts == 0
    assert waiter.member is a


def test_cancel_after_close_is_false():
    core, _ = make(1)
    core.lend()
    waiter = Waiter()
    core.enqueue(waiter)
    _idle, woken = core.close()
    assert woken == [waiter]
    assert core.cancel(waiter) is False
    assert core.timeouts == 0


def test_close_returns_idle_members_and_waiters():
    core, (a, b) = make(2)
    idle, waiters = core.close()
    assert idle == [a, b]
    assert waiters == []
    assert core.closed
    assert not core.idle


def test_close_wakes_every_waiter_with_no_member():
    core, (a,) = make(1)
    assert core.lend() is a
    w1, w2 = Waiter("1"), Waiter("2")
    core.enqueue(w1)
    core.enqueue(w2)
    idle, waiters = core.close()
    assert idle == []
    assert waiters == [w1, w2]
    assert w1.member is None
    assert w2.member is None
    assert not core.waiters
    # The lent member comes back later and stays out.
    assert core.give_back(a) is None
    assert not core.idle


def test_lend_after_close_raises_pool_closed():
    core, _ = make(2)
    core.close()
    with pytest.raises(gocp.PoolClosed):
        core.lend()
    assert core.lends == 0


def test_close_is_idempotent():
    core, members = make(2)
    assert core.close() == (members, [])
    assert core.close() == ([], [])
    assert core.closed


def test_give_back_after_close_keeps_member_out():
    core, (a, b) = make(2)
    core.lend()
    idle, _ = core.close()
    assert idle == [b]
    assert core.give_back(a) is None
    assert not a._lent
    assert not core.idle
    with pytest.raises(gocp.PoolClosed):
        core.lend()


def test_reset_after_fork():
    core, (a, b, c) = make(3)
    core.lend()  # a: lent to a thread that does not exist in the child
    core.lend()  # b: lent to the forking thread, which does
    core.enqueue(Waiter())
    assert core.lend() is c  # c: being closed by another thread's put(broken=True)
    core.reset_after_fork([b])
    assert not core.waiters
    assert list(core.idle) == [a, c]
    assert not a._lent
    assert b._lent
    closed, _ = make(1)
    closed.close()
    closed.reset_after_fork([])
    assert not closed.idle


# -- a stateful model: the invariants hold under any sequence of calls --------------


class CoreMachine(RuleBasedStateMachine):
    lent = Bundle("lent")
    queued = Bundle("queued")

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.core: PoolCore[Member, Waiter] | None = None
        self.served: list[Waiter] = []
        self.model_queue: list[Waiter] = []
        self.lends = 0
        self.counter = 0

    @precondition(lambda self: self.core is None)
    @rule(size=st.integers(min_value=1, max_value=4))
    def make(self, size: int) -> None:
        self.size = size
        self.core, _ = make(size)

    @precondition(lambda self: self.core is not None)
    @rule(target=lent)
    def get(self) -> object:
        core = self.core
        assert core is not None
        if core.closed and not core.idle:
            with pytest.raises(gocp.PoolClosed):
                core.lend()
            return None
        member = core.lend()
        if member is not None:
            self.lends += 1
            assert member._lent
            return member
        self.counter += 1
        waiter = Waiter(str(self.counter))
        core.enqueue(waiter)
        self.model_queue.append(waiter)
        return None

    @precondition(lambda self: self.core is not None)
    @rule(member=consumes(lent))
    def put(self, member: Member | None) -> None:
        core = self.core
        assert core is not None
        if member is None:
            return
        waiter = core.give_back(member)  # broken or not: the core sees the same return
        if self.model_queue:
            expected = self.model_queue.pop(0)
            assert waiter is expected
            assert expected.member is member
            self.lends += 1
            self.served.append(expected)
        else:
            assert waiter is None

    @precondition(lambda self: self.core is not None and self.served)
    @rule(target=lent)
    def take_served(self) -> object:
        # A served waiter now holds its member: it becomes an ordinary lent member.
        waiter = self.served.pop(0)
        return waiter.member

    @precondition(lambda self: self.core is not None and bool(self.model_queue))
    @rule(index=st.integers(min_value=0))
    def time_out(self, index: int) -> None:
        core = self.core
        assert core is not None
        waiter = self.model_queue.pop(index % len(self.model_queue))
        before = core.timeouts
        assert core.cancel(waiter) is True
        assert core.timeouts == before + 1
        assert core.cancel(waiter) is False

    @precondition(lambda self: self.core is not None)
    @rule()
    def close(self) -> None:
        core = self.core
        assert core is not None
        idle_before = list(core.idle)
        idle, woken = core.close()
        assert idle == idle_before
        assert woken == self.model_queue
        assert all(w.member is None for w in woken)
        self.model_queue = []

    @invariant()
    def each_member_idle_xor_lent(self) -> None:
        core = self.core
        if core is None:
            return
        assert len(core.members) == self.size
        idle_ids = [id(m) for m in core.idle]
        assert len(idle_ids) == len(set(idle_ids)), "a member is idle twice"
        for member in core.members:
            assert not (member._lent and id(member) in idle_ids)

    @invariant()
    def no_idle_member_while_someone_waits(self) -> None:
        core = self.core
        if core is None:
            return
        assert not (core.idle and core.waiters)
        assert list(core.waiters) == self.model_queue

    @invariant()
    def counters_agree(self) -> None:
        core = self.core
        if core is None:
            return
        assert core.lends == self.lends
        if not core.closed:
            lent = sum(1 for m in core.members if m._lent)
            assert lent + len(core.idle) == self.size


TestCoreMachine = CoreMachine.TestCase
