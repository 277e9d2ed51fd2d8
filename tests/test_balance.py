"""The cluster's decisions (``gocp._balance.Balancer``), free of I/O, with ``now`` passed in.

What users rely on, decided here: the smooth weighted round robin (each server
``weight`` turns per cycle, spread out), health from each server's dial backoff (down
for the backoff, then one trial at a time), the token bucket per server (``max_rps``,
``burst``, full at the start, exact at its boundaries), and the verdict of a pass in
which no server could lend (all down: fail fast with ``retry_in``; else how long
nothing can change without a put).

Times are binary fractions, so token counts are exact floats.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gocp._backoff import Backoff
from gocp._balance import BUSY, DIALLING, DOWN, RATE, REMOVED, Balancer, Server

RETRY = 1.0  # retry_min == retry_max: every backoff lasts exactly this long


class Dials:
    """A server's pool core as the balancer sees it: its dials in flight."""

    def __init__(self) -> None:
        self.dialling = 0


def make_balancer(
    weights: dict[str, int] | list[str] | None = None,
    *,
    rate: float | None = None,
    burst: float | None = None,
    now: float = 0.0,
) -> Balancer[None]:
    balancer: Balancer[None] = Balancer(rate=rate, burst=burst)
    items = weights.items() if isinstance(weights, dict) else [(a, 1) for a in weights or []]
    for address, weight in items:
        add(balancer, address, weight, now=now)
    return balancer


def add(balancer: Balancer[None], address: str, weight: int = 1, *, now: float = 0.0) -> None:
    balancer.add(
        address,
        weight,
        None,
        backoff=Backoff(RETRY, RETRY, lambda: 0.5, lease=2.0),
        core=Dials(),
        now=now,
    )


def fail(server: Server[None], now: float) -> None:
    """A dial to ``server`` began and failed at ``now`` (its pool's backoff records it)."""
    assert server.backoff.begin(now) == 0.0
    server.backoff.failed(now, now, ConnectionRefusedError("refused"))


def dials_of(server: Server[None]) -> Dials:
    dials = server.core
    assert isinstance(dials, Dials)
    return dials


def order(balancer: Balancer[None]) -> str:
    return "".join(str(server.address) for server in balancer.schedule)


# -- round robin ---------------------------------------------------------------------


def test_equal_weights_take_turns_in_the_order_added() -> None:
    assert order(make_balancer(["a", "b", "c"])) == "abc"


def test_weights_are_spread_smoothly_over_the_cycle() -> None:
    """nginx's smooth weighted round robin: 5,1,1 gives a a b a c a a, not a a a a a b c."""
    assert order(make_balancer({"a": 5, "b": 1, "c": 1})) == "aabacaa"
    assert order(make_balancer({"a": 2, "b": 1})) == "aba"


def test_a_common_factor_of_the_weights_shortens_the_cycle() -> None:
    assert order(make_balancer({"a": 40, "b": 20})) == "aba"
    assert order(make_balancer({"a": 3, "b": 3, "c": 3})) == "abc"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=6))
