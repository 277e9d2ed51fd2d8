"""The interrupt harness (``tests/interrupts.py``) against CPython itself.

The reference: a Python signal handler that CPython runs at each of its own
eval-breaker checks. ``_cpython`` simulates a signal (``_thread.interrupt_main``)
from inside the handler, through a dict's ``__missing__`` so that nothing
checks before the handler returns; the next check runs the handler again. The
handler records where it ran, and can raise there. Samples are compiled
afresh for each run, so CPython runs them cold (unspecialized), as the
harness's tracer makes it do.

Every test runs here, or in a child process when this process is traced
(``coverage run``, a debugger): the harness replaces a tracer while it runs,
and a traced process checks differently (a traced function's entry check is
repeated, which the reference handler would loop on).
"""

from __future__ import annotations

import _thread
import dis
import functools
import gc
import itertools
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator

import pytest
from interrupts import (
    SUPPORTED,
    HarnessError,
    Interrupted,
    Outcome,
    Point,
    count_points,
    each_interrupt,
    record_points,
    run_interrupted,
    waits,
)

pytestmark = pytest.mark.skipif(
    not SUPPORTED, reason="the harness reproduces CPython 3.11's eval-breaker checks"
)

_TESTS = os.path.dirname(os.path.abspath(__file__))


def isolated(test: Callable[[], None]) -> Callable[[], None]:
    """Run ``test`` here, or in a child process if this one is traced (see the docstring)."""

    @functools.wraps(test)
    def wrapper() -> None:
        if sys.gettrace() is None:
            test()
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            " import test_interrupts_harness as m; m.run_here(sys.argv[2])"
        )
        child = subprocess.run(
            [sys.executable, "-c", code, _TESTS, test.__name__],
            capture_output=True,
            text=True,
            timeout=50,
            env=env,
            check=False,
        )
        assert child.returncode == 0, f"in a child process:\n{child.stdout}{child.stderr}"

    return wrapper


def run_here(name: str) -> None:
    """The child process's side of ``isolated``."""
    assert sys.gettrace() is None, "the child process is traced too"
    globals()[name].__wrapped__()


# -- CPython's own checks -----------------------------------------------------------------------

_SIGNAL = signal.SIGUSR2


class _Trip(dict[int, None]):
    """``_trip[signum]`` simulates that signal from C, with no eval-breaker check after it."""

    __missing__ = staticmethod(_thread.interrupt_main)


_trip = _Trip()


def _cpython(fn: Callable[[], object], stop: int = -1) -> tuple[list[tuple[str, int]], str]:
    """Run ``fn`` untraced: where CPython checked (function, offset), and how ``fn`` ended.

    With ``stop`` >= 0, the handler raises KeyboardInterrupt at that check.
    """
    assert sys.gettrace() is None
    assert threading.current_thread() is threading.main_thread()
    log: list[tuple[str, int]] = []
    state = {"on": True}

    def handler(signum: int, frame: types.FrameType | None) -> None:
        if not state["on"] or frame is None:
            return None
        log.append((frame.f_code.co_qualname, frame.f_lasti))
        if len(log) - 1 == stop:
            state["on"] = False
            raise KeyboardInterrupt
        return _trip[_SIGNAL]  # last: nothing may check before the handler returns

    previous = signal.signal(_SIGNAL, handler)
    collecting = gc.isenabled()
    gc.disable()  # as the harness does: what the collector runs would add checks
    ended = "returned"
    try:
        _trip[_SIGNAL]
        fn()
    except KeyboardInterrupt:
        ended = "raised"
    finally:
        state["on"] = False  # first: a check runs the handler once more
        len(())  # that check
        signal.signal(_SIGNAL, previous)
        if collecting:
            gc.enable()
    return log, ended


