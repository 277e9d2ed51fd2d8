"""``gocp._dial.connect``: several addresses for one name, tried within one deadline.

Real loopback sockets only. A "blackholed" address (one whose SYNs are dropped, as by a
firewall) is made without root: a listener with ``listen(0)`` whose accept queue is filled
by a connection nobody accepts, after which Linux drops every further SYN. It is bound on
127.0.0.2 or 127.0.0.3 (Linux routes all of 127/8 to lo), live listeners on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import errno
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import open_fds

from gocp._dial import connect, order_addresses

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux loopback"),
    pytest.mark.timeout(10),
]

Info = tuple[Any, ...]


def info(sockaddr: tuple[Any, ...]) -> Info:
    """A getaddrinfo entry for ``sockaddr`` (IPv6 when it has a ':')."""
    family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


def resolver(*sockaddrs: tuple[Any, ...]) -> Callable[..., list[Info]]:
    """A ``resolve`` answering ``sockaddrs`` in this order, whatever the name."""

    def resolve(host: str, port: int, **kwargs: Any) -> list[Info]:
        assert kwargs == {"type": socket.SOCK_STREAM}
        return [info(a) for a in sockaddrs]

    return resolve


def label(sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Net:
    """Loopback endpoints for one test, all closed at its end."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack

    def _socket(self, family: int = socket.AF_INET) -> socket.socket:
        return self._stack.enter_context(socket.socket(family, socket.SOCK_STREAM))

    def live(self, host: str = "127.0.0.1") -> socket.socket:
        """A listener that completes connections (not accepted unless the test does)."""
        listener = self._socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.bind((host, 0))
        listener.listen(16)
        listener.settimeout(5.0)
        return listener

    def refused(self, host: str = "127.0.0.1") -> tuple[Any, ...]:
        """An address answering RST: a bound socket that does not listen keeps the port."""
        sock = self._socket()
        sock.bind((host, 0))
        return sock.getsockname()  # type: ignore[no-any-return]

    def blackhole(self, host: str = "127.0.0.2") -> tuple[Any, ...]:
        """An address that drops SYNs: a listen(0) listener whose queue is full."""
        listener = self._socket()
        listener.bind((host, 0))
        listener.listen(0)
        address: tuple[Any, ...] = listener.getsockname()
        for _ in range(8):
            probe = self._socket()
            probe.setblocking(False)
            assert probe.connect_ex(address) == errno.EINPROGRESS
            _, writable, _ = select.select([], [probe], [], 0.1)
            if not writable:
                return address  # this SYN was dropped: so will the next ones be
            assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # queued
        pytest.fail("could not fill the accept queue of a listen(0) listener")


@pytest.fixture
def net() -> Iterator[Net]:
    with contextlib.ExitStack() as stack:
        yield Net(stack)


def accepted_from(listener: socket.socket, client: socket.socket) -> None:
    """Assert ``client`` is connected to ``listener``, accepting its connection."""
    conn, peer = listener.accept()
    with conn:
        assert peer == client.getsockname()
        assert client.getpeername() == listener.getsockname()


# -- order of the addresses (RFC 8305 section 4) ---------------------------------------

V6 = [info((f"2001:db8::{i}", 80, 0, 0)) for i in range(1, 4)]
V4 = [info((f"192.0.2.{i}", 80)) for i in range(1, 4)]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([V4[0]], [V4[0]], id="one"),
        pytest.param(V6[:3] + V4[:3], [V6[0], V4[0], V6[1], V4[1], V6[2], V4[2]], id="v6-first"),
        pytest.param(V4[:2] + V6[:2], [V4[0], V6[0], V4[1], V6[1]], id="v4-first"),
        pytest.param(
            [V6[0], V6[1], V6[2], V4[0]], [V6[0], V4[0], V6[1], V6[2]], id="uneven-families"
        ),
        pytest.param([V4[0], V6[0], V4[1], V6[1]], [V4[0], V6[0], V4[1], V6[1]], id="mixed"),
        pytest.param(
            [V4[0], V4[0], V6[0], V4[1], V6[0], V4[0]], [V4[0], V6[0], V4[1]], id="duplicates"
        ),
        pytest.param([V4[0], V4[1], V4[2]], [V4[0], V4[1], V4[2]], id="one-family"),
    ],
)
def test_order_interleaves_families_starting_with_the_first(
    given: list[Info], expected: list[Info]
) -> None:
    assert order_addresses(given) == expected


