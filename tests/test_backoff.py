"""Backoff between dial attempts: pure functions of (failures, bounds, random) and of ``now``.

No test here sleeps: the clock is a number passed in, the random source a function.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gocp._backoff import Backoff, backoff_delay, set_no_wait

bounds = st.tuples(
    st.floats(min_value=1e-6, max_value=100.0),
    st.floats(min_value=1e-6, max_value=1000.0),
).map(sorted)
failures = st.integers(min_value=1, max_value=10_000)
rand = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@pytest.fixture(autouse=True)
def waiting_enabled() -> Iterator[None]:
    """These tests are about waiting: make sure the global testing switch is off."""
    previous = set_no_wait(False)
    yield
    set_no_wait(previous)


# -- backoff_delay ---------------------------------------------------------------


@given(n=failures, b=bounds, r=rand)
def test_delay_within_retry_bounds(n, b, r):
    retry_min, retry_max = b
    delay = backoff_delay(n, retry_min, retry_max, r)
    assert retry_min <= delay <= retry_max


@given(n=failures, b=bounds, r=rand)
def test_delay_under_the_doubling_bound_and_in_its_upper_half(n, b, r):
    retry_min, retry_max = b
    bound = min(retry_max, retry_min * 2.0 ** min(n, 64))
    delay = backoff_delay(n, retry_min, retry_max, r)
    assert delay <= bound * (1 + 1e-12)
    assert delay >= bound / 2 * (1 - 1e-12)


@given(n=st.integers(min_value=1, max_value=30), b=bounds, r=rand)
def test_delay_formula(n, b, r):
    retry_min, retry_max = b
    bound = min(retry_max, retry_min * 2.0**n)
    expected = min(retry_max, max(retry_min, bound / 2 + r * bound / 2))
    assert math.isclose(backoff_delay(n, retry_min, retry_max, r), expected, rel_tol=1e-12)


@given(n=failures, b=bounds, r=rand)
def test_delay_never_shrinks_as_failures_grow(n, b, r):
    # With the same random draw, each further failure waits at least as long:
    # the cap only rises until it reaches retry_max, and then stays there.
    retry_min, retry_max = b
    assert backoff_delay(n, retry_min, retry_max, r) <= backoff_delay(
        n + 1, retry_min, retry_max, r
    )


@given(n=failures, b=bounds, r1=rand, r2=rand)
def test_delay_grows_with_the_random_draw(n, b, r1, r2):
    retry_min, retry_max = b
    low, high = sorted((r1, r2))
    assert backoff_delay(n, retry_min, retry_max, low) <= backoff_delay(
        n, retry_min, retry_max, high
    )


@given(b=bounds, r=rand)
def test_cap_reached_and_kept(b, r):
    retry_min, retry_max = b
    # Once retry_min * 2**n >= 2 * retry_max, even the lowest draw sits at retry_max / 2 or more.
    n = max(1, math.ceil(math.log2(2 * retry_max / retry_min)))
    for k in (n, n + 1, n + 50, 10_000):
        delay = backoff_delay(k, retry_min, retry_max, r)
        assert retry_max / 2 <= delay <= retry_max


def test_first_failure_waits_between_retry_min_and_twice_that():
    assert backoff_delay(1, 0.1, 10.0, 0.0) == pytest.approx(0.1)
    assert backoff_delay(1, 0.1, 10.0, 0.5) == pytest.approx(0.15)
    assert backoff_delay(1, 0.1, 10.0, 0.999999) == pytest.approx(0.2, rel=1e-5)


def test_known_sequence():
    # retry_min 0.1, retry_max 1.0, the top of each band: 0.2, 0.4, 0.8, then capped at 1.0.
    top = [backoff_delay(n, 0.1, 1.0, 1.0) for n in range(1, 7)]
    assert top == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    bottom = [backoff_delay(n, 0.1, 1.0, 0.0) for n in range(1, 7)]
    assert bottom == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("n", [0, -1, -100])
def test_no_failure_no_wait(n):
    assert backoff_delay(n, 0.1, 1.0, 0.5) == 0.0


def test_huge_failure_counts_do_not_overflow():
    assert backoff_delay(10**9, 1e-300, 5.0, 0.5) <= 5.0
    assert backoff_delay(10**9, 0.1, 5.0, 0.0) == pytest.approx(2.5)


def test_equal_bounds_give_a_constant_delay():
    for n in range(1, 20):
        assert backoff_delay(n, 0.3, 0.3, 0.7) == pytest.approx(0.3)


# -- Backoff: the state of one address --------------------------------------------------


class Draws:
    """A scripted random source: returns the given values in turn, then the last forever."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_fresh_backoff_dials_at_once():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    assert backoff.wait(0.0) == 0.0
    assert backoff.wait(1e9) == 0.0
    assert backoff.failures == 0


