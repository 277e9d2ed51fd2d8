"""What keyed pools and clusters share: making their single-address pools, and knowing
which of them lent a member.

Both compose one ``Pool`` per key (a keyed pool) or per server (a cluster):
``Factory`` makes those pools from the arguments the user gave once, and
``Members`` finds the part (a key's entry, a server) that lent a member, so
that ``put`` reaches the right pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import attrs

from ._address import format_address, parse_address
from ._config import Options, check_size
from ._make import Shell, check_hook, client_options, client_pool, socket_pool
from ._member import SocketMember

__all__ = ["Factory", "Members", "Part", "factory"]

_PARSED_MAX = 4096  # addresses whose parse is remembered

_PARSED_MAX = 4096  # addresses whose parse is remembered


class Part(Protocol):
    """A key's entry or a cluster's server: something that holds one pool."""

    @property
    def pool(self) -> Any: ...


E = TypeVar("E", bound=Part)


@attrs.frozen
class Factory:
    """How a keyed pool or a cluster makes the pool of one key or server.

    ``make(key, worker)``; ``sockets`` (members are ``PersistentConn``);
    ``name`` (the ``name=`` option, or a default); ``key_of`` turns what the
    user passed into the key (socket addresses are parsed, so ``"h:1"`` and
    ``("h", 1)`` are one); ``show`` turns a key into text; ``clock``;
    ``dial_timeout`` (sockets; ``None`` for hooks).
    """

    make: Callable[[Hashable, Any], Any]  # (key, the shared worker or None) -> a pool
    sockets: bool
    name: str
    key_of: Callable[[object], Hashable]
    show: Callable[[Hashable], str]
    clock: Callable[[], float]
    dial_timeout: float | None


def factory(
    noun: str,
    *,
    size: int,
    dial: Callable[[Any], Any] | None,
    logger: object,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    options: dict[str, Any],
    default_name: str,
    shell: Shell,
) -> Factory:
    """Check the arguments of ``gocp.keyed``/``gocp.cluster`` once (errors name the
    argument; ``noun`` names what a key is: ``"key"``, ``"address"``) and return how
    to make each part's pool."""
    size = check_size(size)
    check_hook("dial", dial, optional=True)
    check_hook("check", check, optional=True)
    check_hook("close", close, optional=True)
    if dial is None:
        if close is not None:
            raise TypeError("close: a pool of sockets closes its own sockets")
        opts = Options.build(options, check=check is not None)
    else:
        opts = client_options(options, check=check)
    if opts.min_idle > size:
        raise ValueError(f"min_idle: must be <= size ({size}), got {opts.min_idle}")
    clock = opts.clock or time.monotonic
    if dial is None:

        def make_sockets(key: Hashable, worker: Any) -> Any:
            return socket_pool(
                key,  # type: ignore[arg-type]
                size=size,
                options=opts,
                logger=logger,
                check=check,
                worker=worker,
                shell=shell,
            )

        parsed: dict[object, Hashable] = {}  # what callers pass -> the key (parsing is slow)

        def address_key(value: object) -> Hashable:
            try:
                return parsed[value]
            except (KeyError, TypeError):  # new, or unhashable (parse_address says why)
                pass
            try:
                key = parse_address(value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(str(exc).replace("address: ", f"{noun}: ", 1)) from None
            if len(parsed) >= _PARSED_MAX:
                parsed.clear()  # a bound on memory, for callers that invent addresses
            parsed[value] = key
            return key

        return Factory(
            make_sockets,
            sockets=True,
            name=opts.name or default_name,
            key_of=address_key,
            show=format_address,  # type: ignore[arg-type]
            clock=clock,
            dial_timeout=opts.dial_timeout,
        )
    dial_hook = dial

    def make_clients(key: Hashable, worker: Any) -> Any:
        label = show_key(key)
        return client_pool(
            lambda: dial_hook(key),
            size=size,
            options=opts,
            logger=logger,
            check=check,
            close=close,
            label=label,
            address=label,
            worker=worker,
            shell=shell,
        )

    def hashable_key(value: object) -> Hashable:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{noun}: expected something hashable, got {type(value).__name__}"
            ) from None
        return value

    return Factory(
        make_clients,
        sockets=False,
        name=opts.name or default_name,
        key_of=hashable_key,
        show=show_key,
        clock=clock,
        dial_timeout=None,
    )


def show_key(key: Hashable) -> str:
    """A key of a pool of clients as text: itself if a string, else its ``repr``."""
    return key if isinstance(key, str) else repr(key)


class Members(Generic[E]):
    """Which part lent a member: socket members by their pool's hub, clients by
    identity (recorded at ``get``, dropped at ``put``). Thread-safe: dict operations
    only."""

    __slots__ = ("_by_hub", "_lent", "sockets")

    def __init__(self, *, sockets: bool) -> None:
        self.sockets = sockets
        self._by_hub: dict[Any, E] = {}
        self._lent: dict[int, tuple[Any, E]] = {}

    def register(self, part: E) -> None:
        """``part``'s pool was made (sockets: its members now lead to it)."""
        if self.sockets:
            self._by_hub[part.pool._hub] = part

    def unregister(self, part: E) -> None:
        """``part``'s pool is gone with nothing lent."""
        self._by_hub.pop(part.pool._hub, None)

    def lent(self, conn: Any, part: E) -> None:
        """``conn`` was just lent by ``part``'s pool (clients: remember by whom)."""
        if not self.sockets:
            self._lent[id(conn)] = (conn, part)

    def find(self, conn: Any) -> E | None:
        """The part that lent ``conn``, or None."""
        if self.sockets:
            return self._by_hub.get(getattr(conn, "_hub", None))
        held = self._lent.get(id(conn))
        return None if held is None or held[0] is not conn else held[1]

    def put(self, conn: Any, broken: bool, owner: object) -> E:
        """Give ``conn`` back to the pool that lent it; return its part. ``TypeError`` or
        ``ValueError`` (not lent by ``owner``, or put twice) leave everything as it was."""
        if broken is not False and broken is not True:
            raise TypeError(f"broken: expected True or False, got {broken!r}")
        if self.sockets:
            if not isinstance(conn, SocketMember):
                raise TypeError(
                    f"conn: expected a socket member (gocp.PersistentConn, gocp.aio.AioConn), "
                    f"got {type(conn).__name__}"
                )
            part = self._by_hub.get(conn._hub)
            if part is None:
                raise ValueError(f"conn: {conn!r} belongs to another pool, not {owner!r}")
            part.pool.put(conn, broken)
            return part
        held = self._lent.pop(id(conn), None)
        if held is None or held[0] is not conn:
            if held is not None:
                self._lent[id(conn)] = held
            raise ValueError(
                f"conn: {type(conn).__name__} object at {id(conn):#x} was not lent "
                f"by {owner!r} (or was put back already)"
            )
        part = held[1]
        try:
            part.pool.put(conn, broken)
        except BaseException:  # interrupted: finish the return
            part.pool._finish_put(conn, None, -1, broken)
            raise
        return part

    def broken_by(self, conn: Any, exc: BaseException | None) -> bool:
        """Whether a ``with`` block that raised ``exc`` leaves ``conn`` broken (by the
        rule of its pool; a stranger goes to ``put``, which says why it is refused)."""
        part = self.find(conn)
        return False if part is None else part.pool._broken_by(conn, exc)