def test_order_of_real_getaddrinfo_entries() -> None:
    infos = socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    infos += socket.getaddrinfo("::1", 80, type=socket.SOCK_STREAM) + infos
    assert [i[4][0] for i in order_addresses(infos)] == ["127.0.0.1", "::1"]


# -- connecting ---------------------------------------------------------------------------


def test_single_live_address_connects_and_is_blocking_without_timeout(net: Net) -> None:
    live = net.live()
    before = open_fds()
    with connect("127.0.0.1", live.getsockname()[1], time.monotonic() + 5) as sock:
        assert open_fds() == before + 1
        assert sock.getblocking()
        assert sock.gettimeout() is None
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # untouched
        accepted_from(live, sock)


def test_blackholed_first_live_second_connects_after_attempt_delay(net: Net) -> None:
    dead, live = net.blackhole(), net.live()
    delay = 0.2
    before = open_fds()
    started = time.monotonic()
    sock = connect(
        "db.test",
        5432,
        started + 5.0,
        resolve=resolver(dead, live.getsockname()),
        attempt_delay=delay,
    )
    elapsed = time.monotonic() - started
    with sock:
        # The blackholed address was tried first: the live one waited attempt_delay.
        assert delay <= elapsed < delay + 1.0, elapsed
        assert open_fds() == before + 1  # the pending attempt to the blackhole is closed
        accepted_from(live, sock)


def test_live_first_blackholed_second_connects_at_once(net: Net) -> None:
    dead, live = net.blackhole(), net.live()
    started = time.monotonic()
    with connect(
        "db.test",
        5432,
        started + 5.0,
        resolve=resolver(live.getsockname(), dead),
        attempt_delay=2.0,
    ) as sock:
        assert time.monotonic() - started < 1.0
        accepted_from(live, sock)


def test_refused_first_starts_the_next_without_waiting(net: Net) -> None:
    refused, live = net.refused(), net.live()
    started = time.monotonic()
    with connect(
        "db.test",
        5432,
        started + 8.0,
        resolve=resolver(refused, live.getsockname()),
        attempt_delay=5.0,
    ) as sock:
        assert time.monotonic() - started < 1.0  # well under attempt_delay
        accepted_from(live, sock)


def test_failure_while_another_attempt_runs_starts_the_next_at_once(net: Net) -> None:
    """blackhole at 0, refused at attempt_delay fails, so live starts then, not 2x later."""
    dead, refused, live = net.blackhole(), net.refused(), net.live()
    delay = 0.5
    started = time.monotonic()
    with connect(
        "db.test",
        5432,
        started + 8.0,
        resolve=resolver(dead, refused, live.getsockname()),
        attempt_delay=delay,
    ) as sock:
        assert delay <= time.monotonic() - started < 2 * delay
        accepted_from(live, sock)


def test_all_refused_raises_the_last_error_naming_each_address(net: Net) -> None:
    first, second = net.refused("127.0.0.1"), net.refused("127.0.0.2")
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError) as caught:
        connect(
            "db.test",
            5432,
            started + 5.0,
            resolve=resolver(first, second),
            attempt_delay=5.0,
        )
    assert time.monotonic() - started < 1.0
    assert caught.value.errno == errno.ECONNREFUSED
    message = str(caught.value)
    assert "db.test:5432" in message
    assert f"{label(first)}: [Errno {errno.ECONNREFUSED}]" in message
    assert f"{label(second)}: [Errno {errno.ECONNREFUSED}]" in message


def test_single_refused_address_is_a_plain_connection_refused(net: Net) -> None:
    refused = net.refused()
    # The same address twice is one address: tried once.
    with pytest.raises(ConnectionRefusedError) as caught:
        connect("db.test", 5432, time.monotonic() + 5, resolve=resolver(refused, refused))
    assert caught.value.errno == errno.ECONNREFUSED
    assert str(caught.value) == (
        f"[Errno {errno.ECONNREFUSED}] connect to db.test:5432 ({label(refused)}) failed: "
        "Connection refused"
    )


