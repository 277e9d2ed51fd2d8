"""The pool's decisions, free of I/O, of waiting, of locks and of clocks.

``PoolCore`` owns the pool's slots (``Slot``: state, connection, times), its
waiters, its dial backoff and every counter. Each method takes ``now`` (the
pool's monotonic clock, passed in) and returns what the shell must do: a slot
to lend, a waiter to wake, an action to run on a slot (dial it, check it),
connections to close (``doomed``). It never blocks, never touches a
connection and never takes a lock: a shell (threads: ``gocp._pool``) calls it
under its own lock and does the waiting and the I/O around it.

Invariants: a slot is idle (in ``idle``, in return order), lent (to a caller,
or handed to a waiter), busy (taken by the pool for a check or a background
dial) or gone (a retired overflow slot); while a caller waits no member is
idle (a slot given back goes straight to the first waiter; with ``SharedCore``,
until the put that crossed the queueing caller settles); ``members`` never
changes; a connection leaves a slot only through ``doomed`` (to be closed) or
``released`` (after a fork, dropped without I/O).

Interrupts. A signal handler that raises (``KeyboardInterrupt``) runs, in
CPython 3.11, only at a function's entry, at the end of a call that is not
inlined (a C function, a class, any call of a Python function through
``*args``), at a loop's back edge, and inside ``str()``/``repr()`` of
objects. The hot paths here (``lend``, ``give_back``, ``doom``, ``attach``)
take a slot or a connection and record where it went with no such point in
between, so an interrupt finds each either where it was or where it went;
the other paths leave state that running them again completes (a slot's
``seq`` tells a lend from the next one). The shells rely on that to undo or
finish an interrupted call; ``tests/test_interrupts.py`` interrupts them at
every point and checks.

Free-threaded builds. Without the interpreter lock, "no call in between" no
longer makes a step atomic: threads run at once. ``SharedCore`` (which the
thread shell uses there; see ``FREE_THREADED``) takes and gives back with
operations that are atomic on their own and checks twice where two threads
can cross: a lend claims an idle slot with ``deque.remove`` (only one thread
removes it), a give_back appends to ``idle`` and then looks at ``waiters``
while ``enqueue`` appends to ``waiters`` and then looks at ``idle`` (whichever
comes second sees the other), and serving a waiter, which pops ``waiters``,
happens only under the lock.
"""

from __future__ import annotations

import enum
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._backoff import Backoff
from ._errors import DialError, PoolClosed, PoolTimeout, describe

if TYPE_CHECKING:
    from ._config import Options

__all__ = [
    "BUSY",
    "CHECK",
    "DIAL",
    "DRAIN",
    "FREE_THREADED",
    "GONE",
    "IDLE",
    "LEAK",
    "LENT",
    "SETTLE",
    "SLOW",
    "WAKE",
    "PoolCore",
    "SharedCore",
    "Slot",
    "SlotState",
    "Waiter",
]

_INF = float("inf")

#: Whether threads run at once here (a free-threaded build, its interpreter lock off): the
#: thread shell then uses ``SharedCore``. The lock cannot come back on by itself in a way
#: that matters: ``SharedCore`` is correct with it too.
FREE_THREADED: bool = not getattr(sys, "_is_gil_enabled", lambda: True)()


class SlotState(enum.Enum):
    """Where a slot is."""

    IDLE = "idle"  # in the idle ring, ready to lend
    LENT = "lent"  # held by a caller (or handed to a waiter)
    BUSY = "busy"  # taken by the pool itself: a check or a background dial
    GONE = "gone"  # a retired overflow slot


IDLE, LENT, BUSY, GONE = SlotState.IDLE, SlotState.LENT, SlotState.BUSY, SlotState.GONE

#: Actions a lent or busy slot needs before use (``PoolCore.prepare``).
CHECK = "check"  # run the check hook on its connection
DIAL = "dial"  # make a connection now (client pools, or get(connect=True))
LEAK = "leak"  # (a maintain task) report a lend held past leak_timeout
WAKE = "wake"  # (a maintain task) wake a waiter served a slot that came back


