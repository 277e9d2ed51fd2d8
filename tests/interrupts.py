"""Raise an exception at each point where CPython 3.11 can run a signal handler.

A Python signal handler that raises (``KeyboardInterrupt``) does not run
between any two bytecodes: the C handler only sets a flag, and the
interpreter runs the Python handler when it checks its "eval breaker". In
3.11 (``Python/ceval.c``) that happens, for the generic instructions, at:

- a function's entry (``RESUME`` 0) and a generator's resumption after
  ``yield`` (``RESUME`` 1); not after ``yield from``/``await`` (``RESUME``
  2, 3), nor when ``throw()`` resumes a generator, nor when a generator is
  created;
- the end of a ``CALL`` or ``CALL_FUNCTION_EX`` that returned normally,
  unless ``CALL`` ran its callee "inlined", which it does for Python
  functions (and bound methods of them). So the return from a C function, a
  class (even one with a Python ``__init__``), a ``functools.partial``, an
  object with ``__call__`` or ``f(*args)`` (never inlined in 3.11) is a
  point; the return from ``f(x)`` is not;
- a taken backward jump: ``JUMP_BACKWARD``, ``POP_JUMP_BACKWARD_IF_*``.

Nothing else checks: ``BEFORE_WITH`` does not (``with lock:`` cannot be
interrupted between acquiring the lock and entering the block), nor an
attribute, an operator or a subscript that runs Python code (only that
code's entry is a point), nor ``RETURN_VALUE``/``YIELD_VALUE``. Specialized
instructions check at a subset of these points (once warm, ``list.append``,
``len``, ``isinstance``... no longer check), so this generic set covers every
run; under a tracer CPython always runs the generic instructions, which also
makes the set the same from run to run. ``tests/test_interrupts_harness.py``
checks it against CPython itself, point by point.

Where the exception is raised matters as much: CPython picks the handler
(``except``/``finally``/``with``) from the offset of the checking instruction,
and for a backward jump from the instruction just before the jump's target.
So ``try: return C()`` runs its ``finally`` when interrupted after ``C()``
returned, and a ``continue`` jumping back to a loop that opens ``try: while
True: ...`` leaves without running that ``finally`` (3.11 and 3.12; fixed in
3.13). The harness lets CPython raise the exception itself where raising it
from the trace function would pick another handler: it arms an asynchronous
exception (``PyThreadState_SetAsyncExc``, its own thread) just before the
check.

How: ``sys.settrace`` with opcode events, on the frames that ``run()`` runs
(this thread only). 3.11 reports a function's ``call`` just after its entry
check; the end of a ``CALL`` shows as the next opcode event of its frame, and
whether the ``CALL`` inlines its callee is read from the value stack at the
``CALL`` (the 3.11 frame layout, checked before use); a taken jump shows as
the next opcode event at its target.

Not covered, and known:

- Handlers also run inside C code that calls ``PyErr_CheckSignals()``: in
  3.11 ``PyObject_Str`` and ``PyObject_Repr`` do, so ``str()``, ``repr()``,
  ``print``, ``%`` formatting, f-strings of non-``str`` values and C error
  messages made with ``%S``/``%R`` can be interrupted inside;
  ``socket.sendall`` checks between chunks; and a system call interrupted by
  a real signal (a waiting ``lock.acquire()``, ``time.sleep``, ``select``,
  blocking I/O) runs the handler before returning. The last kind is opt-in:
  ``blocking(callee)`` decides which C calls count, and the exception is then
  raised as the call starts, before it takes effect (``waits`` is a
  predicate for lock waits, sleeps and selects; use it only where those
  calls really wait). The others are not modelled.
- Only the calling thread. The cyclic garbage collector is off during a run
  (the finalizers and weakref callbacks it runs would come at moments that
  differ from run to run); frames that run while the trace function runs are
  not seen.
- CPython 3.11 only (``HarnessError`` elsewhere): 3.12 inlines
  ``CALL_FUNCTION_EX`` of Python functions and has no conditional backward
  jumps, 3.13 also inlines class calls once specialized, and the frame layout
  differs.
- ``sys.settrace`` has one slot per thread: during a run the harness
  replaces any tracer (coverage's) and suspends any profiler, and restores
  both afterwards, so coverage misses what runs inside, and a debugger and
  the harness do not mix. Under ``coverage run``, run the tests that use the
  harness in a child process (``subprocess`` with ``sys.executable``), as
  ``tests/test_interrupts_harness.py`` does.
- ``run_interrupted`` decides in one run. When it must arm the exception
  before a call that then fails, or before a Python callee that ``include``
  rejects, CPython raises it at another check and ``run_interrupted`` raises
  ``HarnessError``. ``each_interrupt`` records a run first, then replays it:
  no such limit, but the run must be deterministic (``HarnessError`` if an
  interrupt lands anywhere else than recorded). A backward conditional jump
  on a non-plain value, where raising at the target would pick another
  handler, is interrupted at the target by ``run_interrupted``, and its
  ``Point.exact`` is false.
"""

