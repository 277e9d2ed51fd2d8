"""Pool options: validated once, at the call that received them."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from ssl import PROTOCOL_TLS_SERVER, SSLContext
from typing import Any

import attrs

__all__ = [
    "MAX_KEEPALIVE",
    "MAX_SECONDS",
    "MAX_SIZE",
    "SOCKET_ONLY",
    "Options",
    "check_bool",
    "check_size",
    "check_timeout",
]

#: The longest duration the platform can wait on (sockets and locks overflow beyond it).
MAX_SECONDS = threading.TIMEOUT_MAX

#: The longest TCP keepalive idle time Linux accepts (TCP_KEEPIDLE).
MAX_KEEPALIVE = 32767

#: The most members one pool may have: every member is an object and, when connected, a
#: file descriptor; far beyond this a typo (``size=10**7``) would eat memory for minutes.
MAX_SIZE = 100_000

#: Options that only a pool of sockets (``gocp.new``) has: a hook bounds its own I/O.
SOCKET_ONLY = frozenset(
    {"dial_timeout", "io_timeout", "nodelay", "keepalive", "ssl", "server_hostname"}
)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name}: expected a number of seconds, got {type(value).__name__} {value!r}"
        )
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float, e.g. 10**400
        raise ValueError(
            f"{name}: must be at most {MAX_SECONDS} seconds, got a {len(str(value))}-digit number"
        ) from None
    if math.isnan(seconds):
        raise ValueError(f"{name}: must be a number of seconds, got nan")
    return seconds


def check_timeout(name: str, value: object, *, zero: bool = True) -> float | None:
    """``None`` or a finite number of seconds ``>= 0`` (``> 0`` when ``zero`` is false),
    at most ``MAX_SECONDS``; else a ``TypeError``/``ValueError`` naming ``name``."""
    if value is None:
        return None
    seconds = _number(name, value)
    low = ">= 0" if zero else "> 0"
    if seconds < 0 or (seconds == 0 and not zero) or math.isinf(seconds):
        raise ValueError(f"{name}: must be {low} and finite, or None, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name}: must be at most {MAX_SECONDS} seconds, got {value!r}")
    return seconds


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``, else a ``TypeError`` naming ``name``."""
    if value is not True and value is not False:
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def check_size(value: object, name: str = "size") -> int:
    """A pool size: an ``int`` within 1..``MAX_SIZE``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if not 1 <= value <= MAX_SIZE:
        shown = value if abs(value) < 10**12 else f"a {len(str(value))}-digit number"
        raise ValueError(f"{name}: must be within 1..{MAX_SIZE}, got {shown}")
    return value


def _seconds(*, optional: bool = False) -> Any:
    def validate(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if value is None:
            raise TypeError(f"{attribute.name}: expected a number of seconds, got None")
        check_timeout(attribute.name, value, zero=False)

    return validate


def _boolean(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_bool(attribute.name, value)


def _count(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name}: expected an int, got {type(value).__name__} {value!r}")
    low = 1 if attribute.name == "dial_attempts" else 0
    if not low <= value <= MAX_SIZE:
        raise ValueError(f"{attribute.name}: must be within {low}..{MAX_SIZE}, got {value!r}")


def _keepalive(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    seconds = _number("keepalive", value)
    if not 1 <= seconds <= MAX_KEEPALIVE or seconds != int(seconds):
        raise ValueError(
            "keepalive: must be a whole number of seconds within 1..32767 (the kernel counts "
            f"whole seconds), or None, got {value!r}"
        )


def _tls_context(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, SSLContext):
        hint = " (for the system's CAs pass ssl.create_default_context())" if value is True else ""
        raise TypeError(
            f"ssl: expected an ssl.SSLContext or None{hint}, got {type(value).__name__} {value!r}"
        )
    if value.protocol == PROTOCOL_TLS_SERVER:
        raise ValueError(
            "ssl: a server-side context (PROTOCOL_TLS_SERVER) cannot make client connections; "
            "use ssl.create_default_context() or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)"
        )


def _server_hostname(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(
            f"server_hostname: expected a str or None, got {type(value).__name__} {value!r}"
        )
    if not value or not value.isprintable() or any(char.isspace() for char in value):
        raise ValueError(
            "server_hostname: must be a non-empty host name without spaces or control "
            f"characters, got {value!r}"
        )
    try:
        value.encode("idna")  # as ssl will, at every connect
    except UnicodeError as exc:
        raise ValueError(
            f"server_hostname: {value!r} is not a valid host name ({exc.__cause__ or exc})"
        ) from None


def _broken_on(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if callable(value) and not isinstance(value, type):
        return
    kinds = value if isinstance(value, tuple) else (value,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise TypeError(
            "broken_on: expected an exception type, a tuple of them, or a predicate taking "
            f"the exception, got {value!r}"
        )


def _callable(*, optional: bool) -> Any:
    def validate(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not callable(value):
            raise TypeError(f"{attribute.name}: expected a callable, got {value!r}")

    return validate


def _name(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"name: expected a str, got {type(value).__name__} {value!r}")
    if not value or not value.isprintable():
        raise ValueError(f"name: must be a non-empty printable string, got {value!r}")


@attrs.frozen(kw_only=True)
class Options:
    """Every option of a pool, with its default. Durations are seconds (``int`` or
    ``float``, ``> 0``); ``None`` turns an optional bound or policy off.

    Sockets only (``gocp.new``; a ``TypeError`` for ``gocp.pool``, whose hooks
    bound their own I/O):

    - ``dial_timeout`` (5.0): bound on one connect, all resolved addresses
      together (DNS lookup excluded).
    - ``io_timeout`` (30.0): bound on each wait for progress in send/recv;
      ``None`` waits without bound, as a blocking socket does.
    - ``nodelay`` (True): set ``TCP_NODELAY`` (no Nagle delay on small writes).
    - ``keepalive`` (30): TCP keepalive, whole seconds of silence before the
      kernel probes the peer (then every ``keepalive / 3`` s, 3 probes).
      ``None`` turns it off.
    - ``ssl`` (None): an ``ssl.SSLContext`` (a client context, e.g.
      ``ssl.create_default_context()``): every connection is TLS, its
      handshake within ``dial_timeout``. ``server_hostname`` (None: the
      address's host) is the name sent (SNI) and checked against the
      server's certificate; it needs ``ssl``.

    Every pool:

    - ``retry_min`` (0.1), ``retry_max`` (3.0): bounds of the jittered
      exponential wait between failed dials: after the n-th failure in a row,
      ``b = min(retry_max, retry_min * 2**n)`` and the wait is uniform in
      ``[b/2, b]``, never below ``retry_min``.
    - ``dial_attempts`` (1): dial attempts one ``get`` may make when it has
      to dial, waiting out the backoff between them within its timeout.
    - ``broken_on`` (``BaseException``): which exceptions leaving a
      ``connection()`` block put the member back broken: exception types or
      a predicate that receives the exception.
    - ``name`` (the address, or the dial hook's name): labels the pool in
      logs and errors.
    - lifecycle: ``check_interval`` (30.0 when a ``check`` hook is given),
      ``idle_timeout``, ``max_lifetime``, ``min_idle`` (0), ``max_overflow``
      (0), ``leak_timeout``; see the "Lifecycle options" guide.
    - ``clock`` (``time.monotonic``): the clock of every policy and backoff
      decision; tests pass ``gocp.testing.FakeClock()`` (the wall times in
      ``stats().members`` then move with it).
    """

    __module__ = "gocp"

    dial_timeout: float = attrs.field(default=5.0, validator=_seconds())
    io_timeout: float | None = attrs.field(default=30.0, validator=_seconds(optional=True))
    nodelay: bool = attrs.field(default=True, validator=_boolean)
    keepalive: float | None = attrs.field(default=30, validator=_keepalive)
    ssl: SSLContext | None = attrs.field(default=None, validator=_tls_context)
    server_hostname: str | None = attrs.field(default=None, validator=_server_hostname)
    retry_min: float = attrs.field(default=0.1, validator=_seconds())
    retry_max: float = attrs.field(default=3.0, validator=_seconds())
    dial_attempts: int = attrs.field(default=1, validator=_count)
    broken_on: Any = attrs.field(default=BaseException, validator=_broken_on)
    name: str | None = attrs.field(default=None, validator=_name)
    check_interval: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    idle_timeout: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    max_lifetime: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    min_idle: int = attrs.field(default=0, validator=_count)
    max_overflow: int = attrs.field(default=0, validator=_count)
    leak_timeout: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    clock: Callable[[], float] | None = attrs.field(
        default=None, validator=_callable(optional=True)
    )

    def __attrs_post_init__(self) -> None:
        if self.retry_max < self.retry_min:
            raise ValueError(
                f"retry_min ({self.retry_min!r}) must be <= retry_max ({self.retry_max!r})"
            )
        if self.server_hostname is not None and self.ssl is None:
            raise ValueError(
                f"server_hostname: given ({self.server_hostname!r}) without ssl=; it is the "
                "name TLS checks the certificate against, so pass an ssl.SSLContext too"
            )

    def tls_hostname(self, host: str) -> str | None:
        """The name a TLS connection to ``host`` sends (SNI) and verifies: ``server_hostname``,
        else ``host`` itself (an IPv6 zone id dropped); ``None`` without ``ssl``.

        Shared by every shell: the thread shell's connector and the asyncio one ask this.
        """
        if self.ssl is None:
            return None
        if self.server_hostname is not None:
            return self.server_hostname
        return host.partition("%")[0]

    @classmethod
    def build(
        cls, options: dict[str, Any], *, sockets: bool = True, check: bool = False
    ) -> Options:
        """Options from keyword arguments; an unknown name is a ``TypeError`` naming it.

        ``sockets=False`` refuses the socket-only options; ``check`` says a
        check hook was given (``check_interval`` then defaults to 30.0).
        """
        known = attrs.fields_dict(cls)
        for name in options:
            if name not in known:
                raise TypeError(
                    f"unknown option {name!r}; known options: {', '.join(sorted(known))}"
                )
            if not sockets and name in SOCKET_ONLY:
                why = (
                    "a gocp.pool dial hook makes its own TLS connection"
                    if name in ("ssl", "server_hostname")
                    else "a gocp.pool dial or check hook bounds its own I/O"
                )
                raise TypeError(f"{name}: an option of socket pools (gocp.new); {why}")
        given = dict(options)
        if check and "check_interval" not in given:
            given["check_interval"] = 30.0
        if "retry_min" in given and "retry_max" not in given:
            default_max = 3.0  # retry_max's default
            retry_min = _number("retry_min", given["retry_min"])
            if retry_min > default_max:
                raise ValueError(
                    f"retry_min: must be <= retry_max (default {default_max}), got "
                    f"{given['retry_min']!r}; raise retry_max too"
                )
        return cls(**given)

    def is_broken(self, exc: BaseException) -> bool:
        """Whether ``exc`` leaving a ``connection()`` block means the member is broken."""
        rule = self.broken_on
        if isinstance(rule, (type, tuple)):
            return isinstance(exc, rule)
        return bool(rule(exc))