class Slot:
    """A place in the pool: where it is, its connection (or ``None``) and its times.

    The core owns every attribute; shells read them and change them only
    through the core. Times are the pool's monotonic clock. A socket pool's
    slots are ``PersistentConn`` objects (a subclass that adds the socket
    methods); a client pool's are plain ``Slot`` objects.
    """

    __slots__ = (
        "base",
        "checked_at",
        "conn",
        "connected_at",
        "due_at",
        "expires_at",
        "idle_since",
        "index",
        "inherited",
        "lent_at",
        "overflow",
        "pending",
        "reported",
        "seq",
        "slow_at",
        "stack",
        "state",
    )

    def __init__(self, index: int, *, overflow: bool = False) -> None:
        self.index = index  # members 0..size-1; overflow slots count on from size
        self.overflow = overflow
        self.state = IDLE
        self.conn: Any = None
        self.seq = 0  # lends so far: tells one lend from the next
        self.base = 0  # seq when the current connection was made (uses = seq - base)
        self.connected_at = -_INF
        self.expires_at = _INF  # end of the current connection's lifetime
        self.checked_at = -_INF  # last time a check found the connection good
        self.idle_since = -_INF  # last put back (stats: last_used_at)
        self.lent_at = -_INF  # when lent (0.0 in an untimed pool: only leak_timeout reads it)
        self.due_at = _INF  # from then on a lend must review the slot (see PoolCore.lend)
        self.slow_at = _INF  # from then on a give_back takes the slow path
        self.pending = False  # the lend that took it must call PoolCore.prepare
        self.reported = 0  # the seq of the lend last reported as a leak
        self.stack: Any = None  # where the current lend was taken (with leak_timeout)
        self.inherited = False  # its connection came from a parent process (fork)


class Waiter(Protocol):
    """A caller queued in ``get``: the core hands it a slot by setting ``slot``; ``closed``
    is set by the shell when it wakes it because the pool closed; ``since`` is when it
    queued."""

    slot: Any
    closed: bool
    since: float


S = TypeVar("S", bound=Slot)
W = TypeVar("W", bound=Waiter)

#: ``give_back_slow`` returns it when connections wait in ``doomed`` and no waiter was served.
DRAIN: Any = object()
#: ``give_back`` returns it when the slot must go through ``give_back_slow``, under the lock.
SLOW: Any = object()
#: ``SharedCore.give_back`` returns it when a waiter queued while it gave the slot back: the
#: caller calls ``settle_one`` under the lock until it returns ``None`` (waking each waiter
#: it returns).
SETTLE: Any = object()