from __future__ import annotations

import collections
import ctypes
import dis
import enum
import functools
import gc
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

__all__ = [
    "SUPPORTED",
    "HarnessError",
    "Interrupted",
    "Outcome",
    "Point",
    "count_points",
    "each_interrupt",
    "record_points",
    "run_interrupted",
    "waits",
]

#: The interpreter whose eval-breaker checks this module reproduces.
SUPPORTED = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)

Include = Callable[[types.FrameType], bool]
Blocking = Callable[[object], bool]


class HarnessError(RuntimeError):
    """The harness could not interrupt where CPython would (see the module docstring)."""


@dataclass(frozen=True)
class Point:
    """One place where a signal handler can run (and raise).

    ``kind`` is ``"entry"`` (a function starts), ``"resume"`` (a generator
    resumes after ``yield``), ``"call"`` (``callee`` returned), ``"loop"`` (a
    backward jump) or ``"blocking"`` (inside ``callee``, before it takes
    effect; opt-in). ``opname``/``offset`` are the instruction that checks.
    ``exact`` is false when ``run_interrupted`` had to raise at the next
    instruction with another exception handler than CPython's.
    """

    index: int
    kind: str
    filename: str
    lineno: int
    function: str
    opname: str
    offset: int
    callee: str | None = None
    exact: bool = True

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def __str__(self) -> str:
        what = {
            "entry": "entry",
            "resume": "resume after yield",
            "call": f"after {self.callee} returned",
            "loop": "loop back edge",
            "blocking": f"inside {self.callee}",
        }[self.kind]
        inexact = "" if self.exact else ", inexact"
        return (
            f"point {self.index}: {self.where} in {self.function}: {what}"
            f" ({self.opname} at {self.offset}{inexact})"
        )


class Outcome(enum.Enum):
    """What happened to an interrupt."""

    RAISED = "raised"  # raised at the point and propagated out of run()
    SWALLOWED = "swallowed"  # raised at the point, and run() still returned normally
    NOT_REACHED = "not reached"  # run() reached fewer points: nothing was raised


@dataclass(frozen=True)
class Interrupted:
    """The result of one interrupted run. True if the exception propagated out of ``run``."""

    index: int
    outcome: Outcome
    point: Point | None  # where the exception was raised (None if not reached)
    exception: BaseException | None  # the exception raised into run (None if not reached)
    run: Callable[[], object]

    def __bool__(self) -> bool:
        return self.outcome is Outcome.RAISED

    @property
    def fired(self) -> bool:
        return self.outcome is not Outcome.NOT_REACHED

    def __str__(self) -> str:
        if self.point is None:
            return f"interrupt {self.index}: {self.outcome.value}"
        return f"{self.point}: {self.outcome.value}"


def waits(func: object) -> bool:
    """A ``blocking=`` predicate: lock and RLock ``acquire``, ``time.sleep``, ``select``.

    Use it only for runs in which those calls really wait (a contended lock, a
    timed wait): an uncontended ``acquire`` cannot be interrupted.
    """
    name = getattr(func, "__qualname__", None)
    owner = getattr(func, "__self__", None)
    if name in {"lock.acquire", "RLock.acquire", "lock.acquire_lock"}:
        return True
    module = getattr(owner, "__name__", None) if isinstance(owner, types.ModuleType) else None
    if module == "time" and name == "sleep":
        return True
    if module == "select" and name == "select":
        return True
    return name in {"poll.poll", "epoll.poll", "devpoll.poll", "kqueue.control"}


def count_points(
    run: Callable[[], object],
    *,
    include: Include | None = None,
    blocking: Blocking | None = None,
) -> int:
    """Run ``run()`` once, traced, and return how many interrupt points it reached.

    ``include(frame)`` selects the frames whose points count (default: every
    frame run by ``run()`` and below). ``blocking(callee)`` adds a point inside
    the C calls it accepts (see ``waits``).
    """
    return len(record_points(run, include=include, blocking=blocking))


