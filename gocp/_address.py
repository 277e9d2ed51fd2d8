"""Parsing and formatting of server addresses."""

from __future__ import annotations

__all__ = ["Address", "AddressLike", "parse_address"]

Address = tuple[str, int]
AddressLike = str | tuple[str, int]


def _port(value: object, given: object) -> int:
    if isinstance(value, str):
        # int() would also take " 80", "+80" and "8_0": only plain digits are a port.
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"address: port is not a number in {given!r}")
        port = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        port = value
    else:
        raise TypeError(f"address: port must be an int, got {type(value).__name__} in {given!r}")
    if not 0 < port < 65536:
        raise ValueError(f"address: port must be within 1..65535, got {port} in {given!r}")
    return port


def parse_address(address: object) -> Address:
    """Return ``(host, port)`` from ``"host:port"``, ``"[v6]:port"`` or ``(host, port)``.

    Raises ``TypeError`` or ``ValueError`` naming the argument ``address``.
    """
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or isinstance(address[1], str):
            raise TypeError(f"address: expected (host: str, port: int), got {address!r}")
        host, port = address[0], _port(address[1], address)
    elif isinstance(address, str):
        if address.startswith("["):
            close = address.find("]")
            if close < 0 or address[close + 1 : close + 2] != ":":
                raise ValueError(f"address: expected '[v6addr]:port', got {address!r}")
            host, port = address[1:close], _port(address[close + 2 :], address)
        else:
            host, sep, rest = address.rpartition(":")
            if not sep:
                raise ValueError(f"address: expected 'host:port', got {address!r}")
            if ":" in host:
                raise ValueError(
                    f"address: IPv6 hosts need brackets, '[v6addr]:port', got {address!r}"
                )
            port = _port(rest, address)
    else:
        raise TypeError(
            f"address: expected 'host:port' or (host, port), got {type(address).__name__}"
        )
    if not host:
        raise ValueError(f"address: empty host in {address!r}")
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"address: host {host!r} is not a valid host name ({exc})") from None
    return host, port


def format_address(address: Address) -> str:
    """``"host:port"``, with brackets around an IPv6 host."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