def test_all_blackholed_times_out_at_the_deadline(net: Net) -> None:
    first, second = net.blackhole("127.0.0.2"), net.blackhole("127.0.0.3")
    before = open_fds()
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        connect(
            "db.test",
            5432,
            started + 0.5,
            resolve=resolver(first, second),
            attempt_delay=0.1,
        )
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.0, elapsed
    assert open_fds() == before
    assert caught.value.errno == errno.ETIMEDOUT
    message = str(caught.value)
    assert "connect to db.test:5432 timed out after 0.5s" in message
    assert f"pending: {label(first)}, {label(second)}" in message


def test_single_blackholed_address_times_out_at_the_deadline(net: Net) -> None:
    dead = net.blackhole()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"pending: 127\.0\.0\.2:"):
        connect(dead[0], dead[1], started + 0.3, attempt_delay=0.01)
    assert 0.3 <= time.monotonic() - started < 0.8


def test_timeout_names_failed_and_untried_addresses(net: Net) -> None:
    dead, refused = net.blackhole(), net.refused()
    with pytest.raises(TimeoutError) as caught:
        connect(
            "db.test",
            5432,
            time.monotonic() + 0.3,
            resolve=resolver(refused, dead, ("127.0.0.1", 9)),
            attempt_delay=5.0,
        )
    message = str(caught.value)
    assert f"pending: {label(dead)}" in message
    assert "not tried: 127.0.0.1:9" in message
    assert f"failed: {label(refused)}: [Errno {errno.ECONNREFUSED}]" in message


def test_first_of_simultaneous_successes_wins_and_the_other_is_closed(net: Net) -> None:
    first, second = net.live("127.0.0.1"), net.live("127.0.0.2")
    with connect(
        "db.test",
        5432,
        time.monotonic() + 5,
        resolve=resolver(first.getsockname(), second.getsockname()),
        attempt_delay=0.0,  # both start before either is seen connected
    ) as sock:
        accepted_from(first, sock)
    loser, _ = second.accept()  # the kernel completed it; connect() closed its end
    with loser:
        loser.settimeout(5.0)
        assert loser.recv(1) == b""


def test_deadline_passed_during_resolution_creates_no_socket(net: Net) -> None:
    live = net.live()
    now = [100.0]

    def slow_resolve(host: str, port: int, **kwargs: Any) -> list[Info]:
        now[0] += 3.0  # resolution took 3 s of a 2 s budget
        return [info(live.getsockname())]

    with pytest.raises(TimeoutError, match="deadline passed during name resolution") as caught:
        connect("db.test", 5432, 102.0, resolve=slow_resolve, clock=lambda: now[0])
    assert "connect to db.test:5432 timed out after 2s" in str(caught.value)
    live.setblocking(False)
    with pytest.raises(BlockingIOError):
        live.accept()  # no attempt was made


def test_resolver_gaierror_propagates_unchanged() -> None:
    with pytest.raises(socket.gaierror) as caught:
        connect("x.invalid", 80, time.monotonic() + 5)
    assert type(caught.value) is socket.gaierror

    raised = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def failing(host: str, port: int, **kwargs: Any) -> list[Info]:
        raise raised

    with pytest.raises(socket.gaierror) as caught:
        connect("db.test", 5432, time.monotonic() + 5, resolve=failing)
    assert caught.value is raised


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"IPv6 loopback ::1 cannot be bound on this machine: {exc}")


def test_ipv6_loopback(net: Net) -> None:
    ipv6_loopback()
    live = net.live("::1")
    port = live.getsockname()[1]
    with connect("::1", port, time.monotonic() + 5) as sock:  # the real resolver
        assert sock.family == socket.AF_INET6
        accepted_from(live, sock)