def record_points(
    run: Callable[[], object],
    *,
    include: Include | None = None,
    blocking: Blocking | None = None,
) -> list[Point]:
    """Like ``count_points``, but return the points, in the order they were reached."""
    session = _Session(include=include, blocking=blocking, exc=KeyboardInterrupt)
    session.execute(run)
    return [mark.point for mark in session.marks]


def run_interrupted(
    run: Callable[[], object],
    point: int,
    *,
    exc: type[BaseException] = KeyboardInterrupt,
    include: Include | None = None,
    blocking: Blocking | None = None,
) -> Interrupted:
    """Run ``run()`` with ``exc()`` raised at its ``point``-th interrupt point (0-based).

    Returns an ``Interrupted`` that is true if the exception was raised and
    propagated out of ``run()`` (the harness catches that instance, and only
    it). ``outcome`` tells it from ``SWALLOWED`` (raised, but ``run()``
    returned normally) and ``NOT_REACHED`` (``run()`` finished with fewer
    points; nothing was raised). Any other exception from ``run()`` propagates.
    """
    if point < 0:
        raise ValueError(f"point must be >= 0, not {point}")
    session = _Session(include=include, blocking=blocking, exc=exc, target=point)
    return session.interrupted(run, point)


def each_interrupt(
    setup: Callable[[], Callable[[], object]],
    *,
    exc: type[BaseException] = KeyboardInterrupt,
    include: Include | None = None,
    blocking: Blocking | None = None,
) -> Iterator[Interrupted]:
    """Interrupt a fresh ``setup()`` at each of its points in turn, yielding each result.

    ``setup()`` builds the state and returns the callable to run (reach the
    state through ``result.run``, e.g. a bound method's ``__self__``). A first
    run records the points; then, for each point, a new ``setup()`` is run
    with ``exc()`` raised there, and the result is yielded (check the state in
    the loop body; ``str(result)`` names the place). The run must be
    deterministic: ``HarnessError`` if an interrupt lands elsewhere than
    recorded or not at all.
    """
    recorder = _Session(include=include, blocking=blocking, exc=exc)
    recorder.execute(setup())
    for mark in recorder.marks:
        session = _Session(include=include, blocking=blocking, exc=exc, plan=mark)
        result = session.interrupted(setup(), mark.point.index)
        if result.point is None or not _same_place(result.point, mark.point):
            raise HarnessError(
                f"nondeterministic run: interrupt {mark.point.index} was recorded at"
                f" {mark.point} but landed at {result.point}"
            )
        yield result


# -- internals ---------------------------------------------------------------------------------

_CALLS = frozenset({"CALL", "CALL_FUNCTION_EX"})
_BACKWARD = frozenset(
    {
        "JUMP_BACKWARD",
        "POP_JUMP_BACKWARD_IF_TRUE",
        "POP_JUMP_BACKWARD_IF_FALSE",
        "POP_JUMP_BACKWARD_IF_NONE",
        "POP_JUMP_BACKWARD_IF_NOT_NONE",
    }
)


def _same_place(a: Point, b: Point) -> bool:
    return (a.filename, a.function, a.offset, a.kind) == (b.filename, b.function, b.offset, b.kind)


def _exception_table(code: types.CodeType) -> list[tuple[int, int, int, int, bool]]:
    """``(start, end, target, depth, lasti)`` byte offsets, end exclusive (3.11 format)."""
    data = iter(code.co_exceptiontable)

    def number() -> int:
        byte = next(data)
        value = byte & 63
        while byte & 64:
            byte = next(data)
            value = (value << 6) | (byte & 63)
        return value

    entries = []
    try:
        while True:
            start = number() * 2
            end = start + number() * 2
            target = number() * 2
            depth_lasti = number()
            entries.append((start, end, target, depth_lasti >> 1, bool(depth_lasti & 1)))
    except StopIteration:
        return entries


class _Instr:
    """What the harness needs to know about one instruction."""

    __slots__ = ("arg", "following", "lineno", "offset", "opname", "risky", "target")

    def __init__(self, ins: dis.Instruction, following: int) -> None:
        self.opname = ins.opname
        self.arg = ins.arg
        self.offset = ins.offset
        self.lineno = ins.positions.lineno if ins.positions and ins.positions.lineno else 0
        self.following = following  # the next instruction (where a call returns to)
        self.target = ins.argval if ins.opname in _BACKWARD else -1
        self.risky = False  # raising at the next instruction would pick another handler


