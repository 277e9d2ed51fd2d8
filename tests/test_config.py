"""Options, address parsing and bad arguments: each fails at the call, naming the argument."""

from __future__ import annotations

import math
import socket

import attrs
import pytest

import gocp
from gocp._config import MAX_SECONDS, check_timeout

# A port nothing listens on is never dialled here: ``new`` must not touch the network.
ADDRESS = "127.0.0.1:9"


# -- defaults ------------------------------------------------------------------


def test_documented_defaults():
    options = gocp.Options()
    assert options.dial_timeout == 5.0
    assert options.io_timeout == 30.0
    assert options.retry_min == 0.1
    assert options.retry_max == 3.0
    assert options.nodelay is True
    assert options.keepalive == 30.0


def test_new_applies_options_and_defaults():
    with gocp.new(ADDRESS) as pool:
        assert pool.size == 5
        assert pool.options == gocp.Options()
    with gocp.new(ADDRESS, size=2, dial_timeout=1, io_timeout=None, retry_min=0.5) as pool:
        assert pool.size == 2
        assert pool.options.dial_timeout == 1.0
        assert pool.options.io_timeout is None
        assert pool.options.retry_min == 0.5
        assert pool.options.retry_max == 3.0


def test_options_are_frozen_and_keyword_only():
    options = gocp.Options(io_timeout=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.io_timeout = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        gocp.Options(1.0)  # type: ignore[misc]


def test_size_and_options_are_keyword_only():
    with pytest.raises(TypeError):
        gocp.new(ADDRESS, 3)  # type: ignore[misc]


def test_new_never_touches_the_network():
    # A name that cannot resolve and a port nothing listens on: new still succeeds,
    # and so does get, because dialling happens on first I/O.
    with gocp.new("gocp-test.invalid:1", size=3) as pool:
        conn = pool.get(timeout=0)
        assert not conn.connected
        pool.put(conn)
        assert pool.stats().dials == 0


# -- bad options -----------------------------------------------------------------

DURATIONS = ["dial_timeout", "io_timeout", "retry_min", "retry_max"]


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize("value", ["1", b"1", True, [1], 1j])
def test_duration_of_wrong_type_is_type_error_naming_it(name, value):
    with pytest.raises(TypeError, match=name):
        gocp.new(ADDRESS, **{name: value})


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize("value", [0, -1, -0.5, math.inf, -math.inf, math.nan, 1e12])
def test_duration_out_of_range_is_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        gocp.new(ADDRESS, **{name: value})


def test_none_only_where_documented():
    with gocp.new(ADDRESS, io_timeout=None, keepalive=None) as pool:
        assert pool.options.io_timeout is None
        assert pool.options.keepalive is None
    for name in ("dial_timeout", "retry_min", "retry_max"):
        with pytest.raises(TypeError, match=name):
            gocp.new(ADDRESS, **{name: None})


def test_largest_duration_is_accepted():
    # The bound is what sockets and locks can wait on; right at it is fine.
    assert gocp.Options(io_timeout=MAX_SECONDS).io_timeout == MAX_SECONDS


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_nodelay_must_be_bool(value):
    with pytest.raises(TypeError, match="nodelay"):
        gocp.new(ADDRESS, nodelay=value)


@pytest.mark.parametrize(("value", "error"), [("30", TypeError), (0, ValueError), (-1, ValueError)])
def test_keepalive_validated(value, error):
    with pytest.raises(error, match="keepalive"):
        gocp.new(ADDRESS, keepalive=value)


def test_retry_max_below_retry_min():
    with pytest.raises(ValueError, match="retry_max"):
        gocp.new(ADDRESS, retry_min=1.0, retry_max=0.5)
    with gocp.new(ADDRESS, retry_min=0.5, retry_max=0.5) as pool:
        assert pool.options.retry_max == 0.5


def test_unknown_option_is_type_error_naming_it():
    with pytest.raises(TypeError, match="io_timout") as info:
        gocp.new(ADDRESS, io_timout=1.0)
    assert "io_timeout" in str(info.value)  # the message lists what is known


@pytest.mark.parametrize(
    ("value", "error"),
    [("5", TypeError), (2.0, TypeError), (True, TypeError), (0, ValueError), (-3, ValueError)],
)
def test_bad_size(value, error):
    with pytest.raises(error, match="size"):
        gocp.new(ADDRESS, size=value)


@pytest.mark.parametrize("logger", [object(), "log", 42, print])
def test_bad_logger(logger):
    with pytest.raises(TypeError, match="logger"):
        gocp.new(ADDRESS, logger=logger)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1", TypeError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (1e12, ValueError),
    ],
)
def test_bad_get_timeout(value, error):
    with gocp.new(ADDRESS, size=1) as pool:
        with pytest.raises(error, match="timeout"):
            pool.get(timeout=value)
        with pytest.raises(error, match="timeout"), pool.connection(timeout=value):
            pass
        s = pool.stats()
        assert (s.idle, s.in_use, s.lends, s.timeouts) == (1, 0, 0, 0)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1", TypeError),
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (1e12, ValueError),
    ],
)
def test_bad_conn_settimeout(value, error):
    with gocp.new(ADDRESS, size=1, io_timeout=7) as pool:
        conn = pool.get()
        try:
            with pytest.raises(error, match="timeout"):
                conn.settimeout(value)
            assert conn.gettimeout() == 7.0
        finally:
            pool.put(conn)


def test_check_timeout():
    assert check_timeout("t", None) is None
    assert check_timeout("t", 0) == 0.0
    assert check_timeout("t", 2) == 2.0
    assert isinstance(check_timeout("t", 2), float)
    with pytest.raises(ValueError, match=r"^t:"):
        check_timeout("t", -0.1)


# -- socket options reach the socket -------------------------------------------------


def test_nodelay_and_keepalive_on_by_default(echo_server):
    with gocp.new(echo_server.address, size=1) as pool, pool.connection(timeout=1) as conn:
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        sock = conn.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.gettimeout() == 30.0


def test_nodelay_and_keepalive_can_be_turned_off(echo_server):
    options = {"nodelay": False, "keepalive": None, "io_timeout": 2.5}
    with (
        gocp.new(echo_server.address, size=1, **options) as pool,
        pool.connection(timeout=1) as conn,
    ):
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        sock = conn.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert sock.gettimeout() == 2.5


def test_keepalive_seconds_reach_the_socket(echo_server):
    if not hasattr(socket, "TCP_KEEPIDLE"):
        pytest.skip("no TCP_KEEPIDLE on this platform")
    with (
        gocp.new(echo_server.address, size=1, keepalive=9) as pool,
        pool.connection(timeout=1) as conn,
    ):
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        sock = conn.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 9
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
