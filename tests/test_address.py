"""Addresses: what parses, and bad ones refused at the call with a message naming ``address``.

Nothing here touches the network: ``gocp.new`` never dials.
"""

from __future__ import annotations

import pytest
from hypothesis import given, provisional
from hypothesis import strategies as st

import gocp
from gocp._address import format_address, parse_address
from gocp.testing import FaultProxy


def refused(given: object, error: type[Exception], *why: str) -> str:
    """Assert ``parse_address(given)`` raises ``error`` naming ``address``, showing ``given``."""
    with pytest.raises(error) as info:
        parse_address(given)
    message = str(info.value)
    assert message.startswith("address: "), message
    assert repr(given) in message, message
    for words in why:
        assert words in message, message
    return message


# -- what parses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("example.com:1", ("example.com", 1)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1%lo]:22", ("fe80::1%lo", 22)),
        (("127.0.0.1", 7000), ("127.0.0.1", 7000)),
        (("::1", 7000), ("::1", 7000)),
    ],
)
def test_parse_address(given, expected):
    assert parse_address(given) == expected
    with gocp.new(given, size=1) as pool:
        assert pool.address == expected
        conn = pool.get()
        assert conn.address == expected
        pool.put(conn)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("[::ffff:1.2.3.4]:80", ("::ffff:1.2.3.4", 80)),
        ("[2001:db8::8a2e:370:7334]:443", ("2001:db8::8a2e:370:7334", 443)),
        ("bücher.example:443", ("bücher.example", 443)),  # IDNA, kept as given
        ("例え.テスト:80", ("例え.テスト", 80)),
        ("DB-1.Example.COM:5432", ("DB-1.Example.COM", 5432)),
        ("example.com.:80", ("example.com.", 80)),  # fully qualified
        ("my_service:6379", ("my_service", 6379)),  # container and compose names
        ("a" * 63 + ".b:1", ("a" * 63 + ".b", 1)),  # longest label
        (("b" * 62 + ".") * 4 + "c:1", (("b" * 62 + ".") * 4 + "c", 1)),  # 253 characters
        (("b" * 62 + ".") * 4 + "c.:1", (("b" * 62 + ".") * 4 + "c.", 1)),  # and its dot
        (("fe80::1%eth0", 80), ("fe80::1%eth0", 80)),
        (("localhost", 65535), ("localhost", 65535)),
    ],
)
def test_valid_addresses_still_parse(given, expected):
    assert parse_address(given) == expected


# -- refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":80",
        "host:port",
        "host:0",
        "host:65536",
        "host:-1",
        "host:+80",
        "host: 80",
        "host:8_0",
        "host:\uff18\uff10",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[::1:80",
        "[]:80",
        ("127.0.0.1", 0),
        ("", 80),
    ],
)
def test_bad_address_is_value_error_naming_it(given):
    with pytest.raises(ValueError, match="address"):
        gocp.new(given)


@pytest.mark.parametrize(
    "given",
    [
        None,
        80,
        b"127.0.0.1:80",
        ["127.0.0.1", 80],
        ("127.0.0.1",),
        ("127.0.0.1", 80, 0),
        (b"127.0.0.1", 80),
        ("127.0.0.1", 80.0),
        ("127.0.0.1", True),
        ("127.0.0.1", None),
        ("127.0.0.1", "80"),
    ],
)
def test_bad_address_is_type_error_naming_it(given):
    with pytest.raises(TypeError, match="address"):
        gocp.new(given)


@pytest.mark.parametrize(
    "given",
    [
        " localhost:80",
        "localhost :80",
        "\tlocalhost:80",
        "local host:80",
        "localhost\n:80",
        "db.example.com\r\n:5432",
        "ho\x00st:80",
        "ho\x7fst:80",
        "\x1b[31mhost:80",
        "\ufeffhost:80",  # a byte-order mark from a config file
        "ho\u200bst:80",  # zero-width space
        "host\u00a0:80",  # no-break space
        "[::1 ]:80",
        "[ fe80::1%eth0]:80",
        (" localhost", 80),
        ("localhost ", 80),
        ("local\thost", 80),
        ("localhost\n", 80),
        ("::1\n", 80),
    ],
)
def test_whitespace_or_control_characters_in_host(given):
    message = refused(given, ValueError, "host", "contains whitespace or control characters")
    host = given[0] if isinstance(given, tuple) else given.rpartition(":")[0].strip("[]")
    assert repr(host) in message


