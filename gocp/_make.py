"""Making a pool from what the user passed, in either shell: the arguments are checked
once, then the shell's classes (``Shell``) make the connector and the pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._address import Address, AddressLike, format_address, parse_address
from ._config import Options

__all__ = [
    "Shell",
    "build_new",
    "build_pool",
    "check_hook",
    "client_options",
    "client_pool",
    "socket_pool",
]


@attrs.frozen
class Shell:
    """The classes one shell makes a pool with: the pool, its socket connector, its hook
    connector (threads: ``Pool``...; asyncio: ``gocp._aio_pool.AioPool``...)."""

    pool: Any
    sockets: Any
    hooks: Any


def build_new(
    address: AddressLike,
    *,
    size: int,
    logger: object,
    check: Callable[[Any], object] | None,
    options: dict[str, Any],
    shell: Shell,
) -> Any:
    """``gocp.new`` (and ``gocp.aio.new``): check the arguments, make the pool."""
    parsed = parse_address(address)
    check_hook("check", check, optional=True)
    opts = Options.build(options, check=check is not None)
    return socket_pool(parsed, size=size, options=opts, logger=logger, check=check, shell=shell)


def socket_pool(
    address: Address,
    *,
    size: int,
    options: Options,
    logger: object,
    check: Callable[[Any], object] | None,
    name: str | None = None,
    worker: Any = None,
    shell: Shell,
) -> Any:
    """``gocp.new`` once its arguments are checked: keyed pools and clusters make theirs
    here (``name`` overrides the option's, ``worker`` is the thread they share)."""
    if name is not None:
        options = attrs.evolve(options, name=name)
    connector = shell.sockets(address, options, check=check)
    text = format_address(address)
    return shell.pool(
        connector,
        size=size,
        options=options,
        logger=logger,
        sockets=True,
        address=text,
        worker=worker,
    )


def check_hook(name: str, hook: object, *, optional: bool) -> None:
    """A ``TypeError`` naming ``name`` unless ``hook`` is callable (or None, if optional)."""
    if not callable(hook) and not (optional and hook is None):
        expected = "a callable or None" if optional else "a callable"
        raise TypeError(f"{name}: expected {expected}, got {hook!r}")


def build_pool(
    dial: Callable[[], Any],
    *,
    size: int,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    logger: object,
    options: dict[str, Any],
    shell: Shell,
) -> Any:
    """``gocp.pool`` (and ``gocp.aio.pool``): check the arguments, make the pool."""
    check_hook("dial", dial, optional=False)
    check_hook("check", check, optional=True)
    check_hook("close", close, optional=True)
    opts = client_options(options, check=check)
    label = opts.name or getattr(dial, "__qualname__", None) or type(dial).__qualname__
    return client_pool(
        dial,
        size=size,
        options=opts,
        logger=logger,
        check=check,
        close=close,
        label=label,
        shell=shell,
    )


def client_options(options: dict[str, Any], *, check: object) -> Options:
    """The options of a pool of clients: no socket options; a check interval needs a check."""
    opts = Options.build(options, sockets=False, check=check is not None)
    if check is None and opts.check_interval is not None:
        raise ValueError("check_interval: needs a check hook (check=...) in a pool of clients")
    return opts


def client_pool(
    dial: Callable[[], Any],
    *,
    size: int,
    options: Options,
    logger: object,
    check: Callable[[Any], object] | None,
    close: Callable[[Any], object] | None,
    label: str,
    address: str | None = None,
    name: str | None = None,
    worker: Any = None,
    shell: Shell,
) -> Any:
    """``gocp.pool`` once its arguments are checked (see ``socket_pool``; ``label`` names
    the server in logs and errors, ``address`` in stats)."""
    if name is not None:
        options = attrs.evolve(options, name=name)
    connector = shell.hooks(
        dial, check=check, close=close, label=label, probe_lease=options.retry_max
    )
    return shell.pool(
        connector,
        size=size,
        options=options,
        logger=logger,
        sockets=False,
        address=address,
        worker=worker,
    )