def test_first_failure_delay():
    draws = Draws(0.5)
    backoff = Backoff(0.1, 1.0, random=draws)
    delay = backoff.failed(now=100.0, started=99.9, error=ConnectionRefusedError())
    assert delay == pytest.approx(0.15)
    assert backoff.failures == 1
    assert draws.calls == 1
    assert backoff.wait(100.0) == pytest.approx(0.15)
    assert backoff.wait(100.1) == pytest.approx(0.05)
    assert backoff.wait(100.15) == 0.0
    assert backoff.wait(200.0) == 0.0
    assert isinstance(backoff.last_error, ConnectionRefusedError)


def test_growth_over_consecutive_failures():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    now, delays = 10.0, []
    for _ in range(6):
        started = now
        now += 0.01  # the dial itself took a little while
        delays.append(backoff.failed(now, started))
        assert backoff.wait(now) == pytest.approx(delays[-1])
        now += delays[-1]  # the next dial happens when the backoff allows it
        assert backoff.wait(now) == 0.0
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert backoff.failures == 6


def test_success_resets():
    backoff = Backoff(0.1, 1.0, random=Draws(1.0))
    for i in range(5):
        backoff.failed(now=float(i), started=float(i))
    assert backoff.failures == 5
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.last_error is None
    assert backoff.wait(5.0) == 0.0
    # The next failure starts from the first band again.
    assert backoff.failed(now=6.0, started=5.9) == pytest.approx(0.2)
    assert backoff.failures == 1


def test_overlapping_failures_count_once():
    # Three members dial at about the same time while the server is down.
    draws = Draws(0.0)
    backoff = Backoff(0.1, 1.0, random=draws)
    first = backoff.failed(now=10.00, started=9.90)
    second = backoff.failed(now=10.01, started=9.95)
    third = backoff.failed(now=10.02, started=9.99)
    assert backoff.failures == 1
    assert draws.calls == 1
    assert first == pytest.approx(0.1)
    # Those that overlapped report what is left of the one wait.
    assert second == pytest.approx(0.09)
    assert third == pytest.approx(0.08)
    # A dial that began after the counted failure is a new failure.
    assert backoff.failed(now=10.2, started=10.1) == pytest.approx(0.2)
    assert backoff.failures == 2


def test_overlapping_failure_keeps_the_first_error():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    first = ConnectionRefusedError("first")
    backoff.failed(now=1.0, started=0.9, error=first)
    backoff.failed(now=1.01, started=0.95, error=TimeoutError("overlapping"))
    assert backoff.last_error is first


def test_set_no_wait_removes_every_wait():
    backoff = Backoff(1.0, 10.0, random=Draws(0.9))
    backoff.failed(now=0.0, started=0.0)
    assert backoff.wait(0.0) > 0
    assert set_no_wait(True) is False
    try:
        assert backoff.wait(0.0) == 0.0
        # Failures are still counted, so stats and logs stay truthful.
        backoff.failed(now=2.0, started=1.5)
        assert backoff.failures == 2
        assert backoff.wait(2.0) == 0.0
    finally:
        assert set_no_wait(False) is True
    assert backoff.wait(2.0) > 0


@given(
    b=bounds,
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=50.0), st.booleans(), rand),
        min_size=1,
        max_size=40,
    ),
)
def test_backoff_model(b, steps):
    """Against any sequence of dials, the wait obeys the bounds and the count is right."""
    retry_min, retry_max = b
    draw = [0.0]
    backoff = Backoff(retry_min, retry_max, random=lambda: draw[0])
    now, expected_failures = 0.0, 0
    for gap, ok, r in steps:
        now += gap + backoff.wait(now)  # dial only when allowed
        assert backoff.wait(now) == 0.0
        draw[0] = r
        if ok:
            backoff.succeeded()
            expected_failures = 0
            assert backoff.wait(now) == 0.0
        else:
            delay = backoff.failed(now, started=now)
            expected_failures += 1
            # ``failed`` returns ``next_at - now``: exact up to the rounding of ``now``.
            exact = backoff_delay(expected_failures, retry_min, retry_max, r)
            assert retry_min <= exact <= retry_max
            assert math.isclose(delay, exact, rel_tol=1e-9, abs_tol=1e-12)
            assert backoff.wait(now) == delay
        assert backoff.failures == expected_failures


