"""The keyed pool's decisions (``gocp._keys.KeyTable``), free of I/O, with ``now`` passed in.

A key is *busy* while its pool has a member lent or a ``get`` is on its way into it
(``find``/``admit`` until ``leave``). What users rely on, decided here:

- one pool per key, made once, on first use;
- with ``max_keys``, a new key evicts the least recently used key that is not busy,
  and never a busy one; when every key is busy the table says so and changes nothing;
- a key unused for ``idle_timeout`` and not busy is forgotten, never a busy one;
- the sweep says when it is due again.

A hypothesis state machine checks those rules over random sequences of gets, puts,
sweeps and clock moves.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gocp._keys import KeyEntry, KeyTable


class FakePool:
    """What the table holds per key: a pool with ``lent`` members (the shell's ``Pool``)."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.lent = 0

    def __repr__(self) -> str:
        return f"<FakePool {self.key!r} lent={self.lent}>"


def make_table(*, max_keys: int | None = None, idle: float | None = None) -> KeyTable[FakePool]:
    return KeyTable(lent=lambda pool: pool.lent > 0, max_keys=max_keys, idle_timeout=idle)


def use(table: KeyTable[FakePool], key: Hashable, now: float) -> KeyEntry[FakePool]:
    """A get that leaves at once without keeping a member (the key's pool is made if new)."""
    entry = table.find(key)
    if entry is None:
        entry, evicted = table.admit(key, now, FakePool)
        assert entry is not None
        assert not evicted
    table.leave(entry, now)
    return entry


def lend(table: KeyTable[FakePool], key: Hashable, now: float) -> KeyEntry[FakePool]:
    """A get that keeps a member of ``key`` (the shell's get: enter, lend, leave)."""
    entry = use(table, key, now)
    entry.pool.lent += 1
    return entry


# -- one pool per key -------------------------------------------------------------------


def test_a_key_gets_its_pool_on_first_use_and_keeps_it() -> None:
    table = make_table()
    made: list[Hashable] = []

    def make(key: Hashable) -> FakePool:
        made.append(key)
        return FakePool(key)

    assert table.find("a") is None  # unknown: the shell takes the locked path
    first, evicted = table.admit("a", 1.0, make)
    assert first is not None
    assert evicted == []
    assert made == ["a"]
    assert table.made == 1
    table.leave(first, 1.0)

    again = table.find("a")  # known: found without the lock, no new pool
    assert again is first
    table.leave(again, 2.0)
    second, evicted = table.admit("a", 3.0, make)  # two gets raced to make it: one pool
    assert second is first
    assert evicted == []
    table.leave(second, 3.0)
    assert made == ["a"]
    assert table.made == 1
    assert list(table.entries) == ["a"]


def test_a_get_in_flight_keeps_the_key_busy_until_it_leaves() -> None:
    table = make_table(max_keys=1)
    entry, _ = table.admit("a", 0.0, FakePool)  # entered, not left: busy
    assert entry is not None
    assert table.admit("b", 1.0, FakePool) == (None, [])
    table.leave(entry, 2.0)
    assert entry.used_at == 2.0
    b, evicted = table.admit("b", 3.0, FakePool)
    assert b is not None
    assert evicted == [entry]


def test_find_backs_off_from_a_key_being_evicted() -> None:
    """The handshake of the module docstring: a get that finds ``evicted`` set takes the
    locked path and does not hold the key."""
    table = make_table()
    entry = use(table, "a", 0.0)
    entry.evicted = True  # an eviction is deciding
    assert table.find("a") is None
    assert entry.entering == []  # the get announced itself and withdrew


# -- max_keys: evict the least recently used idle key ----------------------------------


def test_a_new_key_evicts_the_least_recently_used_idle_key() -> None:
    table = make_table(max_keys=3)
    a = use(table, "a", 1.0)
    use(table, "b", 2.0)
    use(table, "c", 3.0)
    use(table, "a", 4.0)  # a is now the most recent: b is the least
    d, evicted = table.admit("d", 5.0, FakePool)
    assert d is not None
    assert [entry.key for entry in evicted] == ["b"]
    assert evicted[0].evicted
    assert set(table.entries) == {"a", "c", "d"}
    assert table.entries["a"] is a
    assert table.evictions == 1
    assert table.made == 4


def test_eviction_skips_a_key_with_a_member_lent_or_a_get_in_flight() -> None:
    table = make_table(max_keys=3)
    lend(table, "a", 1.0)  # least recent, but lent
    b = table.find("b") or table.admit("b", 2.0, FakePool)[0]  # a get on its way in
    assert b is not None
    use(table, "c", 3.0)  # the most recent, idle: the only one that may go
    d, evicted = table.admit("d", 4.0, FakePool)
    assert d is not None
    assert [entry.key for entry in evicted] == ["c"]
    assert set(table.entries) == {"a", "b", "d"}
    assert not table.entries["a"].evicted
    assert not b.evicted


def test_a_full_table_of_busy_keys_refuses_a_new_key_and_changes_nothing() -> None:
    table = make_table(max_keys=2)
    a = lend(table, "a", 1.0)
    b = lend(table, "b", 2.0)
    made: list[Hashable] = []

    def make(key: Hashable) -> FakePool:
        made.append(key)
        return FakePool(key)

    assert table.admit("c", 3.0, make) == (None, [])
    assert made == []  # no pool was made for it
    assert table.entries == {"a": a, "b": b}
    assert not a.evicted
    assert not b.evicted
    assert (table.made, table.evictions) == (2, 0)
    # A known key is still served while the table is full.
    again, evicted = table.admit("a", 4.0, make)
    assert again is a
    assert evicted == []
    table.leave(a, 4.0)
    # A put frees b: now it may go, although a is older.
    b.pool.lent -= 1
    b.used_at = 0.5
    c, evicted = table.admit("c", 5.0, make)
    assert c is not None
    assert evicted == [b]


# -- idle keys are forgotten -----------------------------------------------------------


def test_sweep_forgets_a_key_exactly_at_its_idle_timeout() -> None:
    table = make_table(idle=10.0)
    a = use(table, "a", 0.0)
    use(table, "b", 5.0)
    assert table.sweep(9.999)[0] == []
    gone, _ = table.sweep(10.0)
    assert gone == [a]
    assert a.evicted
    assert set(table.entries) == {"b"}
    assert table.expired == 1


def test_sweep_is_due_when_the_next_idle_key_expires() -> None:
    """The sweep says when to run again: when the next key can expire (b, at 15), not a
    whole interval later."""
    table = make_table(idle=10.0)
    use(table, "a", 0.0)
    use(table, "b", 5.0)
    assert table.sweep(1.0) == ([], 10.0)
    _, due = table.sweep(10.0)
    assert due == 15.0


def test_sweep_never_forgets_a_busy_key_and_looks_again_an_interval_later() -> None:
    table = make_table(idle=10.0)
    lend(table, "lent", 0.0)
    entering = table.find("lent")  # also a second get on its way in
    assert entering is not None
    table.leave(entering, 0.0)
    busy = table.admit("entering", 0.0, FakePool)[0]  # a get between table and pool
    assert busy is not None
    gone, due = table.sweep(100.0)
    assert gone == []
    assert due == 110.0
    assert set(table.entries) == {"lent", "entering"}
    assert not busy.evicted
    assert table.expired == 0
    # Once the get leaves and the member comes back, the key expires from its last use.
    table.leave(busy, 100.0)
    table.entries["lent"].pool.lent = 0
    table.entries["lent"].used_at = 101.0
    assert table.sweep(109.0)[0] == []
    gone, _ = table.sweep(111.0)
    assert {entry.key for entry in gone} == {"entering", "lent"}
    assert table.entries == {}


def test_sweep_without_idle_timeout_or_keys_is_never_due() -> None:
    forever = make_table(idle=None)
    use(forever, "a", 0.0)
    assert forever.sweep(1e9) == ([], math.inf)
    assert list(forever.entries) == ["a"]
    empty = make_table(idle=1.0)
    assert empty.sweep(5.0) == ([], math.inf)


def test_clear_takes_every_key_out_and_finds_none_after() -> None:
    table = make_table(max_keys=5, idle=10.0)
    a = lend(table, "a", 0.0)
    b = use(table, "b", 0.0)
    gone = table.clear()
    assert gone == [a, b]
    assert a.evicted
    assert b.evicted
    assert table.entries == {}
    assert table.find("a") is None


# -- the rules over random histories ----------------------------------------------------

KEYS = ("k0", "k1", "k2", "k3", "k4")


class KeyTableMachine(RuleBasedStateMachine):
    """Gets (that keep a member or not), puts, sweeps and clock moves on a ``KeyTable``
    with ``max_keys`` and ``idle_timeout``, against a model of last uses and lends."""

    @initialize(max_keys=st.integers(1, 4), idle=st.sampled_from([1.0, 2.5, 10.0]))
    def start(self, max_keys: int, idle: float) -> None:
        self.table = make_table(max_keys=max_keys, idle=idle)
        self.now = 0.0
        self.used: dict[Hashable, float] = {}  # the model: key -> last use
        self.lent: dict[Hashable, int] = {}  # key -> members lent

    def busy(self, key: Hashable) -> bool:
        return self.lent.get(key, 0) > 0

    @rule(dt=st.sampled_from([0.0, 0.25, 1.0, 3.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(key=st.sampled_from(KEYS), keep=st.booleans())
    def get(self, key: Hashable, keep: bool) -> None:
        table = self.table
        entry = table.find(key)
        if entry is None:
            before = dict(table.entries)
            entry, evicted = table.admit(key, self.now, FakePool)
            if entry is None:
                # Refused only when full and every key is busy; nothing changed.
                assert len(before) == table.max_keys
                assert all(self.busy(k) for k in before)
                assert table.entries == before
                return
            if key not in before:
                assert len(evicted) == (1 if len(before) == table.max_keys else 0)
            for victim in evicted:
                assert not self.busy(victim.key), f"evicted {victim.key!r} with a member lent"
                idle = [k for k in before if not self.busy(k)]
                assert self.used[victim.key] == min(self.used[k] for k in idle)
                del self.used[victim.key]
                self.lent.pop(victim.key, None)
        table.leave(entry, self.now)
        self.used[key] = self.now
        if keep:
            entry.pool.lent += 1
            self.lent[key] = self.lent.get(key, 0) + 1

    @precondition(lambda self: any(n > 0 for n in self.lent.values()))
    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from([k for k, n in self.lent.items() if n > 0]))
        entry = self.table.entries[key]
        entry.pool.lent -= 1
        entry.used_at = self.now  # the shell's put
        self.lent[key] -= 1
        self.used[key] = self.now

    @rule()
    def sweep(self) -> None:
        idle_timeout = self.table.idle_timeout
        assert idle_timeout is not None
        gone, due = self.table.sweep(self.now)
        expected = {
            k for k, at in self.used.items() if at + idle_timeout <= self.now and not self.busy(k)
        }
        assert {entry.key for entry in gone} == expected
        for key in expected:
            del self.used[key]
            self.lent.pop(key, None)
        assert due > self.now or not self.used

    @invariant()
    def agrees_with_the_model(self) -> None:
        table = getattr(self, "table", None)
        if table is None:
            return
        assert set(table.entries) == set(self.used)
        assert len(table.entries) <= (table.max_keys or len(KEYS))
        assert table.made - table.evictions - table.expired == len(table.entries)
        for key, entry in table.entries.items():
            assert entry.used_at == self.used[key]
            assert entry.entering == []
            assert not entry.evicted
            assert entry.pool.lent == self.lent.get(key, 0)


TestKeyTableMachine = KeyTableMachine.TestCase
TestKeyTableMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("max_keys", [1, 2, 3])
def test_lru_eviction_order_over_a_round_of_new_keys(max_keys: int) -> None:
    """Keys made at times 0..n are evicted oldest first as new keys come."""
    table = make_table(max_keys=max_keys)
    for index in range(max_keys):
        use(table, f"old{index}", float(index))
    victims: list[Hashable] = []
    for index in range(max_keys):
        entry, evicted = table.admit(f"new{index}", 10.0 + index, FakePool)
        assert entry is not None
        table.leave(entry, 10.0 + index)
        victims.extend(victim.key for victim in evicted)
    assert victims == [f"old{index}" for index in range(max_keys)]
