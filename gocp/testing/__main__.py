"""``python -m gocp.testing proxy``: a FaultProxy in its own process, controlled over HTTP.

    python -m gocp.testing proxy --listen 127.0.0.1:15432 --upstream 127.0.0.1:5432

prints one JSON line once it listens, e.g.
``{"listen": "127.0.0.1:15432", "upstream": "127.0.0.1:5432", "control":
"http://127.0.0.1:40117"}``, then serves until SIGINT, SIGTERM or ``POST
/shutdown``, and exits 0. The control API (see ``gocp.testing._control``)
takes and answers JSON, e.g. ``curl -d '{"kind": "latency", "seconds": 0.1}'
http://127.0.0.1:40117/faults``. ``--listen`` with port 0 picks a free port.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from .._address import Address, format_address, parse_address
from ._control import ControlServer
from ._proxy import FaultProxy

__all__ = ["main"]

_POLL: float = 0.5  # the longest single wait of the main thread (signals land between)


def _address(text: str, *, any_port: bool) -> Address:
    """``host:port`` for argparse (port 0 allowed where ``any_port``)."""
    if any_port and text.endswith(":0"):
        host, _port = parse_address(text[:-2] + ":1")
        return host, 0
    return parse_address(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gocp.testing",
        description="gocp's test kit out of process: a fault-injecting TCP proxy.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser(
        "proxy",
        help="run a FaultProxy controlled over HTTP on loopback",
        description="Forward --listen to --upstream, injecting the faults set over HTTP.",
    )
    proxy.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="where clients connect (port 0: a free port; the first output line says which)",
    )
    proxy.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the real server")
    proxy.add_argument(
        "--control",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the HTTP control API, on loopback (default 127.0.0.1:0: a free port)",
    )
    proxy.add_argument("--seed", type=int, default=0, help="seeds every random draw (default 0)")
    proxy.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="bound of each upstream connect (default 5)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line (``argv``, default ``sys.argv[1:]``); return the exit status.

    The ready line goes to ``out`` (default ``sys.stdout``). Bad arguments
    exit with status 2 and a message naming the option.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    addresses: dict[str, Address] = {}
    for option in ("listen", "upstream", "control"):
        try:
            addresses[option] = _address(getattr(args, option), any_port=option != "upstream")
        except (TypeError, ValueError) as exc:
            parser.error(f"--{option}: {exc}")
    listen_host, listen_port = addresses["listen"]
    try:
        proxy = FaultProxy(
            addresses["upstream"],
            seed=args.seed,
            host=listen_host,
            port=listen_port,
            connect_timeout=args.connect_timeout,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    try:
        control = ControlServer(proxy, *addresses["control"])
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"{parser.prog}: --control {args.control}: {exc}", file=sys.stderr)
        return 1
    try:
        return _serve(proxy, control, parser.prog, args.listen, out or sys.stdout)
    finally:
        control.close()


def _serve(proxy: FaultProxy, control: ControlServer, prog: str, listen: str, out: TextIO) -> int:
    """Start both, print the ready line, wait for a signal or ``POST /shutdown``, stop."""
    stop = control.shutdown_requested  # set by POST /shutdown, and here by the signals

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, on_signal) for signum in signals}
    try:
        try:
            proxy.start()
        except OSError as exc:
            print(f"{prog}: --listen {listen} (or --upstream): {exc}", file=sys.stderr)
            return 1
        try:
            control.start()
            ready = {
                "listen": proxy.address_text,
                "upstream": format_address(proxy.upstream),
                "control": control.url,
            }
            print(json.dumps(ready), file=out, flush=True)
            while not stop.wait(_POLL):  # a bounded wait: signal handlers run in between
                pass
        finally:
            proxy.stop()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