SAMPLES = """
import collections
import functools
import gc
import threading

log = []


def callee(*args):
    return 1


class C:
    def __init__(self):
        self.x = 1


class Slotted:
    __slots__ = ()


class K:
    def m(self):
        return 2

    def __call__(self):
        return 3

    @property
    def prop(self):
        return 4

    def __add__(self, other):
        return 5

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class Awaitable:
    def __await__(self):
        yield 1


def gen():
    yield 1
    yield 2


def gen2():
    yield from gen()
    yield 3


def gen_finally():
    try:
        yield 1
        yield 2
    finally:
        log.append("gen finally")


def s_c_calls():
    log.append(1)
    x = len(log)
    log.append(x)


def s_python_call():
    x = callee()
    y = x
    return y


def s_while():
    i = 0
    while i < 3:
        i += 1


def s_for():
    for _ in range(3):
        pass


def s_nested_loops():
    i = 0
    while i < 2:
        j = 0
        while j < 2:
            j += 1
        i += 1


def s_while_pop():
    items = [1, 2]
    while items:
        items.pop()


def s_classes():
    a = C()
    b = Slotted()
    c = K()
    return a, b, c


def s_star_calls():
    x = callee(*(1, 2))
    y = callee(**{})
    return x, y


def s_partial():
    return functools.partial(callee)()


def s_methods():
    k = K()
    k.m()
    k()
    k.prop  # noqa
    return k + k


def s_with():
    lock = threading.Lock()
    with lock:
        x = 1
    with K():
        pass
    return x


def s_lock_try_finally():
    lock = threading.Lock()
    try:
        lock.acquire()
        log.append("held")
    finally:
        lock.release()
        log.append(lock.locked())


def s_generators():
    for _ in gen():
        pass
    list(gen2())
    next(iter([1]))


def s_generator_finally():
    g = gen_finally()
    try:
        for v in g:
            log.append(v)
    finally:
        g.close()


def s_coroutine():
    async def co():
        await Awaitable()
        return 5

    c = co()
    try:
        c.send(None)
        c.send(None)
    except StopIteration as e:
        log.append(e.value)


def s_comprehensions():
    return [i for i in range(3) if i] + [callee() for _ in (1,)]


def s_lambda():
    f = lambda: callee()  # noqa
    return f()


def s_deque():
    d = collections.deque()
    d.append(1)
    d.popleft()
    return dict(a=1)


def s_super():
    class A:
        def f(self):
            return 1

    class B(A):
        def f(self):
            return super().f()

    return B().f()


def s_continue_in_try():
    n = 0
    try:
        while True:
            try:
                n += 1
                if n > 2:
                    break
                {}[n]
            except KeyError:
                continue
    finally:
        log.append("finally")


def s_while_try():
    n = 0
    try:
        while n < 3 and n != 7:
            try:
                n += 1
            except KeyError as e:
                log.append(e)
    finally:
        log.append("finally")


def s_return_class_in_try():
    try:
        return C()
    finally:
        log.append("finally")


def s_return_c_in_try():
    try:
        return len(log)
    finally:
        log.append("finally")


def s_return_in_with():
    lock = threading.Lock()
    try:
        with lock:
            return collections.deque()
    finally:
        log.append(lock.locked())


def s_swallow():
    for i in range(2):
        try:
            log.append(i)
        except KeyboardInterrupt:
            log.append("caught")
"""

_SAMPLE_NAMES = [
    line[4:].split("(")[0] for line in SAMPLES.splitlines() if line.startswith("def s_")
]


def _sample(name: str) -> tuple[Callable[[], object], list[object]]:
    """A freshly compiled (cold) sample function and its ``log``."""
    namespace: dict[str, object] = {}
    exec(compile(SAMPLES, "<samples>", "exec"), namespace)
    return namespace[name], namespace["log"]  # type: ignore[return-value]


def _at(point: Point | None) -> tuple[str, int] | None:
    return None if point is None else (point.function, point.offset)


_ENDED = {Outcome.RAISED: "raised", Outcome.SWALLOWED: "returned", Outcome.NOT_REACHED: "returned"}


@isolated
def test_points_are_cpythons_checks() -> None:
    """For every sample, the harness's points are the checks CPython makes, in order."""
    for name in _SAMPLE_NAMES:
        checks, _ = _cpython(_sample(name)[0])
        points = [_at(p) for p in record_points(_sample(name)[0])]
        assert points == checks, name


@isolated
def test_interrupts_land_and_unwind_as_in_cpython() -> None:
    """At each point: same place, same handlers run, same outcome as a real handler raising."""
    for name in _SAMPLE_NAMES:
        index = 0
        while True:
            fn, log = _sample(name)
            checks, ended = _cpython(fn, stop=index)
            real = (checks[index] if index < len(checks) else None, ended, log)
            fn, log = _sample(name)
            result = run_interrupted(fn, index)
            harness = (_at(result.point), _ENDED[result.outcome], log)
            assert harness == real, f"{name}: {result}"
            assert result.point is None or result.point.exact, result
            if not result.fired:
                break
            index += 1


@isolated
def test_each_interrupt_replays_like_cpython() -> None:
    for name in _SAMPLE_NAMES:
        results = list(each_interrupt(lambda name=name: _logged(*_sample(name))))
        assert [r.index for r in results] == list(range(len(results)))
        for result in results:
            fn, log = _sample(name)
            checks, ended = _cpython(fn, stop=result.index)
            real = (checks[result.index], ended, log)
            assert result.run.log is not None  # type: ignore[attr-defined]
            harness = (_at(result.point), _ENDED[result.outcome], result.run.log)  # type: ignore[attr-defined]
            assert harness == real, f"{name}: {result}"


