"""A hypothesis stateful test: a real pool of 3 against a model of what it must do.

The model knows which members are lent, the order in which idle members
will be lent again (a ring: least recently returned first), and whether the
pool is closed. Each rule does one thing to the real pool (get with
``timeout=0`` or a short timeout, put, put broken, double put, foreign put,
close, a round trip or an abort on a held member) and checks the outcome
against the model; the invariants check the gauges after every step.
"""

from __future__ import annotations

from collections import deque

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from invariants import MARGIN, echo_round_trip, within

import gocp
from gocp.testing import EchoServer

SIZE = 3


class PoolModel(RuleBasedStateMachine):
    server: EchoServer  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.pool = gocp.new(self.server.address, size=SIZE, io_timeout=5, dial_timeout=2)
        self.foreign = gocp.new(self.server.address, size=1)
        self.held: list[gocp.PersistentConn] = []
        # Members in the order the pool will lend them; None: not seen yet.
        self.idle: deque[gocp.PersistentConn | None] = deque([None] * SIZE)
        self.known: set[int] = set()
        self.returned: list[gocp.PersistentConn] = []  # members seen and not held now
        self.closed = False
        self.used: set[int] = set()  # held members that did I/O during their current lend

    # -- lending -----------------------------------------------------------------

    def _expect_lend(self, conn: gocp.PersistentConn) -> None:
        expected = self.idle.popleft()
        if expected is None:
            assert id(conn) not in self.known, f"{conn!r} lent again out of ring order"
            self.known.add(id(conn))
        else:
            assert conn is expected, f"ring order: expected {expected!r}, got {conn!r}"
        assert all(conn is not other for other in self.held), f"{conn!r} lent twice"
        self.held.append(conn)
        self.used.discard(id(conn))
        self.returned = [m for m in self.returned if m is not conn]

    @rule()
    def get_now(self) -> None:
        if self.closed:
            with pytest.raises(gocp.PoolClosed):
                self.pool.get(timeout=0)
        elif self.idle:
            self._expect_lend(self.pool.get(timeout=0))
        else:
            with pytest.raises(gocp.PoolTimeout) as info:
                self.pool.get(timeout=0)
            assert info.value.timeout == 0

    @rule(timeout=st.sampled_from([0.001, 0.01]))
    def get_with_timeout(self, timeout: float) -> None:
        if self.closed:
            with within(0.0), pytest.raises(gocp.PoolClosed):
                self.pool.get(timeout=timeout)
        elif self.idle:
            with within(0.0):
                conn = self.pool.get(timeout=timeout)
            self._expect_lend(conn)
        else:
            with within(timeout, at_least=timeout), pytest.raises(gocp.PoolTimeout):
                self.pool.get(timeout=timeout)

    # -- returning -----------------------------------------------------------------

    def _give_back(self, index: int, broken: bool) -> None:
        conn = self.held.pop(index % len(self.held))
        self.pool.put(conn, broken=broken)
        self.returned.append(conn)
        if self.closed:
            assert not conn.connected, "a member put back to a closed pool was not closed"
        else:
            self.idle.append(conn)
            if broken:
                assert not conn.connected

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, SIZE - 1))
    def put(self, index: int) -> None:
        self._give_back(index, broken=False)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, SIZE - 1))
    def put_broken(self, index: int) -> None:
        self._give_back(index, broken=True)

    @precondition(lambda self: self.returned)
    @rule(index=st.integers(0, SIZE - 1), broken=st.booleans())
    def double_put(self, index: int, broken: bool) -> None:
        conn = self.returned[index % len(self.returned)]
        before = self.pool.stats()
        with pytest.raises(ValueError, match="not lent"):
            self.pool.put(conn, broken=broken)
        assert self.pool.stats() == before, "a rejected put changed the pool"

    @rule(broken=st.booleans())
    def foreign_put(self, broken: bool) -> None:
        before = self.pool.stats()
        if not self.foreign.closed:
            stranger = self.foreign.get(timeout=0)
            try:
                with pytest.raises(ValueError, match="another pool"):
                    self.pool.put(stranger, broken=broken)
            finally:
                self.foreign.put(stranger)
        with pytest.raises(TypeError, match="conn"):
            self.pool.put(object(), broken=broken)  # type: ignore[arg-type]
        assert self.pool.stats() == before, "a rejected put changed the pool"

    # -- closing and I/O -------------------------------------------------------------

    @rule()
    def close(self) -> None:
        with within(0.0, margin=MARGIN):
            self.pool.close()
        self.closed = True
        self.idle.clear()

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, SIZE - 1))
    def round_trip(self, index: int) -> None:
        """A held member works, also after the pool was closed (close leaves it alone);
        a closed pool does not dial, though."""
        conn = self.held[index % len(self.held)]
        self.used.add(id(conn))
        if self.closed and not conn.connected:
            with pytest.raises(gocp.PoolClosed):
                echo_round_trip(conn)
        else:
            echo_round_trip(conn)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, SIZE - 1))
    def abort_then_recover(self, index: int) -> None:
        """Abort a held member. If it did I/O in this lend, its next operation raises
        ConnectionBroken (a request may be half done); if not, nothing of this lend was
        sent and the shut-down socket is replaced silently, like a stale one. Either way
        it redials, unless the pool is closed."""
        conn = self.held[index % len(self.held)]
        was_connected = conn.connected
        conn.abort()
        if was_connected and id(conn) in self.used:
            with pytest.raises(gocp.ConnectionBroken):
                echo_round_trip(conn)
            assert not conn.connected
        self.used.add(id(conn))
        if not self.closed:
            echo_round_trip(conn)  # redials
        else:
            with pytest.raises(gocp.PoolClosed):
                echo_round_trip(conn)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def gauges_match_the_model(self) -> None:
        stats = self.pool.stats()
        assert stats.size == SIZE
        assert stats.closed == self.closed
        assert stats.waiting == 0
        assert stats.in_use == len(self.held)
        assert stats.idle == len(self.idle)
        if not self.closed:
            assert stats.idle + stats.in_use == stats.size
        assert len({id(conn) for conn in self.held}) == len(self.held)

    def teardown(self) -> None:
        for conn in self.held:
            self.pool.put(conn)
        self.pool.close()
        self.foreign.close()
        stats = self.pool.stats()
        assert stats.in_use == 0
        assert stats.connected == 0, "close left a connection open"


def test_pool_against_its_model():
    with EchoServer() as server:
        PoolModel.server = server
        run_state_machine_as_test(
            PoolModel,
            settings=settings(
                max_examples=200,
                stateful_step_count=40,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