def test_each_server_has_its_weight_in_turns_per_cycle_spread_out(weights: list[int]) -> None:
    balancer = make_balancer({f"s{index}": weight for index, weight in enumerate(weights)})
    gcd = math.gcd(*weights)
    total = sum(weights) // gcd
    assert len(balancer.schedule) == total
    counts = Counter(server.address for server in balancer.schedule)
    assert counts == {f"s{index}": weight // gcd for index, weight in enumerate(weights)}
    # Spread: after any k turns each server has had within 2 of its exact share k*w/W
    # (a layout in blocks, a a a ... b b b, would be off by up to a whole block).
    seen: Counter[Hashable] = Counter()
    for turn, server in enumerate(balancer.schedule, 1):
        seen[server.address] += 1
        for index, weight in enumerate(weights):
            share = turn * (weight // gcd) / total
            assert abs(seen[f"s{index}"] - share) < 2


def test_adding_and_removing_servers_lays_the_schedule_out_again() -> None:
    balancer = make_balancer({"a": 1, "b": 1})
    add(balancer, "c", 2)
    assert Counter(order(balancer)) == {"a": 1, "b": 1, "c": 2}
    removed = balancer.remove("c")
    assert removed.removed
    assert removed.state(0.0) == REMOVED
    assert order(balancer) == "ab"
    assert "c" not in balancer.servers
    balancer.remove("a")
    balancer.remove("b")
    assert balancer.schedule == ()


def test_add_of_a_present_address_and_remove_of_a_missing_one_are_value_errors() -> None:
    balancer = make_balancer(["a"])
    before = balancer.schedule
    with pytest.raises(ValueError, match="'a' is in the cluster already"):
        add(balancer, "a")
    with pytest.raises(ValueError, match="'z' is not in the cluster"):
        balancer.remove("z")
    assert balancer.schedule == before
    assert list(balancer.servers) == ["a"]


def test_tickets_count_up_from_zero() -> None:
    balancer = make_balancer(["a"])
    assert [next(balancer.tickets) for _ in range(3)] == [0, 1, 2]


# -- health: down for the backoff, then one trial ---------------------------------------


def test_a_failed_dial_keeps_a_server_down_for_its_backoff_then_allows_one_trial() -> None:
    balancer = make_balancer(["a"])
    server = balancer.servers["a"]
    assert server.state(0.0) == "up"
    assert balancer.admit(server, 0.0, False) is None
    fail(server, 10.0)
    assert server.state(10.0) == DOWN
    assert balancer.admit(server, 10.0, False) == DOWN
    assert balancer.admit(server, 10.0 + RETRY - 2**-10, True) == DOWN
    # The backoff ends: the next get may try it (half-open).
    trial = 10.0 + RETRY
    assert server.state(trial) == "trial"
    assert balancer.admit(server, trial, False) is None
    # That get's dial is the probe: while it is in flight the server stays down for others.
    assert server.backoff.begin(trial) == 0.0
    dials_of(server).dialling += 1
    assert server.state(trial) == DOWN
    assert balancer.admit(server, trial, True) == DOWN
    # It worked: the server is up again at once.
    server.backoff.succeeded()
    dials_of(server).dialling -= 1
    assert server.state(trial) == "up"
    assert balancer.admit(server, trial, False) is None


def test_a_dial_in_flight_turns_away_only_an_impatient_get() -> None:
    balancer = make_balancer(["a"])
    server = balancer.servers["a"]
    dials_of(server).dialling = 1
    assert balancer.admit(server, 0.0, False) == DIALLING
    assert balancer.admit(server, 0.0, True) is None


def test_a_removed_server_is_never_admitted() -> None:
    balancer = make_balancer(["a", "b"])
    server = balancer.remove("a")
    assert balancer.admit(server, 0.0, True) == REMOVED


# -- the token bucket ----------------------------------------------------------------


def test_the_bucket_starts_full_and_refills_at_the_rate_exactly() -> None:
    balancer = make_balancer(["a"], rate=4.0, burst=2.0, now=0.0)
    server = balancer.servers["a"]
    assert server.tokens == 2.0
    assert balancer.admit(server, 0.0, False) is None
    assert balancer.admit(server, 0.0, False) is None
    assert balancer.admit(server, 0.0, False) == RATE
    assert balancer.next_token(server, 0.0) == 0.25
    # 3/16 s at 4 tokens a second is 0.75 token: not yet.
    assert balancer.admit(server, 0.1875, False) == RATE
    assert server.tokens == 0.75
    assert balancer.next_token(server, 0.1875) == 0.0625
    # At 1/4 s exactly, one token.
    assert balancer.admit(server, 0.25, False) is None
    assert server.tokens == 0.0
    assert balancer.admit(server, 0.25, False) == RATE


def test_the_bucket_never_holds_more_than_burst() -> None:
    balancer = make_balancer(["a"], rate=4.0, burst=3.0, now=0.0)
    server = balancer.servers["a"]
    for _ in range(3):
        assert balancer.admit(server, 0.0, False) is None
    assert balancer.next_token(server, 1000.0) == 0.0
    assert server.tokens == 3.0
    taken = 0
    while balancer.admit(server, 1000.0, False) is None:
        taken += 1
    assert taken == 3


def test_a_refund_gives_the_token_back_but_never_beyond_burst() -> None:
    balancer = make_balancer(["a"], rate=1.0, burst=2.0)
    server = balancer.servers["a"]
    assert balancer.admit(server, 0.0, False) is None
    assert server.tokens == 1.0
    balancer.refund(server)  # the server could not lend after all
    assert server.tokens == 2.0
    balancer.refund(server)
    assert server.tokens == 2.0


def test_burst_defaults_to_the_rate() -> None:
    balancer = make_balancer(["a"], rate=3.0)
    assert balancer.burst == 3.0
    assert balancer.servers["a"].tokens == 3.0


def test_a_clock_that_does_not_move_forward_adds_no_tokens() -> None:
    balancer = make_balancer(["a"], rate=1.0, burst=1.0, now=5.0)
    server = balancer.servers["a"]
    assert balancer.admit(server, 5.0, False) is None
    assert balancer.admit(server, 4.0, False) == RATE  # an earlier now
    assert server.tokens == 0.0


def test_without_a_rate_there_is_no_bucket() -> None:
    balancer = make_balancer(["a"])
    server = balancer.servers["a"]
    assert balancer.burst is None
    assert server.tokens == math.inf
    for _ in range(1000):
        assert balancer.admit(server, 0.0, False) is None
    assert balancer.next_token(server, 0.0) == 0.0
    balancer.refund(server)
    assert server.tokens == math.inf


def test_a_server_added_later_starts_with_a_full_bucket() -> None:
    balancer = make_balancer(["a"], rate=2.0, burst=2.0, now=0.0)
    add(balancer, "b", now=100.0)
    b = balancer.servers["b"]
    assert (b.tokens, b.stamp) == (2.0, 100.0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 4.0, 16.0, 100.0]),
    burst=st.sampled_from([1.0, 2.0, 5.0]),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 2**-8, 2**-4, 0.25, 1.0, 3.0]), st.integers(0, 4)),
        max_size=40,
    ),
)
def test_no_window_ever_gets_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    """However gets arrive: at most ``burst + rate * t`` are admitted in ``t`` seconds from
    the start, a get is refused only when the bucket holds less than one token, and the
    bucket stays within ``0..burst``."""
    balancer = make_balancer(["a"], rate=rate, burst=max(burst, 1.0), now=0.0)
    server = balancer.servers["a"]
    now = 0.0
    admitted = 0
    for dt, tries in steps:
        now += dt
        for _ in range(tries):
            before = min(server.tokens + (now - server.stamp) * rate, balancer.burst or 0)
            verdict = balancer.admit(server, now, False)
            if verdict is None:
                admitted += 1
                assert before >= 1.0
            else:
                assert verdict == RATE
                assert before < 1.0
                assert balancer.next_token(server, now) > 0.0
            assert 0.0 <= server.tokens <= (balancer.burst or 0)
        assert admitted <= (balancer.burst or 0) + rate * now + 1e-9