def test_blackholed_ipv4_then_live_ipv6(net: Net) -> None:
    ipv6_loopback()
    dead, live = net.blackhole(), net.live("::1")
    started = time.monotonic()
    with connect(
        "db.test",
        5432,
        started + 5,
        resolve=resolver(dead, live.getsockname()),
        attempt_delay=0.1,
    ) as sock:
        assert 0.1 <= time.monotonic() - started < 1.1
        assert sock.family == socket.AF_INET6
        accepted_from(live, sock)


# -- malformed answers and interruptions: no socket left open ------------------------------


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(None, TypeError, id="none"),
        pytest.param([("garbage",)], TypeError, id="short-tuple"),
        pytest.param([(socket.AF_INET, socket.SOCK_STREAM, 6, "", "x")], TypeError, id="str"),
        pytest.param(
            [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", "80"))],
            TypeError,
            id="str-port",
        ),
        pytest.param(
            [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", 80))],
            ValueError,
            id="datagram",
        ),
        pytest.param([], OSError, id="empty"),
    ],
)
def test_malformed_resolver_answer_is_rejected_before_any_socket(
    answer: object, error: type[Exception]
) -> None:
    def garbage(*args: Any, **kwargs: Any) -> Any:
        return answer

    before = open_fds()
    with pytest.raises(error, match=r"db\.test:5432"):
        connect("db.test", 5432, time.monotonic() + 5, resolve=garbage)
    assert open_fds() == before


def test_unusable_address_fails_its_attempt_only(net: Net) -> None:
    live = net.live()
    answer = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("::1", 80)),  # not an IPv4 address
        (12345, socket.SOCK_STREAM, 0, "", ("x", 80)),  # no such address family
        info(live.getsockname()),
    ]
    with connect("db.test", 5432, time.monotonic() + 5, resolve=lambda *a, **k: answer) as sock:
        accepted_from(live, sock)


def test_error_midway_closes_the_running_attempts(net: Net) -> None:
    dead = net.blackhole()
    answer = [info(dead), (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 70000))]
    before = open_fds()
    with pytest.raises(OverflowError):
        connect(
            "db.test", 5432, time.monotonic() + 5, resolve=lambda *a, **k: answer, attempt_delay=0
        )
    assert open_fds() == before


def test_keyboard_interrupt_from_resolve() -> None:
    def interrupted(*args: Any, **kwargs: Any) -> list[Info]:
        raise KeyboardInterrupt

    before = open_fds()
    with pytest.raises(KeyboardInterrupt):
        connect("db.test", 5432, time.monotonic() + 5, resolve=interrupted)
    assert open_fds() == before


def test_keyboard_interrupt_from_clock_at_every_call_leaks_nothing(net: Net) -> None:
    """Interrupt at the 1st, 2nd, ... call of the clock until a connect gets through."""
    dead, live = net.blackhole(), net.live()
    resolve = resolver(dead, ("127.0.0.1", net.refused()[1]), dead, live.getsockname())
    before = open_fds()
    for stop_at in range(100):
        calls = 0

        def clock(stop_at: int = stop_at) -> float:
            nonlocal calls
            calls += 1
            if calls > stop_at:
                raise KeyboardInterrupt
            return time.monotonic()

        try:
            sock = connect(
                "db.test",
                5432,
                time.monotonic() + 5,
                resolve=resolve,
                clock=clock,
                attempt_delay=0.05,
            )
        except KeyboardInterrupt:
            assert open_fds() == before, f"leak when interrupted at clock call {stop_at + 1}"
            continue
        with sock:  # earlier interrupted attempts may be queued at the listener too
            assert sock.getpeername() == live.getsockname()
        assert stop_at >= 5  # it was interrupted while attempts were running
        break
    else:
        pytest.fail("connect never got through")
    assert open_fds() == before


def test_keyboard_interrupt_during_the_wait_leaks_nothing(net: Net) -> None:
    """A real signal arrives while connect() waits in poll() on a blackholed attempt."""
    dead = net.blackhole()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Timer(
        0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)
    )
    try:
        before = open_fds()
        started = time.monotonic()
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            connect(dead[0], dead[1], started + 5)
        assert time.monotonic() - started < 4
        assert open_fds() == before
    finally:
        sender.cancel()
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