def _logged(fn: Callable[[], object], log: list[object]) -> Callable[[], object]:
    fn.log = log  # type: ignore[attr-defined]
    return fn


# -- the interrupt points, on small examples ----------------------------------------------------

_a: list[int] = []
_b: list[int] = []


def _plain() -> None:
    _a.append(1)  # point: append
    x = len(_a)  # point: len
    _b.append(x)  # point: append x


def _line(marker: str) -> int:
    with open(__file__, encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if text.rstrip().endswith(f"# point: {marker}"):
                return number
    raise AssertionError(marker)


@isolated
def test_points_after_each_c_call_and_not_between_instructions() -> None:
    points = record_points(_plain)
    assert [(p.kind, p.opname, p.callee) for p in points] == [
        ("entry", "RESUME", None),
        ("call", "CALL", "list.append"),
        ("call", "CALL", "len"),
        ("call", "CALL", "list.append"),
    ]
    assert [p.lineno for p in points[1:]] == [_line("append"), _line("len"), _line("append x")]
    # Only the CALLs check: nothing between one and the next (no LOAD, STORE, POP_TOP).
    calls = [i.offset for i in dis.get_instructions(_plain) if i.opname == "CALL"]
    assert [p.offset for p in points[1:]] == calls


def _caller() -> int:
    value = _callee()
    value += 1
    return value


def _callee() -> int:
    return 1


@isolated
def test_python_call_return_is_not_a_point_but_the_entry_is() -> None:
    points = record_points(_caller)
    assert [(p.kind, p.function) for p in points] == [("entry", "_caller"), ("entry", "_callee")]


class _Init:
    def __init__(self) -> None:
        self.ready = True


def _gen() -> Iterator[int]:
    yield 1
    yield 2


def _not_inlined() -> None:
    _Init()
    functools.partial(_callee)()
    _callee(*())
    _gen()  # creating a generator: no check


@isolated
def test_calls_that_are_not_inlined_end_with_a_point() -> None:
    points = record_points(_not_inlined)
    assert [(p.kind, p.function, p.callee) for p in points] == [
        ("entry", "_not_inlined", None),
        ("entry", "_Init.__init__", None),
        ("call", "_not_inlined", "_Init"),
        ("call", "_not_inlined", "partial"),
        ("entry", "_callee", None),
        ("call", "_not_inlined", "partial object"),
        ("entry", "_callee", None),
        ("call", "_not_inlined", "_callee"),
    ]


def _loops() -> int:
    i = 0
    while i < 3:
        i += 1
    for _ in range(2):
        i += 1
    return i


@isolated
def test_loop_back_edges_are_points() -> None:
    points = record_points(_loops)
    assert [(p.kind, p.opname) for p in points] == [
        ("entry", "RESUME"),
        ("loop", "POP_JUMP_BACKWARD_IF_TRUE"),  # the ``while`` goes back twice
        ("loop", "POP_JUMP_BACKWARD_IF_TRUE"),
        ("call", "CALL"),  # range(2)
        ("loop", "JUMP_BACKWARD"),  # the ``for`` goes back after each item
        ("loop", "JUMP_BACKWARD"),
    ]


def _generators() -> list[int]:
    return [*_gen(), *_outer()]


def _outer() -> Iterator[int]:
    yield from _gen()


@isolated
def test_generator_resumes_are_points_but_not_after_yield_from() -> None:
    points = record_points(_generators)
    assert [(p.kind, p.function) for p in points] == [
        ("entry", "_generators"),
        ("entry", "_gen"),
        ("resume", "_gen"),
        ("resume", "_gen"),
        ("entry", "_outer"),
        ("entry", "_gen"),
        ("resume", "_gen"),  # _outer resumes after ``yield from``: no check there
        ("resume", "_gen"),
    ]


# -- locks --------------------------------------------------------------------------------------


class _Locked:
    """A lock and a counter changed under it; the lock must never stay held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def safe(self) -> None:
        try:
            self.lock.acquire()
            self.count += 1
        finally:
            self.lock.release()

    def unsafe(self) -> None:
        self.lock.acquire()  # point: acquired
        try:
            self.count += 1
        finally:
            self.lock.release()

    def with_lock(self) -> None:
        with self.lock:
            self.count += 1


@isolated
def test_acquire_inside_try_finally_never_leaves_the_lock_held() -> None:
    results = list(each_interrupt(lambda: _Locked().safe))
    assert [(r.point.kind, r.point.callee) for r in results if r.point] == [
        ("entry", None),
        ("call", "lock.acquire"),
        ("call", "lock.release"),
    ]
    for result in results:
        assert result, result
        assert not result.run.__self__.lock.locked(), result  # type: ignore[attr-defined]


@isolated
def test_acquire_before_try_is_caught_right_after_acquire() -> None:
    held = [r for r in each_interrupt(lambda: _Locked().unsafe) if r.run.__self__.lock.locked()]  # type: ignore[attr-defined]
    assert [(r.point.kind, r.point.callee, r.point.lineno) for r in held if r.point] == [
        ("call", "lock.acquire", _line("acquired"))
    ]


@isolated
def test_with_lock_has_no_point_between_acquire_and_the_block() -> None:
    for result in each_interrupt(lambda: _Locked().with_lock):
        assert not result.run.__self__.lock.locked(), result  # type: ignore[attr-defined]


def _waits_for_lock(lock: threading.Lock) -> None:
    if lock.acquire(timeout=1.0):  # a timed wait: a real signal could interrupt it
        lock.release()


@isolated
def test_blocking_calls_are_opt_in_points_before_they_take_effect() -> None:
    lock = threading.Lock()
    assert count_points(functools.partial(_waits_for_lock, lock)) == 3
    points = record_points(functools.partial(_waits_for_lock, lock), blocking=waits)
    assert [(p.kind, p.callee) for p in points] == [
        ("entry", None),
        ("blocking", "lock.acquire"),
        ("call", "lock.acquire"),
        ("call", "lock.release"),
    ]
    result = run_interrupted(functools.partial(_waits_for_lock, lock), 1, blocking=waits)
    assert result
    assert result.point
    assert result.point.kind == "blocking"
    assert not lock.locked()
    assert waits(threading.Lock().acquire)
    assert waits(threading.RLock().acquire)
    assert not waits(threading.Lock().release)
    assert not waits(len)


# -- results, errors and the state left behind --------------------------------------------------


class Boom(Exception):
    """A stand-in for KeyboardInterrupt."""


@isolated
def test_exception_type_and_location_are_reported() -> None:
    result = run_interrupted(_plain, 2, exc=Boom)
    assert isinstance(result, Interrupted)
    assert result
    assert result.outcome is Outcome.RAISED
    assert result.fired
    assert isinstance(result.exception, Boom)
    assert result.point is not None
    assert (result.point.index, result.point.kind, result.point.callee) == (2, "call", "len")
    assert result.point.where == f"{__file__}:{_line('len')}"
    assert (result.point.function, result.point.opname) == ("_plain", "CALL")
    text = str(result)
    assert f"{__file__}:{_line('len')}" in text
    assert "_plain" in text
    assert "after len" in text
    assert "raised" in text


@isolated
def test_points_past_the_end_are_not_reached() -> None:
    count = count_points(_plain)
    assert run_interrupted(_plain, count - 1)
    result = run_interrupted(_plain, count)
    assert not result
    assert not result.fired
    assert (result.outcome, result.point, result.exception) == (Outcome.NOT_REACHED, None, None)


def _swallows() -> None:
    try:
        _a.append(1)
    except KeyboardInterrupt:
        pass


@isolated
def test_a_swallowed_interrupt_is_reported_as_such() -> None:
    result = run_interrupted(_swallows, 1)
    assert result.outcome is Outcome.SWALLOWED
    assert result.fired
    assert not result
    assert isinstance(result.exception, KeyboardInterrupt)
    assert result.point is not None
    assert result.point.callee == "list.append"


def _fails() -> None:
    _a.append(1)
    raise ValueError("not an interrupt")


def _fails_when_interrupted() -> None:
    try:
        _a.append(1)
    finally:
        raise ValueError("cleanup failed")  # hides the interrupt


@isolated
def test_other_exceptions_propagate() -> None:
    with pytest.raises(ValueError, match="not an interrupt"):
        run_interrupted(_fails, 5)
    with pytest.raises(ValueError, match="not an interrupt"):
        count_points(_fails)
    with pytest.raises(ValueError, match="cleanup failed") as caught:
        run_interrupted(_fails_when_interrupted, 1)
    assert isinstance(caught.value.__context__, KeyboardInterrupt)
    assert any("after list.append returned" in note for note in caught.value.__notes__)
    with pytest.raises(ValueError, match="point"):
        run_interrupted(_plain, -1)


@isolated
def test_the_collector_is_off_during_a_run_and_restored() -> None:
    states: list[bool] = []
    count_points(lambda: states.append(gc.isenabled()))
    assert states == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        count_points(_plain)
        assert not gc.isenabled()
    finally:
        gc.enable()


@isolated
def test_point_counts_are_stable_even_once_the_code_is_warm() -> None:
    counts = {count_points(_loops) for _ in range(5)}
    for _ in range(2000):  # let CPython specialize it: the tracer runs the generic code
        _loops()
    counts |= {count_points(_loops) for _ in range(5)}
    assert counts == {6}


@isolated
def test_tracing_is_restored_on_every_path() -> None:
    seen: list[str] = []

    def spy(frame: types.FrameType, event: str, arg: object) -> object:
        seen.append(event)
        return None

    def profiler(frame: types.FrameType, event: str, arg: object) -> None:
        return None

    sys.settrace(spy)
    sys.setprofile(profiler)
    try:
        count_points(_plain)
        assert sys.gettrace() is spy
        assert sys.getprofile() is profiler
        for index in (0, 2, 99):
            run_interrupted(_plain, index)
            assert sys.gettrace() is spy
            assert sys.getprofile() is profiler
        run_interrupted(_swallows, 1)
        assert sys.gettrace() is spy
        with pytest.raises(ValueError):
            run_interrupted(_fails, 9)
        assert sys.gettrace() is spy
        list(each_interrupt(lambda: _plain))
        assert sys.gettrace() is spy
        assert sys.getprofile() is profiler
        seen.clear()
        _callee()
        assert seen == ["call"], "the previous tracer works again"
    finally:
        sys.settrace(None)
        sys.setprofile(None)


def _in_other_thread() -> None:
    _plain()
    worker = threading.Thread(target=_plain)
    worker.start()
    worker.join()


@isolated
def test_only_the_calling_thread_is_traced() -> None:
    points = record_points(_in_other_thread)
    assert "_plain" in {p.function for p in points}
    plain = sum(1 for p in points if p.function == "_plain")
    assert plain == count_points(_plain), "the worker's run of _plain is not counted"
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(count_points(_plain)))
    worker.start()
    worker.join()
    assert results == [count_points(_plain)]
    assert sys.gettrace() is None


@isolated
def test_include_selects_the_frames_whose_points_count() -> None:
    def only_caller(frame: types.FrameType) -> bool:
        return frame.f_code.co_name == "_not_inlined"

    points = record_points(_not_inlined, include=only_caller)
    assert {p.function for p in points} == {"_not_inlined"}
    assert [p.kind for p in points] == ["entry", "call", "call", "call", "call"]


def _checks_twice() -> None:
    for i in range(2):
        _a.append(i)


@isolated
def test_each_interrupt_yields_every_point_in_order() -> None:
    expected = record_points(_checks_twice)
    results = list(each_interrupt(lambda: _checks_twice))
    assert [r.point for r in results] == expected
    assert all(r.outcome is Outcome.RAISED for r in results)


@isolated
def test_a_nondeterministic_run_is_reported() -> None:
    runs = itertools.count()

    def setup() -> Callable[[], object]:
        n = next(runs)

        def run() -> None:
            if n % 2 == 0:
                _a.append(n)
            len(_a)

        return run

    with pytest.raises(HarnessError, match="nondeterministic"):
        list(each_interrupt(setup))


def _returns_failing_call() -> int:
    try:
        return len(5)  # type: ignore[arg-type]
    except TypeError:
        return -1


@isolated
def test_run_interrupted_reports_what_it_cannot_aim_at() -> None:
    # ``return len(5)``: raising after the call would skip the ``except``, so the exception
    # is armed for the call's own check; but the call fails, and never checks.
    points = record_points(_returns_failing_call)
    assert [p.kind for p in points] == ["entry"]
    with pytest.raises(HarnessError, match="each_interrupt"):
        run_interrupted(_returns_failing_call, 1)
    assert [r.index for r in each_interrupt(lambda: _returns_failing_call)] == [0]


def _formats() -> str:
    return str(5)


@isolated
def test_str_and_repr_also_run_handlers_which_is_not_modelled() -> None:
    # The documented gap: PyObject_Str calls PyErr_CheckSignals, so CPython also runs the
    # handler inside str(), before the check that ends the call; the harness has only that one.
    checks, _ = _cpython(_formats)
    points = [_at(p) for p in record_points(_formats)]
    call = points[-1]
    assert [c for c in checks if c != call] == points[:-1]
    assert checks.count(call) > 1