class _Code:
    """The instructions of a code object by the offset of their opcode event."""

    __slots__ = ("at", "filename", "function")

    def __init__(self, code: types.CodeType) -> None:
        self.filename = code.co_filename
        self.function = code.co_qualname
        table = _exception_table(code)

        def handler(offset: int) -> tuple[int, int, bool] | None:
            for start, end, target, depth, lasti in table:
                if start <= offset < end:
                    return target, depth, lasti
            return None

        instructions = list(dis.get_instructions(code))
        self.at: dict[int, _Instr] = {}
        prefixes: list[int] = []
        for i, ins in enumerate(instructions):
            if ins.opname == "EXTENDED_ARG":  # its opcode event stands for the next one
                prefixes.append(ins.offset)
                continue
            following = instructions[i + 1].offset if i + 1 < len(instructions) else -1
            info = _Instr(ins, following)
            if info.opname in _CALLS:
                info.risky = handler(info.offset) != handler(following)
            elif info.opname in _BACKWARD and info.opname != "JUMP_BACKWARD":
                # CPython looks the handler up just before the target; raising at the target
                # is the same unless a protected range starts right at the target.
                info.risky = handler(info.target) != handler(info.target - 2)
            for offset in (*prefixes, info.offset):
                self.at[offset] = info
            prefixes.clear()


# By identity (code objects that compare equal may come from different files), holding the
# code objects, and bounded. Not weak references: their callbacks would run Python code at any
# moment the collector frees a code object, inside the runs being counted.
_codes: collections.OrderedDict[int, tuple[types.CodeType, _Code]] = collections.OrderedDict()
_codes_lock = threading.Lock()
_CODES_KEPT = 4096


def _code(code: types.CodeType) -> _Code:
    with _codes_lock:
        entry = _codes.get(id(code))
        if entry is not None and entry[0] is code:
            _codes.move_to_end(id(code))
            return entry[1]
    info = _Code(code)
    with _codes_lock:
        _codes[id(code)] = (code, info)
        if len(_codes) > _CODES_KEPT:
            _codes.popitem(last=False)
    return info


# -- reading the value stack of a 3.11 frame (Include/internal/pycore_frame.h) ----------------
#
# PyFrameObject: PyObject_HEAD, f_back, f_frame (-> _PyInterpreterFrame), ...
# _PyInterpreterFrame: f_func, f_globals, f_builtins, f_locals, f_code, frame_obj, previous,
# prev_instr, int stacktop, bool is_entry, char owner, PyObject *localsplus[]. The trace
# function runs with stacktop set (DO_TRACING saves the stack pointer before calling it).

_PTR = ctypes.sizeof(ctypes.c_void_p)
_F_FRAME = object.__basicsize__ + _PTR
_I_CODE = 4 * _PTR
_I_FRAME_OBJ = 5 * _PTR
_I_STACKTOP = 8 * _PTR
_I_LOCALSPLUS = 9 * _PTR