class PoolCore(Generic[S, W]):
    """Lending, lifecycle and backoff decisions for one pool (see the module docstring)."""

    def __init__(
        self,
        members: Sequence[S],
        options: Options,
        *,
        label: str,
        make_overflow: Callable[[int], S],
        dial_in_lend: bool,
        can_check: bool,
        random: Callable[[], float],
        probe_lease: float,
    ) -> None:
        self.members: tuple[S, ...] = tuple(members)
        self.label = label
        self.make_overflow = make_overflow
        self.dial_in_lend = dial_in_lend  # client pools dial in get; socket members on first I/O
        self.random = random
        # policies (inf: off)
        self.check_interval = (
            options.check_interval if can_check and options.check_interval else _INF
        )
        self.idle_timeout = options.idle_timeout or _INF
        self.max_lifetime = options.max_lifetime or _INF
        self.leak_timeout = options.leak_timeout or _INF
        self.min_idle = options.min_idle
        self.max_overflow = options.max_overflow
        # A lend reviews a slot idle this long (with leak_timeout, every lend: its stack).
        self.review_after = (
            -_INF if self.leak_timeout < _INF else min(self.check_interval, self.idle_timeout)
        )
        #: Whether a lend's decision depends on the time; if not, ``lend`` ignores ``now``
        #: (a slot's ``due_at`` is then only ever +inf or -inf) and shells may pass 0.0.
        self.timed = self.review_after < _INF or self.max_lifetime < _INF
        self.backoff = Backoff(options.retry_min, options.retry_max, random, lease=probe_lease)
        # state
        self.idle: deque[S] = deque(self.members)
        self.waiters: deque[W] = deque()
        self.extra: dict[S, None] = {}  # overflow slots now open (a dict: no call to add one)
        self.closed = False
        self.doomed: deque[Any] = deque()  # connections to close, outside the lock
        self.dooming: S | None = None  # the idle slot a close is dooming (see _doom_idle)
        self.released: list[Any] = []  # inherited connections dropped without I/O (fork)
        self.by_conn: dict[int, S] = {}  # id(connection) -> slot, for put(client)
        self.connected = 0  # members with a connection (overflow ones are not members)
        self.overflow_made = 0
        self.busy_dials = 0  # background dials in flight
        self.checking: dict[S, None] = {}  # slots whose check runs now
        # counters (lends: the slots' seq, plus retired overflow slots')
        self.retired_lends = self.waits = self.timeouts = 0
        self.dials = self.dial_failures = self.broken = self.stale = 0
        self.dialling = 0  # dials in flight (a cluster steers gets away from them)
        self.leaks = self.hook_failures = 0
        self.wait_time = 0.0
        self.closed_by = dict.fromkeys(
            ("idle", "lifetime", "check", "broken", "overflow", "fresh"), 0
        )
        for slot in self.members:
            self._schedule(slot)

    # -- lending ------------------------------------------------------------------------
    #
    # ``lend`` and ``give_back`` are the uncontended paths: the shells call them WITHOUT the
    # pool's lock. Each takes a slot (or a waiter) and records where it went with no call
    # in between, so under CPython's interpreter lock no other thread and no signal
    # handler can run inside them (see the module docstring); they touch only the ``idle``
    # and ``waiters`` deques, the slot they move and ``wait_time``. Everything else runs
    # under the lock and expects them meanwhile: under the lock, ``waiters`` can only
    # shrink (a give_back serves one) and ``idle`` can change, so a locked method that
    # takes from either re-checks in the same call-free step.
    #
    # No lost wake-up: a give_back that finds no waiter appends to ``idle`` in one step,
    # and ``enqueue`` looks at ``idle`` once more before it queues, in one step.

    def lend(self, now: float) -> S | None:
        """The idle slot to lend now, marked lent, or ``None``: call ``lend_slow`` then,
        under the lock. (Safe without the lock; see above.)

        Members are lent in ring order (least recently returned first), as the Go
        original's channel does, so every connection stays exercised. If
        ``slot.pending`` is set, the caller must call ``prepare`` before handing the
        slot out.
        """
        idle = self.idle
        if idle:
            slot = idle[0]
            del idle[0]
            slot.state = LENT
            slot.seq += 1
            slot.lent_at = now
            slot.pending = now >= slot.due_at
            return slot
        return None

    def lend_slow(self, now: float) -> S | None:
        """Under the lock, when ``lend`` found nothing: an idle slot after all, or a new
        overflow slot (with no connection) when every member is lent and
        ``max_overflow`` allows; ``None``: the caller must ``enqueue``. Raises
        ``PoolClosed`` once the pool is closed."""
        slot = self.lend(now)
        if slot is not None:
            return slot
        if self.closed:
            raise PoolClosed(f"pool {self.label} is closed")
        if len(self.extra) < self.max_overflow and not self.waiters:
            self.overflow_made += 1
            slot = self.make_overflow(len(self.members) + self.overflow_made - 1)
            slot.slow_at = -_INF  # its give_back closes it (or hands it to a waiter)
            slot.due_at = -_INF if self.dial_in_lend or self.review_after == -_INF else _INF
            slot.state = LENT
            self.extra[slot] = None
            slot.seq += 1
            slot.lent_at = now
            slot.pending = now >= slot.due_at
            return slot
        return None

    @property
    def lends(self) -> int:
        """Successful lends so far."""
        return (
            self.retired_lends
            + sum(s.seq for s in self.members)
            + sum(s.seq for s in list(self.extra))
        )

    def enqueue(self, waiter: W, now: float) -> S | None:
        """Under the lock: queue a caller that found nothing to lend (it is served after
        those before it), unless a slot came back meanwhile: then it is lent to the
        caller at once and returned (the waiter is not queued)."""
        waiter.since = now
        slot = self.lend(now)  # a give_back without the lock may have put one back since
        if slot is not None:
            return slot
        # No call from lend's look at ``idle`` to the append (a return is none): a
        # give_back either came before it (and lend took that slot) or sees this waiter.
        self.waits += 1
        self.waiters.append(waiter)
        return None

    def cancel(self, waiter: W, now: float, *, timed_out: bool = True) -> bool:
        """Withdraw a waiter (its time ran out, or it was interrupted).

        False if it was served (it holds ``waiter.slot``) or woken by close."""
        if waiter.slot is not None:
            return False
        try:
            self.waiters.remove(waiter)  # one call: a give_back cannot serve it in between
        except ValueError:  # already withdrawn
            return False
        self.wait_time += now - waiter.since
        if waiter.closed:
            return False
        if timed_out:
            self.timeouts += 1
        return True

    def give_back(self, slot: S, now: float) -> W | None:
        """Take back a lent slot: hand it to the first waiter (returned) or keep it idle.
        (Safe without the lock; see above.)

        Returns ``SLOW`` when the slot needs more than that (a connection past its
        lifetime, an overflow slot, a slot of a closed pool...): the caller then calls
        ``give_back_slow`` under the lock. Raises ``ValueError`` if the slot is not lent
        (put twice).
        """
        if slot.state is not LENT:
            raise ValueError(f"{self.describe(slot)} is not lent (put twice?)")
        slot.idle_since = now
        if now >= slot.slow_at:
            return SLOW  # type: ignore[no-any-return]
        if self.timed:  # untimed, ``due_at`` stays +inf (see ``timed``)
            due = now + self.review_after
            expires = slot.expires_at
            if expires < due:  # noqa: PLR1730 - not min(): no call here (see above)
                due = expires
            slot.due_at = due
        waiters = self.waiters
        if waiters:
            waiter = waiters[0]
            del waiters[0]
            waiter.slot = slot
            slot.seq += 1
            slot.lent_at = now
            slot.pending = now >= slot.due_at
            self.wait_time += now - waiter.since
            return waiter
        slot.state = IDLE
        self.idle.append(slot)
        return None

    def give_back_slow(self, slot: S, now: float) -> W | None:
        """Under the lock: give back a slot whose ``give_back`` said ``SLOW`` (or any lent
        slot: it runs ``give_back`` first). A slot past its lifetime, an overflow slot, a
        slot of a closed pool, one holding an inherited connection, a client slot with
        no client, or one whose check was interrupted. Returns a waiter it served,
        ``DRAIN`` when connections wait in ``doomed`` (the shell closes them), or
        ``None``."""
        waiter = self.give_back(slot, now)
        if waiter is not SLOW:
            return waiter
        self.checking.pop(slot, None)
        if slot.inherited:  # the parent's: dropped, never closed here
            self._release(slot)
        if self.closed:
            self.doom(slot, None)
            if slot.overflow:
                self._retire(slot)
            else:
                slot.state = IDLE  # not in ``idle``: a closed pool lends nothing
            return DRAIN  # type: ignore[no-any-return]
        if now >= slot.expires_at:
            self.doom(slot, "lifetime")
        self._schedule(slot)
        waiter = self._hand(slot, now, keep=not slot.overflow)
        if waiter is None and slot.overflow:  # nobody waits: an overflow slot closes
            self.doom(slot, "overflow")
            self._retire(slot)
        if waiter is None and self.doomed:
            return DRAIN  # type: ignore[no-any-return]
        return waiter

    def _retire(self, slot: S) -> None:
        """An overflow slot leaves the pool (its connection already doomed)."""
        self.extra.pop(slot, None)  # then GONE: an interrupt between leaves it lent
        self.retired_lends += slot.seq
        slot.state = GONE

    def _hand(self, slot: S, now: float, *, keep: bool = True) -> W | None:
        """Hand a slot that comes back to the first waiter, or (``keep``) keep it idle; in
        one call-free step, as ``give_back`` does (a give_back without the lock may serve
        the last waiter at any call before it)."""
        waiters = self.waiters
        if waiters:
            waiter = waiters[0]
            del waiters[0]
            waiter.slot = slot
            slot.state = LENT
            slot.seq += 1
            slot.lent_at = now
            slot.pending = now >= slot.due_at
            self.wait_time += now - waiter.since
            return waiter
        if keep:
            slot.state = IDLE
            self.idle.append(slot)
        return None

    def _schedule(self, slot: S) -> None:
        """Set ``due_at`` (when a lend must review the slot) and ``slow_at`` (when its
        give_back must take the slow path) from its state."""
        if slot.overflow or self.closed or slot.inherited:
            slot.slow_at = -_INF
        elif slot.conn is None and self.dial_in_lend:
            slot.slow_at = -_INF  # a client slot with no client: schedule it again on return
        else:
            slot.slow_at = slot.expires_at
        if slot.conn is None:
            slot.due_at = -_INF if self.dial_in_lend or self.review_after == -_INF else _INF
        else:
            since = max(slot.idle_since, slot.connected_at)
            slot.due_at = min(slot.expires_at, since + self.review_after)

    # -- what a lent slot needs before use -----------------------------------------

    def prepare(self, slot: S, now: float, *, fresh: bool = False) -> str | None:
        """Review a slot just lent (``slot.pending``, or ``fresh``): ``None`` (ready),
        ``CHECK`` (run the check, then report with ``checked``) or ``DIAL`` (dial it).

        A connection past its lifetime, idle longer than ``idle_timeout`` (while
        more than ``min_idle`` are connected) or to be replaced (``fresh``) is
        moved to ``doomed`` first.
        """
        slot.pending = False
        if slot.conn is not None:
            idle_since = max(slot.idle_since, slot.connected_at)
            if fresh:
                self.doom(slot, "fresh")
            elif now >= slot.expires_at:
                self.doom(slot, "lifetime")
            elif now >= idle_since + self.idle_timeout and self.connected > self.min_idle:
                self.doom(slot, "idle")
            elif now >= max(slot.checked_at, idle_since) + self.check_interval:
                return CHECK
        if slot.conn is None and self.dial_in_lend:
            return DIAL
        return None

    def check_begins(self, slot: S) -> None:
        """A check of ``slot`` starts (I/O failing during it counts as the check failing).
        Until ``checked``, its give_back takes the slow path, which ends the check if an
        interrupt kept ``checked`` from running."""
        slot.slow_at = -_INF
        self.checking[slot] = None

    def checked(self, slot: S, now: float, ok: bool, *, hook_failed: bool = False) -> None:
        """Record a check's outcome: a failed one dooms the connection (``closed_check``)."""
        self.checking.pop(slot, None)
        if hook_failed:
            self.hook_failures += 1
        if ok:
            slot.checked_at = now
        else:
            self.doom(slot, "check")
        self._schedule(slot)

    # -- connections leaving and joining slots -------------------------------------

    def doom(self, slot: S, reason: str | None) -> None:
        """Move the slot's connection (if any) to ``doomed`` and count why (``None``: the
        pool closed). The shell closes it outside the lock."""
        conn = slot.conn
        if conn is None:
            return
        key = id(conn)
        slot.conn = None  # from here to the append, no call: an interrupt cannot split them
        if not slot.overflow:
            self.connected -= 1
        slot.expires_at = _INF
        if reason is not None:
            self.closed_by[reason] += 1
        del self.by_conn[key]  # a statement, not a call
        if self.dial_in_lend:  # no client: its next lend dials (set before any call)
            slot.due_at = slot.slow_at = -_INF
        self.doomed.append(conn)
        self._schedule(slot)

    def _release(self, slot: S) -> None:
        """Drop an inherited connection without I/O (keep it referenced: no ``__del__``)."""
        conn = slot.conn
        slot.inherited = False
        if conn is None:
            return
        key = id(conn)
        slot.conn = None  # from here to the append, no call (see doom)
        if not slot.overflow:
            self.connected -= 1
        slot.expires_at = _INF
        del self.by_conn[key]
        self.released.append(conn)
        self._schedule(slot)

    def broke(self, slot: S) -> None:
        """The holder's I/O failed, or it put the slot back broken: doom its connection.
        I/O that fails during a check (``checking``) is that check failing."""
        if slot.conn is None:
            return
        if slot.inherited:  # the parent's: dropped, never closed here
            self._release(slot)
            return
        if slot in self.checking:
            self.doom(slot, "check")
            return
        self.broken += 1
        self.doom(slot, "broken")

    def found_stale(self, slot: S) -> None:
        """The connection was closed by the peer while idle: doom it (nothing was sent)."""
        if slot.conn is not None:
            self.stale += 1
            self.doom(slot, None)

    def holds(self, conn: Any) -> bool:
        """Whether ``conn`` is already some slot's connection (a dial hook that hands out
        one client twice)."""
        return id(conn) in self.by_conn

    def attach(self, slot: S, conn: Any, now: float) -> None:
        """A dial made ``conn`` for ``slot`` (lent or busy). Raises ``ValueError`` if another
        slot holds ``conn`` already (the shell checks ``holds`` first)."""
        key = id(conn)  # first: from ``slot.conn = conn`` to the map's entry, no call
        if key in self.by_conn:
            raise ValueError(f"{self.describe(slot)}: this connection is another slot's")
        slot.conn = conn
        if not slot.overflow:
            self.connected += 1
        self.by_conn[key] = slot
        slot.connected_at = slot.checked_at = now
        slot.base = slot.seq - (1 if slot.state is LENT else 0)
        # Each connection's lifetime is cut by a random 0-10%, so those made together
        # do not all expire together.
        slot.expires_at = now + self.max_lifetime * (1.0 - 0.1 * self.random())
        self._schedule(slot)
        if self.closed and slot.state is not LENT:
            self.doom(slot, None)

    # -- dialling: one backoff per pool ------------------------------------------------

    def dial_begin(self, now: float) -> float:
        """Ask to dial at ``now``: 0.0 means go ahead (counted), else the seconds to wait.
        A caller told to go ahead reports ``dial_failed``, ``dial_succeeded`` or
        ``dial_abandoned``. Raises ``PoolClosed`` on a closed pool."""
        if self.closed:
            raise PoolClosed(f"pool {self.label} is closed: not dialling")
        wait = self.backoff.begin(now)
        if wait == 0.0:
            self.dials += 1
            self.dialling += 1
        return wait

    def backoff_error(self, wait: float) -> DialError:
        """The error for a dial refused by the backoff (``wait`` from ``dial_begin``)."""
        backoff = self.backoff
        why = "another caller is probing it" if backoff.probing else "backing off"
        error = DialError(
            f"dial {self.label}: {why} after {backoff.failures} failed attempts "
            f"(last: {describe(backoff.last_error)}); next attempt in {wait:.3f}s",
            address=self.label,
            retry_in=wait,
        )
        error.__cause__ = backoff.last_error
        return error

    def dial_failed(self, now: float, started: float, exc: BaseException) -> DialError:
        """Record a failed dial that began at ``started``; return the error to raise."""
        retry_in = self.backoff.failed(now, started, exc)
        self.dial_failures += 1
        self.dialling -= 1
        error = DialError(
            f"dial {self.label} failed: {describe(exc)}; next attempt in {retry_in:.3f}s",
            address=self.label,
            retry_in=retry_in,
        )
        error.__cause__ = exc
        return error

    def dial_made(
        self, slot: S, conn: Any, now: float, started: float
    ) -> tuple[int, DialError | None]:
        """A dial that began at ``started`` made ``conn`` for ``slot``: attach it and return
        ``(failures before it, None)``; or, when the pool already holds ``conn`` (a dial
        hook that returned a client it had made before), record a failed dial and return
        ``(0, the error)``: the shell raises it and must not close ``conn`` (not its own)."""
        if self.holds(conn):
            return 0, self.dial_failed(
                now,
                started,
                TypeError(
                    f"dial hook {self.label} returned a client the pool already holds; "
                    "it must make a new one each time"
                ),
            )
        failures = self.dial_succeeded()
        self.attach(slot, conn, now)
        return failures, None

    def dial_succeeded(self) -> int:
        """Record a dial that worked; return how many had failed before it (0: none)."""
        failures = self.backoff.failures
        self.backoff.succeeded()
        self.dialling -= 1
        return failures

    def dial_abandoned(self, started: float) -> None:
        """A dial allowed at ``started`` ended with no outcome (interrupted)."""
        self.backoff.abandoned(started)
        self.dialling -= 1

    # -- the pool taking slots for itself (checks, background dials) -------------------

    def maintain(self, now: float) -> tuple[list[tuple[str, Any]], float]:
        """One background pass: what to do now, and when to look again.

        Returns tasks ``(CHECK, slot)`` and ``(DIAL, slot)`` for busy slots
        (report each with ``checked``/``attach`` then ``restore``) and
        ``(LEAK, slot)`` for lent slots held past ``leak_timeout`` (counted
        here, reported once per lend); closes what expired (``doomed``) and
        returns ``(WAKE, waiter)`` for a waiter it served meanwhile (the shell
        wakes it before it lets go of the lock).
        """
        tasks: list[tuple[str, Any]] = []
        if self.closed:
            return tasks, _INF
        due = _INF
        if self.leak_timeout < _INF:
            for slot in self._lent():
                if slot.reported == slot.seq:
                    continue
                at = slot.lent_at + self.leak_timeout
                if now >= at:
                    slot.reported = slot.seq
                    self.leaks += 1
                    tasks.append((LEAK, slot))
                else:
                    due = min(due, at)
        for slot in list(self.idle):  # a snapshot: lends without the lock change ``idle``
            if slot.state is not IDLE or slot.conn is None:
                continue
            idle_since = max(slot.idle_since, slot.connected_at)
            checked = max(slot.checked_at, idle_since) + self.check_interval
            expiry = idle_since + self.idle_timeout
            if self.connected <= self.min_idle:
                expiry = _INF
            if now >= slot.expires_at or now >= expiry or now >= checked:
                if not self._take(slot):
                    continue  # lent meanwhile: its lend reviews it
                if now < slot.expires_at and now < expiry:
                    tasks.append((CHECK, slot))
                    continue
                self.doom(slot, "lifetime" if now >= slot.expires_at else "idle")
                self._schedule(slot)
                waiter = self._hand(slot, now)
                if waiter is not None:
                    tasks.append((WAKE, waiter))
                continue
            due = min(due, slot.expires_at, checked, expiry)
        missing = self.min_idle - self.connected - self.busy_dials
        if missing > 0:
            wait = self.backoff.blocked(now)
            if wait > 0:
                due = min(due, now + wait)
            else:
                for slot in [s for s in list(self.idle) if s.conn is None][:missing]:
                    if self._take(slot):
                        self.busy_dials += 1
                        tasks.append((DIAL, slot))
        return tasks, due

    def _take(self, slot: S) -> bool:
        """Take an idle slot for the pool itself (busy); False if it was lent meanwhile.
        (From the check to the removal, no call: see "lending". Free-threaded, a lend may
        have removed it and not yet marked it: the removal fails then.)"""
        if slot.state is not IDLE:
            return False
        try:
            self.idle.remove(slot)
        except ValueError:
            return False
        slot.state = BUSY
        return True

    def _claim(self) -> S | None:
        """Under the lock: take the first idle slot off ``idle`` (not marked), or None."""
        idle = self.idle
        if idle:
            slot = idle[0]
            del idle[0]  # no call since the look: a lend without the lock cannot come between
            return slot
        return None

    def _lend_first(self, now: float, waiter: W | None) -> S | None:
        """Claim an idle slot and mark it lent, unless a waiter other than ``waiter`` is
        first in line."""
        waiters = self.waiters
        if waiters:
            try:
                if waiters[0] is not waiter:
                    return None
            except IndexError:  # served or withdrawn meanwhile, under the lock
                pass
        slot = self._claim()
        if slot is None:
            return None
        slot.state = LENT  # no call since the claim returned: an interrupt cannot split them
        slot.seq += 1
        slot.lent_at = now
        slot.pending = now >= slot.due_at
        return slot

    def settle_one(self, now: float) -> W | None:
        """Under the lock, after a ``give_back`` that returned ``SETTLE`` (or one that was
        interrupted): serve the first waiter from an idle slot and return it (to wake),
        or ``None`` when nobody waits or nothing is idle. One at a time, the claim and
        the hand-off with no call between them, so an interrupt loses neither. In a
        closed pool, dooms what a put crossing ``close`` left idle (then ``None``)."""
        if self.closed:
            self._doom_idle()
            return None
        waiters = self.waiters
        if not waiters:
            return None
        waiter = waiters[0]
        slot = self._lend_first(now, waiter)
        if slot is None:
            return None
        del waiters[0]  # under the lock nothing else takes from ``waiters``
        waiter.slot = slot
        self.wait_time += now - waiter.since
        return waiter

    def _lent(self) -> Iterator[S]:
        for slot in self.members:
            if slot.state is LENT:
                yield slot
        yield from (slot for slot in self.extra if slot.state is LENT)

    def restore(self, slot: S, now: float, *, dialled: bool = False) -> W | None:
        """Give back a busy slot (its check or dial is done): to the first waiter or idle."""
        self.checking.pop(slot, None)
        if dialled:
            self.busy_dials -= 1
        if self.closed:
            self.doom(slot, None)
            slot.state = IDLE
            return None
        self._schedule(slot)
        return self._hand(slot, now)

    @property
    def ready(self) -> bool:
        """Whether ``min_idle`` members are connected (or the pool is closed)."""
        return self.closed or self.connected >= self.min_idle

    # -- closing, forking ---------------------------------------------------------------

    def close(self) -> list[W]:
        """Mark closed and doom idle connections; return the waiters not yet woken.

        Running it again after an interruption finishes the job: waiters stay
        queued until the shell sets ``closed`` on each (and wakes it)."""
        self.closed = True
        for slot in (*self.members, *self.extra):
            slot.slow_at = -_INF  # lent ones (even lent from here on): closed when put back
        self._doom_idle()
        return [waiter for waiter in list(self.waiters) if not waiter.closed]

    def _doom_idle(self) -> None:
        """Doom the connection of every idle slot (the pool is closed); each stays IDLE,
        in no deque: a closed pool lends nothing. One at a time, as ``lend`` takes them
        (lends without the lock go on). The slot being doomed is kept in ``dooming``, so
        running it again after an interrupt finishes that one, and no other: a slot a
        lend without the lock has claimed but not yet marked is not the close's."""
        while True:
            slot = self.dooming
            if slot is None:
                slot = self._claim()
                if slot is None:
                    return
                self.dooming = slot  # no call since the claim returned
            self.doom(slot, None)
            self.dooming = None

    def after_fork(self, *, release_lent: bool) -> None:
        """In a forked child only the forking thread is left. Every connection was the
        parent's: idle and busy ones are released (``released``, no I/O). A lent slot
        stays lent until put back (a member may have been handed between threads, so
        who holds it cannot be known: it is never lent again before it is put back);
        its connection is released now with ``release_lent`` (socket members: the
        holder's next I/O redials), else when it is put back (a client object the
        holder has in hand). Nobody waits; a probe in flight belonged to a thread that
        is gone."""
        self.waiters.clear()
        self.busy_dials = 0
        self.dialling = 0
        self.checking.clear()
        self.backoff.abandoned()
        self.doomed.clear()  # the parent closes those
        for slot in (*self.members, *self.extra):
            if slot.state is BUSY:
                slot.state = IDLE
                if not self.closed:
                    self.idle.append(slot)
            if slot.state is LENT and not release_lent:
                if slot.conn is not None:
                    slot.inherited = True
                    self._schedule(slot)  # its give_back takes the slow path
            else:
                self._release(slot)

    # -- observing -----------------------------------------------------------------------

    def uses(self, slot: S) -> int:
        """Lends of the slot's current connection."""
        return slot.seq - slot.base if slot.conn is not None else 0

    def describe(self, slot: S) -> str:
        """A short name for a slot in errors: pool label and index."""
        kind = "overflow connection" if slot.overflow else "member"
        return f"{kind} #{slot.index} of {self.label}"

    def hook_failed(self) -> None:
        """A close hook (or a client's ``close()``) raised: count it."""
        self.hook_failures += 1

    def not_ready(self, timeout: float) -> PoolTimeout:
        """The ``PoolTimeout`` of a ``wait_ready`` whose ``timeout`` ran out."""
        return PoolTimeout(
            f"{self.label}: {self.connected} of min_idle={self.min_idle} members connected "
            f"within {timeout}s (last dial error: {self.backoff.last_error!r})",
            timeout=timeout,
        )

    def exhausted(
        self, timeout: float, now: float, where: Callable[[Any], str], *, count: bool = False
    ) -> PoolTimeout:
        """The ``PoolTimeout`` for a ``get`` that waited ``timeout``: says why. ``count``: a
        ``get(timeout=0)`` that found nothing, counted here (a queued one is counted by
        ``cancel``)."""
        if count:
            self.timeouts += 1
        lent = sum(1 for _ in self._lent())
        text = (
            f"no member of {self.label} became free within {timeout}s: "
            f"size {len(self.members)}, {lent} lent, {len(self.waiters)} waiting"
        )
        busy = sum(1 for slot in self.members if slot.state is BUSY)
        if busy:
            text += f", {busy} being checked or dialled by the pool"
        if self.max_overflow:
            text += f", overflow {len(self.extra)} of {self.max_overflow}"
        if self.leak_timeout < _INF and lent:
            oldest = min(self._lent(), key=lambda slot: slot.lent_at)
            text += (
                f"; the longest held (for {now - oldest.lent_at:.1f}s) was taken at "
                f"{where(oldest.stack)}"
            )
        return PoolTimeout(text, timeout=timeout)