# -- the verdict of a pass in which nobody lent -----------------------------------------


def test_no_server_at_all_is_unavailable_with_nothing_to_wait_for() -> None:
    assert make_balancer().verdict({}, 0.0) == (True, 0.0)


def test_every_server_down_is_unavailable_until_the_first_backoff_ends() -> None:
    balancer = make_balancer(["a", "b"])
    fail(balancer.servers["a"], 0.0)
    fail(balancer.servers["b"], 0.5)
    reasons: dict[Hashable, tuple[str, object]] = {"a": (DOWN, None), "b": (DOWN, None)}
    assert balancer.verdict(reasons, 0.75) == (True, 0.25)
    # A server down (backing off) that this pass did not even look at counts as down.
    assert balancer.verdict({"a": (DOWN, None)}, 0.75) == (True, 0.25)


def test_a_server_busy_but_up_is_not_unavailable_and_only_a_put_helps() -> None:
    balancer = make_balancer(["a", "b"])
    fail(balancer.servers["a"], 0.0)
    reasons: dict[Hashable, tuple[str, object]] = {"a": (DOWN, None), "b": (BUSY, None)}
    # Not all down: wait for a put, or for a's backoff to end.
    assert balancer.verdict(reasons, 0.5) == (False, 0.5)
    only_busy: dict[Hashable, tuple[str, object]] = {"a": (BUSY, None), "b": (BUSY, None)}
    assert make_balancer(["a", "b"]).verdict(only_busy, 0.0) == (False, None)


def test_rate_limited_servers_wait_for_the_first_token() -> None:
    balancer = make_balancer(["a", "b"], rate=4.0, burst=1.0)
    a, b = balancer.servers["a"], balancer.servers["b"]
    assert balancer.admit(a, 0.0, False) is None
    assert balancer.admit(b, 0.125, False) is None
    reasons: dict[Hashable, tuple[str, object]] = {"a": (RATE, None), "b": (RATE, None)}
    assert balancer.verdict(reasons, 0.1875) == (False, 0.0625)  # a refills first


def test_the_verdict_ignores_removed_servers() -> None:
    balancer = make_balancer(["a", "b"])
    fail(balancer.servers["a"], 0.0)
    removed = balancer.remove("b")
    assert removed.removed
    assert balancer.verdict({"a": (DOWN, None)}, 0.0) == (True, RETRY)