@pytest.mark.parametrize("given", ["localhost:80\n", "localhost:80 ", "localhost:\t80"])
def test_whitespace_around_the_port(given):
    refused(given, ValueError, "port", "contains whitespace or control characters")


@pytest.mark.parametrize(
    ("given", "bare"),
    [
        (("[::1]", 6379), "'::1'"),
        (("[fe80::1%eth0]", 80), "'fe80::1%eth0'"),
        (("[localhost]", 80), "'localhost'"),
    ],
)
def test_brackets_in_a_tuple_host(given, bare):
    refused(given, ValueError, "bare", f"use {bare}")


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("redis://localhost:6379", "'localhost:6379'"),
        ("redis://:secret@cache.internal:6379/0", "'cache.internal:6379'"),
        ("postgresql://user@db:5432/app?sslmode=require", "'db:5432'"),
        ("http://[::1]:8080/", "'[::1]:8080'"),
        ("tcp://10.0.0.7", "'10.0.0.7:<port>'"),
    ],
)
def test_a_url_is_refused_as_a_url(given, suggested):
    message = refused(given, ValueError, "looks like a URL", "'host:port'", suggested)
    assert "brackets" not in message


@pytest.mark.parametrize(
    "given",
    [
        "a:1,b:2",
        "a:1, b:2",
        "10.0.0.1:6379,10.0.0.2:6379",
        "a:1;b:2",
        "a:1 b:2",
        "[::1]:1 [::2]:2",
        "a,b:80",
    ],
)
def test_a_list_is_refused_as_a_list(given):
    message = refused(given, ValueError, "single address", "not a list")
    assert "brackets" not in message


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("::1:80", "'[::1]:80'"),
        ("fe80::1:443", "'[fe80::1]:443'"),
        ("2001:db8::1:5432", "'[2001:db8::1]:5432'"),
        ("fe80::1", "'[fe80::1]:80'"),  # no port at all
    ],
)
def test_unbracketed_ipv6_keeps_the_brackets_hint(given, suggested):
    refused(given, ValueError, "IPv6 hosts need brackets", suggested)


def test_too_many_colons_mentions_brackets():
    refused("host:80:90", ValueError, "one ':'", "brackets")


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("a..b:80", "empty label"),
        (".example.com:80", "empty label"),
        ("example..com.:80", "empty label"),
        (".:80", "empty label"),
        (("a..b", 80), "empty label"),
        ("a" * 64 + ".com:80", "not a valid host name"),
        (("b" * 62 + ".") * 4 + "cc:1", "longer than 253"),
        ("x" * 300 + ":1", "not a valid host name"),
        ("user@host:80", "'@' cannot appear"),
        ("host/path:80", "'/' cannot appear"),
        (("a:b", 80), "not a valid IPv6 address"),
        (("[::1", 80), "not a valid IPv6 address"),
    ],
)
def test_bad_host_names(given, why):
    refused(given, ValueError, why)


@pytest.mark.parametrize("given", [None, 80, b"127.0.0.1:80", ["127.0.0.1", 80]])
def test_type_error_shows_the_value(given):
    refused(given, TypeError, type(given).__name__)


def test_proxy_names_its_upstream_argument_instead():
    with pytest.raises(ValueError, match=r"^upstream: .*looks like a URL"):
        FaultProxy("redis://localhost:6379")


# -- formatting --------------------------------------------------------------------------


def test_format_address():
    assert format_address(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_address(("::1", 80)) == "[::1]:80"
    with gocp.new(("::1", 80), size=1) as pool:
        assert pool.stats().address == "[::1]:80"


_letters = "abcxyzABZ0189_äöüßéñçøåæдфжя中文日本語"
_unicode_names = st.lists(
    st.text(alphabet=_letters, min_size=1, max_size=10), min_size=1, max_size=4
).map(".".join)
_ipv6 = st.ip_addresses(v=6).map(str)
_zone = st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True)
hosts = st.one_of(
    provisional.domains(max_length=253),
    _unicode_names,
    st.ip_addresses(v=4).map(str),
    _ipv6,
    st.builds(lambda ip, zone: f"{ip}%{zone}", _ipv6, _zone),
)
ports = st.integers(min_value=1, max_value=65535)


@given(host=hosts, port=ports)
def test_format_then_parse_is_the_identity(host, port):
    assert parse_address(format_address((host, port))) == (host, port)
    assert parse_address((host, port)) == (host, port)