class SharedCore(PoolCore[S, W]):
    """``PoolCore`` for threads that run at once (a free-threaded build; see the module
    docstring). Its uncontended ``lend`` and ``give_back`` still take no lock.

    ``held`` has an entry per lent slot (by index): a ``give_back`` without the lock
    deletes it, in one statement, before it gives the slot back, so of two threads that
    put the same member at once only one does (the other gets the put-twice error).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: dict[int, None] = {}

    def _lend_first(self, now: float, waiter: W | None) -> S | None:
        slot = super()._lend_first(now, waiter)
        if slot is not None:
            self.held[slot.index] = None  # no call since it was marked lent
        return slot

    def lend_slow(self, now: float) -> S | None:
        slot = super().lend_slow(now)
        if slot is not None:  # an overflow slot, or one lend found
            self.held[slot.index] = None
        return slot

    def _hand(self, slot: S, now: float, *, keep: bool = True) -> W | None:
        waiter = super()._hand(slot, now, keep=keep)
        if waiter is not None:  # lent to the waiter
            self.held[slot.index] = None
        return waiter

    def give_back_slow(self, slot: S, now: float) -> W | None:
        if slot.state is LENT and (now >= slot.slow_at or self.waiters):
            # The slow way back (its give_back says SLOW and leaves ``held`` alone): no
            # longer held from here, before it can be lent again (``_hand`` marks it for
            # a waiter). Afterwards would be too late: a lend without the lock may take
            # it and mark it as soon as it is idle.
            self.held.pop(slot.index, None)
        return super().give_back_slow(slot, now)

    def lend(self, now: float) -> S | None:
        """As ``PoolCore.lend``; ``None`` also while callers wait (the lock serves them in
        order), and when another thread claimed the idle slots first."""
        if self.waiters:
            return None
        return self._lend_first(now, None)

    def _claim(self) -> S | None:
        """Take the first idle slot off ``idle`` (not marked), or None: of two threads
        that see it, the one whose ``deque.remove`` finds it has it."""
        idle = self.idle
        while idle:
            try:
                slot = idle[0]
            except IndexError:  # another thread took the last one
                return None
            try:
                idle.remove(slot)
            except ValueError:  # the other thread: look again
                continue
            except BaseException:  # interrupted once it was removed: put it back
                idle.appendleft(slot)
                raise
            return slot
        return None

    def enqueue(self, waiter: W, now: float) -> S | None:
        """As ``PoolCore.enqueue``; after queueing, it looks at ``idle`` once more: a
        give_back without the lock appends there and then looks at ``waiters``, so of the
        two, whichever comes second sees the other."""
        slot = super().enqueue(waiter, now)
        if slot is not None:
            return slot
        slot = self._lend_first(now, waiter)
        if slot is not None:  # a slot came back meanwhile: this caller is first, no wait
            del self.waiters[0]  # it is this waiter (a statement: no interrupt lands here)
            self.waits -= 1
        return slot

    def give_back(self, slot: S, now: float) -> W | None:
        """As ``PoolCore.give_back``, but a waiter is served only under the lock: ``SLOW``
        while anyone waits; ``SETTLE`` when a caller queued as it gave the slot back.
        (Under the lock, from ``give_back_slow``, it never returns ``SETTLE``: callers
        queue only under the lock.)"""
        if slot.state is not LENT:
            raise ValueError(f"{self.describe(slot)} is not lent (put twice?)")
        slot.idle_since = now
        if now >= slot.slow_at or self.waiters:
            return SLOW  # type: ignore[no-any-return]
        if self.timed:
            due = now + self.review_after
            expires = slot.expires_at
            if expires < due:  # noqa: PLR1730 - not min(): no call from here to the append
                due = expires
            slot.due_at = due
        try:
            del self.held[slot.index]  # one thread's put deletes it: the other's fails
        except KeyError:
            raise ValueError(f"{self.describe(slot)} is not lent (put twice?)") from None
        slot.state = IDLE
        self.idle.append(slot)
        if self.waiters or self.closed:
            # A caller queued, or the pool closed, meanwhile: it may have looked at
            # ``idle`` before the append (``settle_one`` serves it, or dooms the slot).
            return SETTLE  # type: ignore[no-any-return]
        return None