def _pointer(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


class _Stack:
    """The value stack of a frame stopped in its trace function."""

    __slots__ = ("slots", "top")

    def __init__(self, frame: types.FrameType) -> None:
        base = _pointer(id(frame) + _F_FRAME)
        if (
            not base
            or _pointer(base + _I_CODE) != id(frame.f_code)
            or _pointer(base + _I_FRAME_OBJ) != id(frame)
        ):
            raise HarnessError("unexpected frame layout: this harness needs CPython 3.11")
        code = frame.f_code
        top = ctypes.c_int.from_address(base + _I_STACKTOP).value
        limit = code.co_nlocals + len(code.co_cellvars) + len(code.co_freevars)
        if not 0 < top <= limit + code.co_stacksize:
            raise HarnessError(f"unexpected stack depth {top} in {code.co_qualname}")
        self.slots = base + _I_LOCALSPLUS
        self.top = top

    def peek(self, depth: int) -> object | None:
        """The object ``depth`` slots down (1 is the top), None for NULL."""
        address = _pointer(self.slots + (self.top - depth) * _PTR)
        return ctypes.cast(address, ctypes.py_object).value if address else None


def _callee(frame: types.FrameType, ins: _Instr) -> tuple[object, object | None]:
    """What ``ins`` (CALL/CALL_FUNCTION_EX) is about to call, and its ``self`` if a method."""
    stack = _Stack(frame)
    if ins.opname == "CALL_FUNCTION_EX":
        return stack.peek(2 + ((ins.arg or 0) & 1)), None
    nargs = ins.arg or 0
    method = stack.peek(nargs + 2)  # LOAD_METHOD's method, or the NULL of PUSH_NULL
    if method is not None:
        return method, stack.peek(nargs + 1)
    func = stack.peek(nargs + 1)
    if type(func) is types.MethodType:  # PRECALL left it for CALL to unpack
        return func.__func__, func.__self__
    return func, None


_PLAIN = frozenset({bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset})


def _taken(frame: types.FrameType, ins: _Instr) -> bool:
    """Whether the backward jump ``ins`` is about to be taken (False if unknown).

    The condition is on the stack; its truth is taken only from plain values, whose
    ``bool()`` runs no Python code.
    """
    if ins.opname == "JUMP_BACKWARD":
        return True
    cond = _Stack(frame).peek(1)
    if ins.opname.endswith("_IF_NONE"):
        return cond is None
    if ins.opname.endswith("_IF_NOT_NONE"):
        return cond is not None
    if cond is not None and type(cond) not in _PLAIN:
        return False  # run_interrupted raises at the target instead (Point.exact is false)
    return bool(cond) is ins.opname.endswith("_IF_TRUE")


def _describe(obj: object) -> str:
    named = (
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodDescriptorType,
        types.WrapperDescriptorType,
        types.MethodWrapperType,
        types.ClassMethodDescriptorType,
        type,
    )
    if isinstance(obj, named):
        return str(obj.__qualname__)
    return f"{type(obj).__qualname__} object"


def _bound(func: object, self: object | None) -> object:
    if self is None:
        return func
    get = getattr(type(func), "__get__", None)
    return func if get is None else get(func, self, type(self))


@functools.cache
def _check_layout() -> None:
    """Read a known stack once: a wrong layout must fail loudly, not misread memory."""
    if not SUPPORTED:
        raise HarnessError(
            "tests/interrupts.py reproduces CPython 3.11's eval-breaker checks; this is"
            f" {sys.implementation.name} {sys.version.split()[0]}"
        )
    marker = object()
    seen: list[tuple[object, object | None]] = []

    def target(_: object) -> None:
        """Stand-in callee."""

    def probe() -> None:
        target(marker)

    code = probe.__code__

    def trace(frame: types.FrameType, event: str, arg: object) -> object:
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode" and _code(code).at[frame.f_lasti].opname == "CALL":
            stack = _Stack(frame)
            seen.append((_callee(frame, _code(code).at[frame.f_lasti])[0], stack.peek(1)))
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        probe()
    finally:
        sys.settrace(previous)
    if seen != [(target, marker)]:
        raise HarnessError("unexpected frame layout: cannot read the value stack")


# -- raising an exception at CPython's own check ------------------------------------------------
#
# PyThreadState_SetAsyncExc(thread, exc) makes the thread's next eval-breaker check raise
# exc. It is set from the trace function immediately before the check, so nothing may check
# in between, not even the trace function after the call: an ordinary call ends with a check.
# So the call is made by a dict subclass's __missing__ (a C function), reached through
# ``d[key]``: a subscript does not check, and neither does the trace function's ``return``.

_set_async = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
# Never "clear" it with NULL: 3.11 then signals the eval breaker with nothing to deliver, and
# the flag stays set (every check then takes the slow path, and a traced function's entry
# check loops forever). An armed exception is always raised: the next check raises it.


def _subscript_caller(func: Callable[[object], object]) -> dict[object, object]:
    """A dict whose ``d[key]`` calls ``func(key)`` from C (and stores nothing)."""
    cls = type("_CallOnMissing", (dict,), {"__missing__": staticmethod(func), "__slots__": ()})
    return cls()


Sig = tuple[str, object, int]  # a trace callback: (event, code, f_lasti)
Expect = Callable[[types.FrameType, int], "Point | None"]


@dataclass(frozen=True)
class _Mark:
    """A recorded point and the trace callbacks around its check (for replay)."""

    point: Point
    before: int  # index of the last trace callback before the check
    before_sig: Sig | None
    after: int  # index of the first trace callback after the check
    after_sig: Sig


class _Session:
    """One traced run of ``run()``: counts its points, and raises at one of them.

    Nothing in a trace callback may call a function after the exception is
    armed (an entry or a returning C call would check, and raise it in the
    harness): every path that arms ends with the arming, then returns.
    """

    def __init__(
        self,
        *,
        include: Include | None,
        blocking: Blocking | None,
        exc: type[BaseException],
        target: int | None = None,
        plan: _Mark | None = None,
    ) -> None:
        _check_layout()
        if not (isinstance(exc, type) and issubclass(exc, BaseException)):
            raise TypeError(f"exc must be an exception class, not {exc!r}")
        self.include = include
        self.blocking = blocking
        self.exc = exc
        self.target = target  # run_interrupted: the point to raise at, counted as we go
        self.plan = plan  # each_interrupt: the recorded point to raise at
        self.recording = target is None and plan is None
        self.active = False
        self.home: types.FrameType | None = None
        self.count = 0  # points passed
        self.calls = 0  # trace callbacks so far
        self.sig: Sig | None = None  # the last callback
        self.marks: list[_Mark] = []
        self.injected: BaseException | None = None  # the exception raised into run()
        self.landed: Point | None = None  # where
        self.armed: Expect | None = None  # set when CPython is to raise it at its next check
        self.error: str | None = None
        tid = ctypes.c_ulong(threading.get_ident())
        self.arm_map = _subscript_caller(functools.partial(_set_async, tid))

    # -- running -----------------------------------------------------------------------------

    def execute(self, run: Callable[[], object]) -> None:
        """Run ``run()`` traced; the tracer, profiler and collector are back on every path.

        A profiler is off meanwhile: it would run Python code (its ``c_call`` callback)
        between a ``CALL`` and the call's check, where an armed exception is raised. The
        collector is off too: the finalizers and weakref callbacks it runs would add points
        at moments that differ from one run to the next.
        """
        previous, profiler, collecting = sys.gettrace(), sys.getprofile(), gc.isenabled()
        self.home = sys._getframe()
        self.active = True
        gc.disable()
        sys.setprofile(None)
        sys.settrace(self.on_call)
        try:
            run()
        finally:
            self.active = False
            sys.settrace(previous)
            sys.setprofile(profiler)
            if collecting:
                gc.enable()
            self.home = None
            if self.error is not None:
                raise HarnessError(self.error)

    def interrupted(self, run: Callable[[], object], index: int) -> Interrupted:
        try:
            self.execute(run)
        except BaseException as e:
            if self.injected is not None and e is self.injected:
                return Interrupted(index, Outcome.RAISED, self.landed, e, run)
            if self.armed is not None and self.injected is None and isinstance(e, self.exc):
                raise HarnessError(
                    f"interrupt {index}: CPython raised the armed exception at an unexpected"
                    " check (a call failed, or an excluded frame checked first); use"
                    " each_interrupt, which records the run first"
                ) from e
            if self.injected is not None:
                e.add_note(f"raised by run() after the interrupt at {self.landed}")
            raise
        if self.injected is not None:
            return Interrupted(index, Outcome.SWALLOWED, self.landed, self.injected, run)
        if self.armed is not None:
            raise HarnessError(f"interrupt {index} was armed but never raised")
        return Interrupted(index, Outcome.NOT_REACHED, None, None, run)

    def fail(self, message: str) -> None:
        """Stop tracing; ``execute`` raises HarnessError after run() (never inside it)."""
        if self.error is None:
            self.error = message
        self.active = False
        sys.settrace(None)

    def tick(self, frame: types.FrameType, event: str) -> tuple[int, Sig | None, Sig]:
        """Count a trace callback: its index, the previous callback, this one."""
        index = self.calls
        self.calls = index + 1
        prev = self.sig
        sig = self.sig = (event, frame.f_code, frame.f_lasti)
        return index, prev, sig

    # -- trace callbacks ---------------------------------------------------------------------

    def on_call(self, frame: types.FrameType, event: str, arg: object) -> object:
        """The global trace function: a frame starts (or a generator resumes)."""
        if not self.active or event != "call":
            return None
        back = frame.f_back
        if back is not self.home and _tracer_of(back, self) is None:
            return None  # not run by run()
        index, prev, sig = self.tick(frame, event)
        try:
            included = self.include is None or bool(self.include(frame))
        except BaseException as e:
            self.fail(f"include() raised {e!r}")
            return None
        code = _code(frame.f_code)
        tracer = _FrameTracer(self, code, included)
        frame.f_trace_lines = False
        frame.f_trace_opcodes = included
        ins = code.at.get(frame.f_lasti)
        # 3.11 calls the trace function just after the entry's check, before the frame runs:
        # raising here is raising at the check.
        if included and ins is not None and ins.opname == "RESUME" and (ins.arg or 0) < 2:
            point = self.point("resume" if ins.arg else "entry", code, ins)
            self.reached(point, index, prev, sig, direct=True)
        return tracer.trace

    def opcode(
        self, tracer: _FrameTracer, frame: types.FrameType, index: int, prev: Sig | None, sig: Sig
    ) -> None:
        """An instruction of an included frame is about to run."""
        code = tracer.code
        offset = frame.f_lasti
        call = tracer.call
        if call is not None:
            tracer.call = None
            if offset == call.following:  # it returned, and its check has just passed
                point = self.point("call", code, call, tracer.callee)
                self.reached(point, index, prev, sig, direct=not call.risky)
        jump = tracer.jump
        if jump is not None:
            tracer.jump = None
            if offset == jump.target:  # it was taken, and its check has just passed
                point = self.point("loop", code, jump)
                self.reached(point, index, prev, sig, direct=True, exact=not jump.risky)
        ins = code.at[offset]
        if ins.opname in _CALLS:
            self.calling(tracer, frame, ins, index, sig)  # may arm: nothing after it
        elif ins.opname in _BACKWARD:
            tracer.jump = ins
            # An exact raise needs the check's own handler: arm it when the jump will be taken.
            aim = self.target == self.count and (ins.risky or ins.opname == "JUMP_BACKWARD")
            try:
                taken = aim and _taken(frame, ins)
            except HarnessError as e:
                self.fail(str(e))
                return
            if taken:
                self.arm_at(frame, ins, None)

    def calling(
        self, tracer: _FrameTracer, frame: types.FrameType, ins: _Instr, index: int, sig: Sig
    ) -> None:
        try:
            func, bound_to = _callee(frame, ins)
        except HarnessError as e:
            self.fail(str(e))
            return
        if ins.opname == "CALL" and type(func) is types.FunctionType:
            return  # CALL runs it inlined: no check when it returns (its entry is a point)
        callee = _describe(func)
        if self.blocking is not None:
            try:
                blocks = bool(self.blocking(_bound(func, bound_to)))
            except BaseException as e:
                self.fail(f"blocking() raised {e!r}")
                return
            if blocks:
                point = self.point("blocking", tracer.code, ins, callee)
                self.reached(point, index, sig, sig, direct=True)
        del func, bound_to
        tracer.call = ins
        tracer.callee = callee
        if ins.risky and self.target == self.count:
            # The next check is this call's, or the entry of a Python function it calls,
            # either being the point aimed at; raising after it would pick another handler.
            self.arm_at(frame, ins, callee)

    def returning(self, frame: types.FrameType) -> None:
        """run_interrupted: a frame returns, maybe into a risky call's callee (see calling)."""
        back = frame.f_back
        owner = _tracer_of(back, self)
        if owner is not None and owner.included and owner.call is not None and owner.call.risky:
            assert back is not None
            self.arm_at(back, owner.call, owner.callee)

    def exception(self, arg: object) -> None:
        """The first callback after CPython raised the armed exception."""
        expect = self.armed
        assert expect is not None
        self.active = False
        sys.settrace(None)
        value, tb = (arg[1], arg[2]) if isinstance(arg, tuple) and len(arg) == 3 else (None, None)
        if not isinstance(value, self.exc):
            self.fail(f"expected the armed {self.exc.__name__}, got {value!r}")
            return
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        point = None if tb is None else expect(tb.tb_frame, tb.tb_lasti)
        if point is None:
            where = "nowhere" if tb is None else f"{tb.tb_frame.f_code.co_qualname}@{tb.tb_lasti}"
            self.fail(f"the armed exception was raised at {where}, not at the point aimed at")
            return
        self.injected = value
        self.landed = point

    # -- points ------------------------------------------------------------------------------

    def point(self, kind: str, code: _Code, ins: _Instr, callee: str | None = None) -> Point:
        return Point(
            index=self.count,
            kind=kind,
            filename=code.filename,
            lineno=ins.lineno,
            function=code.function,
            opname=ins.opname,
            offset=ins.offset,
            callee=callee,
        )

    def reached(
        self,
        point: Point,
        index: int,
        prev: Sig | None,
        sig: Sig,
        *,
        direct: bool,
        exact: bool = True,
    ) -> None:
        """A point's check has just passed (or, for "blocking", is about to)."""
        self.count += 1
        if self.recording:
            self.marks.append(_Mark(point, index - 1, prev, index, sig))
        elif self.plan is not None:
            plan = self.plan
            if index == plan.after and point.kind in {"entry", "resume", "blocking"}:
                if sig != plan.after_sig or point.index != plan.point.index:
                    self.fail(f"nondeterministic run: {plan.point} not at callback {index}")
                    return
                self.raise_now(point)
        elif self.target == point.index:
            # Raising at this callback is what CPython does when ``direct``; otherwise this
            # is a fallback (an armed exception would have been raised at the check).
            self.raise_now(replace(point, exact=exact and direct))

    def raise_now(self, point: Point) -> None:
        error = self.exc()
        self.injected = error
        self.landed = point
        self.active = False
        raise error  # the trampoline turns tracing off; the frame raises it where it stands

    def arm_at(self, frame: types.FrameType, ins: _Instr, callee: str | None) -> None:
        """Have CPython raise at the next check: ``ins`` in ``frame``, or an entry it calls."""
        aimed = self.point("loop" if ins.opname in _BACKWARD else "call", _code(frame.f_code), ins)
        aimed = replace(aimed, callee=callee)
        include = self.include

        def expect(where: types.FrameType, lasti: int) -> Point | None:
            if where is frame:
                return aimed if lasti == ins.offset else None
            info = _code(where.f_code).at.get(lasti)
            if aimed.kind == "loop" or where.f_back is not frame or info is None:
                return None
            if info.opname != "RESUME" or (info.arg or 0) >= 2:
                return None
            if include is not None and not include(where):
                return None
            kind = "resume" if info.arg else "entry"
            return replace(aimed, kind=kind, callee=None, **_place(where.f_code, info))

        self.armed = expect
        self.arm_map[self.exc]  # last: see _set_async

    def plan_action(self) -> None:
        """each_interrupt: arm at the recorded last callback before a call's or a jump's check."""
        plan = self.plan
        assert plan is not None
        if plan.point.kind not in {"call", "loop"}:
            return
        if self.sig != plan.before_sig:
            self.fail(f"nondeterministic run: {plan.point} not after callback {plan.before}")
            return
        aimed = plan.point

        def expect(where: types.FrameType, lasti: int) -> Point | None:
            same = where.f_code.co_filename == aimed.filename
            if same and where.f_code.co_qualname == aimed.function and lasti == aimed.offset:
                return aimed
            return None

        self.armed = expect
        self.arm_map[self.exc]  # last: see _set_async


def _place(code: types.CodeType, ins: _Instr) -> dict[str, object]:
    return {
        "filename": code.co_filename,
        "function": code.co_qualname,
        "lineno": ins.lineno,
        "opname": ins.opname,
        "offset": ins.offset,
    }


def _tracer_of(frame: types.FrameType | None, session: _Session) -> _FrameTracer | None:
    """The session's tracer of ``frame`` (a frame run by ``run()``), if any."""
    if frame is None:
        return None
    tracer = getattr(frame.f_trace, "__self__", None)
    if isinstance(tracer, _FrameTracer) and tracer.session is session:
        return tracer
    return None


class _FrameTracer:
    """The local trace function of one frame run by ``run()``; its state lives in f_trace."""

    __slots__ = ("call", "callee", "code", "included", "jump", "session")

    def __init__(self, session: _Session, code: _Code, included: bool) -> None:
        self.session = session
        self.code = code
        self.included = included
        self.call: _Instr | None = None  # a CALL that may end with a check
        self.callee: str | None = None
        self.jump: _Instr | None = None  # a backward jump that may be taken

    def trace(self, frame: types.FrameType, event: str, arg: object) -> object:
        session = self.session
        if not session.active:
            return None
        index, prev, sig = session.tick(frame, event)
        if event == "opcode":
            if self.included:
                session.opcode(self, frame, index, prev, sig)  # may arm: nothing calls after
        elif event == "exception":
            self.call = self.jump = None
            if session.armed is not None:
                session.exception(arg)
                return None
        elif event == "return":
            self.call = self.jump = None
            if session.target == session.count and session.armed is None:
                session.returning(frame)  # may arm
        plan = session.plan
        if plan is not None and index == plan.before and session.armed is None and session.active:
            session.plan_action()  # may arm
        return self.trace