# -- begin(): one probe at a time while the address is failing -----------------------------


def test_begin_lets_everyone_dial_while_healthy():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    assert [backoff.begin(0.0) for _ in range(5)] == [0.0] * 5
    assert backoff.probing is False


def test_begin_one_probe_after_the_window():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    backoff.failed(now=10.0, started=9.9)
    assert backoff.begin(10.05) == pytest.approx(0.05)  # still in the window
    assert backoff.probing is False
    assert backoff.begin(10.1) == 0.0  # the probe
    assert backoff.probing is True
    # Others wait for its outcome: at most until its lease (retry_max by default) ends.
    assert backoff.begin(10.1) == pytest.approx(1.0)
    assert backoff.begin(10.5) == pytest.approx(0.6)


def test_a_probe_that_never_reports_stops_blocking_when_its_lease_ends():
    """An interrupted or vanished prober cannot make the outage permanent."""
    backoff = Backoff(0.1, 1.0, random=Draws(0.0), lease=5.0)
    backoff.failed(now=10.0, started=9.9)
    assert backoff.begin(10.1) == 0.0  # the probe, which then vanishes without a word
    assert backoff.begin(14.0) == pytest.approx(1.1)
    assert backoff.begin(15.1) == 0.0  # its lease is over: a new probe
    assert backoff.begin(15.2) == pytest.approx(4.9)


def test_abandoned_ends_only_its_own_probe():
    backoff = Backoff(0.1, 1.0, random=Draws(0.0), lease=5.0)
    backoff.failed(now=10.0, started=9.9)
    assert backoff.begin(10.1) == 0.0  # probe A (began at 10.1)
    backoff.abandoned(started=10.0)  # a dial that began before it is not the probe
    assert backoff.probing is True
    backoff.abandoned(started=10.1)
    assert backoff.probing is False
    assert backoff.begin(10.2) == 0.0  # a new probe at once


@pytest.mark.parametrize("outcome", ["failed", "succeeded", "abandoned"])
def test_the_probes_outcome_ends_it(outcome):
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    backoff.failed(now=10.0, started=9.9)
    assert backoff.begin(10.2) == 0.0
    if outcome == "failed":
        assert backoff.failed(now=10.3, started=10.2) == pytest.approx(0.2)
        assert backoff.begin(10.3) == pytest.approx(0.2)  # the next window
        assert backoff.begin(10.5) == 0.0  # then the next probe
    elif outcome == "succeeded":
        backoff.succeeded()
        assert [backoff.begin(10.3) for _ in range(3)] == [0.0] * 3  # healthy again
    else:
        backoff.abandoned()
        assert backoff.failures == 1
        assert backoff.begin(10.3) == 0.0  # a new probe may start
        assert backoff.probing is True


def test_an_overlapping_failure_does_not_end_the_probe():
    # Two members dialled together while the server was healthy; one failed (counted),
    # the window passed and a probe began; then the other, older dial fails too.
    backoff = Backoff(0.1, 1.0, random=Draws(0.0))
    backoff.failed(now=10.0, started=9.0)
    assert backoff.begin(10.2) == 0.0  # the probe
    backoff.failed(now=10.3, started=9.0)  # the old dial: overlapped, counted already
    assert backoff.failures == 1
    assert backoff.probing is True
    assert backoff.begin(10.3) == pytest.approx(0.9)  # still one probe in flight (lease 1.0)


def test_begin_with_no_wait_never_waits():
    backoff = Backoff(1.0, 10.0, random=Draws(0.5))
    backoff.failed(now=0.0, started=0.0)
    set_no_wait(True)
    try:
        assert [backoff.begin(0.0) for _ in range(3)] == [0.0] * 3
    finally:
        set_no_wait(False)
