"""Parsing and formatting of server addresses.

Every error is a ``TypeError`` or ``ValueError`` whose message starts with
``"address: "``, says what is wrong and shows the value given (``FaultProxy``
rewrites that prefix to ``"upstream: "``).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

__all__ = ["Address", "AddressLike", "format_address", "parse_address"]

Address = tuple[str, int]
"""A parsed address: ``(host, port)``, the host bare (no brackets), the port in 1..65535."""

AddressLike = str | tuple[str, int]
"""What ``gocp.new`` and ``parse_address`` accept as an address.

- ``"host:port"``: a host name (``"db.example.com"``, ``"localhost"``, an
  IDNA name such as ``"bücher.example"``) or an IPv4 address (``"10.0.0.7"``),
  then ``:`` and the port as plain digits: ``"10.0.0.7:5432"``.
- ``"[v6addr]:port"``: an IPv6 address in brackets, optionally with a zone
  id: ``"[::1]:6379"``, ``"[fe80::1%eth0]:80"``.
- ``(host, port)``: a ``str`` host without brackets (``"::1"``, not
  ``"[::1]"``) and an ``int`` port: ``("::1", 6379)``.

One address only (no lists, no URLs); no whitespace or control characters
anywhere; ports are 1..65535.
"""

# Characters IDNA treats as label separators, as the "idna" codec does.
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
# ASCII in a host name: letters, digits, '-', '_' (used by some private names), '.'.
_ASCII_HOST = re.compile(r"[A-Za-z0-9._-]*")
_ENDS_IN_PORT = re.compile(r":[0-9]+$")
_HOST_PORT = re.compile(r"(\[[^\[\]]+\]|[^:\[\]]+):[0-9]+")  # roughly: for error messages
_MAX_HOST = 253  # RFC 1035, without the trailing dot of a fully qualified name


def _invisible(char: str) -> bool:
    """Whitespace, control or format (zero-width, BOM, soft hyphen) characters."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs")


def _port(value: object, given: object) -> int:
    if isinstance(value, str):
        # int() would also take " 80", "+80" and "8_0": only plain digits are a port.
        if any(_invisible(char) for char in value):
            raise ValueError(
                f"address: port {value!r} contains whitespace or control characters in {given!r}"
            )
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"address: port {value!r} is not a number in {given!r}")
        port = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        port = value
    else:
        raise TypeError(f"address: port must be an int, got {type(value).__name__} in {given!r}")
    if not 0 < port < 65536:
        raise ValueError(f"address: port must be within 1..65535, got {port} in {given!r}")
    return port


def _check_characters(host: str, given: object) -> None:
    if any(_invisible(char) for char in host):
        raise ValueError(
            f"address: host {host!r} contains whitespace or control characters in {given!r}"
        )


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _check_host(host: str, given: object) -> None:
    """Raise ``ValueError`` unless ``host`` is a bare IPv6 address, an IPv4 address or a name."""
    if not host:
        raise ValueError(f"address: empty host in {given!r}")
    _check_characters(host, given)
    if ":" in host:
        if not _is_ipv6(host):
            raise ValueError(f"address: host {host!r} is not a valid IPv6 address in {given!r}")
        return
    ascii_part = "".join(char for char in host if char.isascii())
    if not _ASCII_HOST.fullmatch(ascii_part):
        bad = next(c for c in ascii_part if not _ASCII_HOST.fullmatch(c))
        raise ValueError(
            f"address: host {host!r} is not a valid host name ({bad!r} cannot appear in one) "
            f"in {given!r}"
        )
    labels = _DOTS.split(host)
    if labels[-1] == "":  # "example.com." is fully qualified: one trailing dot is fine
        labels.pop()
    if "" in labels:
        raise ValueError(
            f"address: host {host!r} is not a valid host name (empty label) in {given!r}"
        )
    try:
        encoded = host.encode("idna")
    except UnicodeError as exc:
        raise ValueError(
            f"address: host {host!r} is not a valid host name ({exc.__cause__ or exc}) in {given!r}"
        ) from None
    length = len(encoded.rstrip(b"."))
    if length > _MAX_HOST:
        raise ValueError(
            f"address: host name is {length} characters, longer than {_MAX_HOST}, in {given!r}"
        )


def _url_host_port(address: str) -> str:
    """The ``host:port`` part of ``scheme://user@host:port/path?query``, or ``""``."""
    rest = address.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return authority.rpartition("@")[2]


def _looks_like_list(address: str) -> bool:
    if "," in address or ";" in address:
        return True
    parts = address.split()
    return len(parts) > 1 and all(_HOST_PORT.fullmatch(part) for part in parts)


def _unbracketed(host: str, port: str, address: str) -> str:
    """The message for ``"::1:80"`` and other text with more than one ``:``."""
    if _is_ipv6(host) and port:
        return (
            f"address: IPv6 hosts need brackets, '[v6addr]:port': "
            f"did you mean '[{host}]:{port}'? got {address!r}"
        )
    if _is_ipv6(address):
        return (
            f"address: IPv6 hosts need brackets and a port, '[v6addr]:port', "
            f"e.g. '[{address}]:80'; got {address!r}"
        )
    return (
        f"address: expected 'host:port' with one ':' (IPv6 hosts need brackets, "
        f"'[v6addr]:port'), got {address!r}"
    )


def _parse_text(address: str) -> Address:
    if "://" in address:
        part = _url_host_port(address)
        if part and not _ENDS_IN_PORT.search(part):
            part += ":<port>"
        hint = f" such as {part!r}" if part else ""
        raise ValueError(f"address: {address!r} looks like a URL; gocp wants 'host:port'{hint}")
    if _looks_like_list(address):
        raise ValueError(
            f"address: expected a single address (one 'host:port'), not a list: {address!r}"
        )
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1 : close + 2] != ":":
            raise ValueError(f"address: expected '[v6addr]:port', got {address!r}")
        return address[1:close], _port(address[close + 2 :], address)
    host, sep, rest = address.rpartition(":")
    if not sep:
        raise ValueError(f"address: expected 'host:port', got {address!r}")
    _check_characters(host, address)
    if ":" in host:
        raise ValueError(_unbracketed(host, rest, address))
    return host, _port(rest, address)


def parse_address(address: object) -> Address:
    """Return ``(host, port)`` from ``"host:port"``, ``"[v6]:port"`` or ``(host, port)``.

    See ``AddressLike``. Raises ``TypeError`` or ``ValueError`` naming the
    argument ``address``, saying what is wrong and showing the value.
    """
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or isinstance(address[1], str):
            raise TypeError(f"address: expected (host: str, port: int), got {address!r}")
        host, port = address[0], _port(address[1], address)
        if host.startswith("[") and host.endswith("]"):
            raise ValueError(
                f"address: in a (host, port) tuple the host is bare, without brackets: "
                f"use {host[1:-1]!r}, not {host!r}, in {address!r}"
            )
    elif isinstance(address, str):
        host, port = _parse_text(address)
    else:
        raise TypeError(
            f"address: expected 'host:port' or (host, port), "
            f"got {type(address).__name__} {address!r}"
        )
    _check_host(host, address)
    return host, port


def format_address(address: Address) -> str:
    """``"host:port"``, with brackets around an IPv6 host: the inverse of ``parse_address``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
