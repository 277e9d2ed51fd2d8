"""The ``logger=`` argument: a printer, structlog, stdlib logging, or silence."""

from __future__ import annotations

import logging

import pytest
import structlog
from invariants import round_trip, unused_address

import gocp
from gocp.testing import EchoServer, FakeClock

FAST_RETRY = {"retry_min": 0.01, "retry_max": 0.05}


class Printer:
    """The Go original's ``Printer``: anything with a ``print`` method."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *args: object) -> None:
        self.lines.append(" ".join(str(a) for a in args))


class BrokenPrinter:
    def __init__(self) -> None:
        self.calls = 0

    def print(self, *args: object) -> None:
        self.calls += 1
        raise RuntimeError("the logger itself is broken")


def fail_a_dial(pool: gocp.Pool) -> gocp.DialError:
    with pool.connection(timeout=1) as conn, pytest.raises(gocp.DialError) as info:
        conn.sendall(b"x")
    return info.value


def break_a_connection(pool: gocp.Pool, rr_server) -> None:
    with pool.connection(timeout=1) as conn:
        conn.sendall(b"warm 1\n")
        assert conn.recv(64) == b"warm 1\n"
    rr_server.fail_next(1, "reset")
    with pytest.raises(gocp.ConnectionBroken):
        send_and_receive(pool, b"req-1 x\n")


def send_and_receive(pool: gocp.Pool, data: bytes) -> bytes:
    with pool.connection(timeout=1) as conn:
        conn.sendall(data)
        return conn.recv(64)


# -- print() ----------------------------------------------------------------------------


def test_printer_gets_one_line_per_dial_failure():
    address = unused_address()
    text = f"{address[0]}:{address[1]}"
    printer = Printer()
    with gocp.new(address, size=2, logger=printer, retry_min=5, retry_max=5) as pool:
        fail_a_dial(pool)
        assert len(printer.lines) == 1
        line = printer.lines[0]
        assert text in line
        assert "refused" in line.lower()
        assert "dial" in line
        assert "\n" not in line
        # While backing off no dial is made, so nothing more is printed (no log storm).
        for _ in range(5):
            fail_a_dial(pool)
        assert len(printer.lines) == 1


def test_printer_gets_one_line_per_broken_connection(rr_server):
    printer = Printer()
    with gocp.new(rr_server.address, size=1, logger=printer) as pool:
        break_a_connection(pool, rr_server)
    assert len(printer.lines) == 1
    line = printer.lines[0]
    assert rr_server.address_text in line
    assert "broken" in line
    assert "reset" in line.lower()


def test_printer_reports_an_io_timeout(rr_server):
    printer = Printer()
    with gocp.new(rr_server.address, size=1, logger=printer, io_timeout=0.1) as pool:
        rr_server.fail_next(1, "stall")
        with pytest.raises(gocp.IOTimeout):
            send_and_receive(pool, b"req-1 x\n")
    assert len(printer.lines) == 1
    assert rr_server.address_text in printer.lines[0]
    assert "timed out" in printer.lines[0]


def test_printer_notes_a_stale_connection_replaced(echo_server):
    printer = Printer()
    with gocp.new(echo_server.address, size=1, logger=printer) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        assert printer.lines == []  # success prints nothing
        echo_server.restart()
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
    assert len(printer.lines) == 1
    assert echo_server.address_text in printer.lines[0]
    assert "closed by the peer" in printer.lines[0]


def test_a_failing_logger_never_breaks_the_pool(echo_server):
    printer = BrokenPrinter()
    with gocp.new(echo_server.address, size=1, logger=printer, **FAST_RETRY) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        echo_server.kill_connections(reset=True)
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        echo_server.stop()
        error = fail_a_dial(pool)
        assert isinstance(error.__cause__, ConnectionRefusedError)
    assert printer.calls >= 2


# -- structlog ---------------------------------------------------------------------------


def test_structlog_gets_structured_events(rr_server):
    with structlog.testing.capture_logs() as logs:
        logger = structlog.get_logger()
        with gocp.new(rr_server.address, size=1, logger=logger, **FAST_RETRY) as pool:
            break_a_connection(pool, rr_server)
            rr_server.stop()
            fail_a_dial(pool)
    events = [entry["event"] for entry in logs]
    assert events == ["gocp.connection_broken", "gocp.dial_failed"]
    broken, dial = logs
    assert broken["log_level"] == "warning"
    assert broken["address"] == rr_server.address_text
    assert "reset" in broken["error"].lower()
    assert broken["op"] == "recv"
    assert broken["member"] == 0
    assert dial["log_level"] == "warning"
    assert dial["address"] == rr_server.address_text
    assert "refused" in dial["error"].lower()
    assert dial["attempt"] == 1
    assert 0.01 <= dial["retry_in"] <= 0.05


def test_structlog_bound_logger(echo_server):
    with structlog.testing.capture_logs() as logs:
        logger = structlog.get_logger().bind(component="cache")
        with gocp.new(echo_server.address, size=1, logger=logger) as pool:
            with pool.connection() as conn:
                assert round_trip(conn) == b"ping"
            echo_server.restart()
            with pool.connection() as conn:
                assert round_trip(conn) == b"ping"
    assert len(logs) == 1
    assert logs[0]["event"] == "gocp.stale_dropped"
    assert logs[0]["log_level"] == "info"
    assert logs[0]["component"] == "cache"
    assert logs[0]["address"] == echo_server.address_text


# -- stdlib logging ------------------------------------------------------------------------


def test_stdlib_logger_gets_records_with_extra_fields(rr_server, caplog):
    logger = logging.getLogger("gocp-tests.stdlib")
    caplog.set_level(logging.DEBUG, logger="gocp-tests.stdlib")
    with gocp.new(rr_server.address, size=1, logger=logger, **FAST_RETRY) as pool:
        break_a_connection(pool, rr_server)
        rr_server.stop()
        fail_a_dial(pool)
    records = [r for r in caplog.records if r.name == "gocp-tests.stdlib"]
    assert [r.event for r in records] == ["connection_broken", "dial_failed"]  # type: ignore[attr-defined]
    broken, dial = records
    assert broken.levelno == logging.WARNING
    assert broken.address == rr_server.address_text  # type: ignore[attr-defined]
    assert broken.op == "recv"  # type: ignore[attr-defined]
    assert rr_server.address_text in broken.getMessage()
    assert "reset" in broken.getMessage().lower()
    assert dial.levelno == logging.WARNING
    assert dial.attempt == 1  # type: ignore[attr-defined]
    assert "refused" in dial.error.lower()  # type: ignore[attr-defined]
    assert rr_server.address_text in dial.getMessage()


def test_stdlib_logger_adapter(caplog):
    address = unused_address()
    adapter = logging.LoggerAdapter(logging.getLogger("gocp-tests.adapter"), {"app": "x"})
    caplog.set_level(logging.DEBUG, logger="gocp-tests.adapter")
    with gocp.new(address, size=1, logger=adapter, **FAST_RETRY) as pool:
        fail_a_dial(pool)
    records = [r for r in caplog.records if r.name == "gocp-tests.adapter"]
    assert len(records) == 1
    # The adapter's own fields and gocp's both reach the record.
    assert records[0].event == "dial_failed"  # type: ignore[attr-defined]
    assert records[0].attempt == 1  # type: ignore[attr-defined]
    assert records[0].app == "x"  # type: ignore[attr-defined]


def test_stdlib_logger_level_filters(rr_server, caplog):
    logger = logging.getLogger("gocp-tests.filtered")
    caplog.set_level(logging.ERROR, logger="gocp-tests.filtered")
    with gocp.new(rr_server.address, size=1, logger=logger) as pool:
        break_a_connection(pool, rr_server)
    assert not [r for r in caplog.records if r.name == "gocp-tests.filtered"]


# -- silence --------------------------------------------------------------------------------


def test_no_logger_prints_nothing_anywhere(rr_server, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        with gocp.new(rr_server.address, size=1, **FAST_RETRY) as pool:
            break_a_connection(pool, rr_server)  # a broken connection
            rr_server.restart()
            with pool.connection() as conn:  # a stale one replaced
                conn.sendall(b"r 1\n")
                assert conn.recv(64) == b"r 1\n"
            rr_server.stop()
            fail_a_dial(pool)  # a failed dial
            fail_a_dial(pool)
        assert pool.stats().broken == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    assert caplog.records == []
    assert logs == []


class PrefixAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg, kwargs):
        msg, kwargs = super().process(msg, kwargs)
        return f"[{self.extra['tag']}] {msg}", kwargs


def test_nested_adapters_keep_their_processing_and_the_fields(caplog):
    address = unused_address()
    inner = PrefixAdapter(logging.getLogger("gocp-tests.nested"), {"tag": "db"})
    outer = logging.LoggerAdapter(inner, {"app": "y"})
    caplog.set_level(logging.DEBUG, logger="gocp-tests.nested")
    with gocp.new(address, size=1, logger=outer, **FAST_RETRY) as pool:
        fail_a_dial(pool)
    (record,) = [r for r in caplog.records if r.name == "gocp-tests.nested"]
    assert record.getMessage().startswith("[db] gocp: dial ")
    assert (record.event, record.app, record.tag) == ("dial_failed", "y", "db")  # type: ignore[attr-defined]


# -- event names and fields ------------------------------------------------------------------


def test_every_event_reported_is_in_the_table():
    """``gocp._log.EVENTS`` (the README's table) names every event the code reports."""
    import re
    from pathlib import Path

    from gocp._log import EVENTS

    pattern = re.compile(r"(?:report|_report|_log)\(\s*\"(info|warning|error)\",\s*\"(\w+)\"")
    found: dict[str, str] = {}
    for path in Path(gocp.__file__).parent.glob("*.py"):
        for level, event in pattern.findall(path.read_text()):
            found[event] = level
    assert found, "no report call found: the pattern is out of date"
    assert {event: EVENTS[event][0] for event in found} == found
    assert set(found) <= set(EVENTS)


def test_every_event_carries_the_pool_name_and_address(rr_server):
    with structlog.testing.capture_logs() as logs:
        logger = structlog.get_logger()
        with gocp.new(
            rr_server.address, size=1, logger=logger, name="orders", **FAST_RETRY
        ) as pool:
            break_a_connection(pool, rr_server)
            rr_server.stop()
            fail_a_dial(pool)
    assert [entry["event"] for entry in logs] == ["gocp.connection_broken", "gocp.dial_failed"]
    for entry in logs:
        assert entry["pool"] == "orders"
        assert entry["address"] == rr_server.address_text
        assert entry["member"] == 0
        assert "repeated" not in entry


# -- repeated failures: the first written, then a count at most once per interval ------------


def test_repeated_dial_failures_are_held_back_and_counted():
    from gocp._log import REPEAT_INTERVAL

    clock = FakeClock()
    address = unused_address()
    with structlog.testing.capture_logs() as logs:
        logger = structlog.get_logger()
        with gocp.new(
            address, size=3, logger=logger, clock=clock, retry_min=1.0, retry_max=1.0
        ) as pool:
            for _ in range(25):  # one failed dial per second of the pool's clock, t = 0..24
                fail_a_dial(pool)
                clock.advance(1.0)
            assert pool.stats().dial_failures == 25
            with EchoServer(*address) as server, pool.connection(timeout=5) as conn:
                assert round_trip(conn) == b"ping"  # the server is back: t = 25
                server.stop()
    assert REPEAT_INTERVAL == 10.0
    lines = [(e["event"], e.get("repeated"), e.get("period"), e.get("attempt")) for e in logs]
    assert lines == [
        ("gocp.dial_failed", None, None, 1),  # the first one, at once
        ("gocp.dial_failed", 10, 10.0, 11),  # t=10: itself and the 9 held since t=0
        ("gocp.dial_failed", 10, 10.0, 21),  # t=20
        ("gocp.dial_failed", 4, None, 25),  # t=21..24, written before the end of the outage
        ("gocp.reconnected", None, None, None),
    ]
    assert logs[-1]["failures"] == 25
    assert all(entry["log_level"] == "warning" for entry in logs[:-1])


def test_an_outage_of_a_hundred_members_writes_a_line_not_a_hundred(echo_server, caplog):
    """Every member of a pool of 100 finds its connection closed at once (a restart)."""
    logger = logging.getLogger("gocp-tests.outage")
    caplog.set_level(logging.DEBUG, logger="gocp-tests.outage")
    clock = FakeClock()
    with gocp.new(echo_server.address, size=100, logger=logger, clock=clock) as pool:
        members = [pool.get(timeout=0) for _ in range(100)]
        for conn in members:
            with conn:
                assert round_trip(conn) == b"ping"
        echo_server.restart()
        members = [pool.get(timeout=0) for _ in range(100)]
        for conn in members:
            with conn:  # each one redials: stale_dropped, 100 times at the same moment
                assert round_trip(conn) == b"ping"
        assert pool.stats().stale == 100
        records = [r for r in caplog.records if r.name == "gocp-tests.outage"]
        assert [(r.event, getattr(r, "repeated", None)) for r in records] == [
            ("stale_dropped", None)
        ]
        clock.advance(10.0)  # an interval later, the next one carries the count
        echo_server.restart()
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
    records = [r for r in caplog.records if r.name == "gocp-tests.outage"]
    assert [(r.event, getattr(r, "repeated", None)) for r in records] == [
        ("stale_dropped", None),
        ("stale_dropped", 100),
    ]
    last = records[-1]
    assert last.period == 10.0  # type: ignore[attr-defined]
    assert last.pool == echo_server.address_text  # type: ignore[attr-defined]
    assert "[100 times in 10.0s]" in last.getMessage()


def test_different_failures_are_not_held_behind_each_other():
    from gocp._log import RepeatLimiter

    limiter = RepeatLimiter(interval=10.0)
    refused = {"address": "a:1", "error": "refused", "member": 0, "attempt": 1}
    timeout = {"address": "a:1", "error": "timed out", "member": 1, "attempt": 2}
    other = {"address": "b:2", "error": "refused", "member": 0, "attempt": 1}
    assert limiter.admit(0.0, "warning", "dial_failed", refused) == [
        ("warning", "dial_failed", refused)
    ]
    assert limiter.admit(0.5, "warning", "dial_failed", timeout) == [
        ("warning", "dial_failed", timeout)
    ]
    assert limiter.admit(0.6, "warning", "dial_failed", other) == [
        ("warning", "dial_failed", other)
    ]
    # Another member, another attempt: the same failure (member and attempt vary).
    again = {**refused, "member": 7, "attempt": 9}
    assert limiter.admit(1.0, "warning", "dial_failed", again) == []
    assert limiter.admit(2.0, "warning", "connection_broken", refused) == [
        ("warning", "connection_broken", refused)
    ]


def test_a_count_held_is_written_with_the_next_event_after_the_interval():
    from gocp._log import RepeatLimiter

    limiter = RepeatLimiter(interval=10.0)
    broken = {"address": "a:1", "error": "reset", "op": "recv", "member": 0}
    limiter.admit(0.0, "warning", "connection_broken", broken)
    for member in range(1, 4):
        assert (
            limiter.admit(1.0, "warning", "connection_broken", {**broken, "member": member}) == []
        )
    stale = {"address": "a:1", "member": 5}
    assert limiter.admit(12.5, "info", "stale_dropped", stale) == [
        ("warning", "connection_broken", {**broken, "member": 3, "repeated": 3, "period": 12.5}),
        ("info", "stale_dropped", stale),
    ]
    # Written once: the identity is forgotten, its next occurrence is a first one again.
    assert limiter.admit(13.0, "warning", "connection_broken", broken) == [
        ("warning", "connection_broken", broken)
    ]


def test_the_oldest_identity_goes_first_and_its_count_is_written():
    from gocp._log import _CAPACITY, RepeatLimiter

    limiter = RepeatLimiter(interval=10.0)
    first = {"address": "a:1", "error": "e0"}
    limiter.admit(0.0, "warning", "check_failed", first)
    limiter.admit(0.0, "warning", "check_failed", first)  # held: 1
    for n in range(1, _CAPACITY):
        limiter.admit(0.0, "warning", "check_failed", {"address": "a:1", "error": f"e{n}"})
    lines = limiter.admit(0.0, "warning", "check_failed", {"address": "a:1", "error": "new"})
    assert lines == [
        ("warning", "check_failed", {"address": "a:1", "error": "new"}),
        ("warning", "check_failed", {**first, "repeated": 1, "period": 0.0}),
    ]


def test_reconnected_writes_the_counts_of_its_address_only():
    from gocp._log import RepeatLimiter

    limiter = RepeatLimiter(interval=10.0)
    here = {"address": "a:1", "error": "refused"}
    there = {"address": "b:2", "error": "refused"}
    for _ in range(3):
        limiter.admit(0.0, "warning", "dial_failed", here)
        limiter.admit(0.0, "warning", "dial_failed", there)
    back = {"address": "a:1", "failures": 3}
    assert limiter.admit(1.0, "info", "reconnected", back) == [
        ("warning", "dial_failed", {**here, "repeated": 2}),
        ("info", "reconnected", back),
    ]
    assert limiter.admit(1.5, "info", "reconnected", back) == [("info", "reconnected", back)]


def test_events_without_a_time_are_never_held():
    from gocp._log import make_log

    printer = Printer()
    log = make_log(printer)
    assert log is not None
    for _ in range(3):
        log("info", "key_closed", pool="keyed", key="a:1", reason="idle")
    assert printer.lines == ["gocp: key a:1 of keyed closed (reason=idle)"] * 3


def test_a_printer_line_carries_the_count():
    from gocp._log import make_log

    printer = Printer()
    log = make_log(printer)
    assert log is not None
    fields = {"address": "db:5432", "pool": "db:5432", "error": "ConnectionRefusedError: no"}
    log("warning", "dial_failed", 0.0, member=1, attempt=1, retry_in=0.1, **fields)
    log("warning", "dial_failed", 5.0, member=2, attempt=2, retry_in=0.2, **fields)
    log("warning", "dial_failed", 10.0, member=3, attempt=3, retry_in=0.4, **fields)
    assert printer.lines == [
        "gocp: dial db:5432 failed: ConnectionRefusedError: no (member=1, attempt=1, retry_in=0.1)",
        "gocp: dial db:5432 failed: ConnectionRefusedError: no [2 times in 10.0s] "
        "(member=3, attempt=3, retry_in=0.4)",
    ]


def test_a_named_pool_shows_its_name_in_the_line(caplog):
    address = unused_address()
    logger = logging.getLogger("gocp-tests.named")
    caplog.set_level(logging.DEBUG, logger="gocp-tests.named")
    with gocp.new(address, size=1, logger=logger, name="billing", **FAST_RETRY) as pool:
        fail_a_dial(pool)
    (record,) = [r for r in caplog.records if r.name == "gocp-tests.named"]
    assert "pool=billing" in record.getMessage()
    assert record.pool == "billing"  # type: ignore[attr-defined]
    assert record.member == 0  # type: ignore[attr-defined]


def test_close_writes_every_count_held_and_holds_nothing_after():
    from gocp._log import make_log

    printer = Printer()
    log = make_log(printer)
    assert log is not None
    for now in (0.0, 1.0, 2.0):
        log("warning", "close_failed", now, address="a:1", pool="a:1", error="boom")
    log.close(3.0)
    log("warning", "close_failed", 3.5, address="a:1", pool="a:1", error="boom")
    assert printer.lines == [
        "gocp: closing connection to a:1 failed: boom",
        "gocp: closing connection to a:1 failed: boom [2 times in 3.0s]",
        "gocp: closing connection to a:1 failed: boom",  # a member put back after close
    ]
