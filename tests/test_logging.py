"""The ``logger=`` argument: a printer, structlog, stdlib logging, or silence."""

from __future__ import annotations

import logging

import pytest
import structlog
from invariants import round_trip, unused_address

import gocp

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
