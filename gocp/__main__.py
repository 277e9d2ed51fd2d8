"""``python -m gocp demo``: see the pool recover from faults by itself.

``python -m gocp --help`` lists the commands and the demo's options.
Everything after ``demo`` goes to the demo (``gocp/_demo.py``), which parses
its own options: ``python -m gocp demo --help`` is the demo's own help.
"""

from __future__ import annotations

import argparse
import sys

USAGE = "python -m gocp demo [--seconds N] [--workers N] [--size N] [--cluster]"

# Only what --help shows, so that help does not import the demo: the demo
# parses its options itself. tests/test_cli.py checks this against its --help.
HELP = """\
gocp: persistent, self-reconnecting connection pools.

commands:
  demo           watch a pool recover from faults by itself: an echo server on
                 loopback, worker threads through a pool, connection resets, an
                 outage and a restart mid-run, a live view and a summary

demo options:
  --seconds N    length of the run
  --workers N    application threads
  --size N       pool size
  --cluster      three servers in a cluster, one stopped and restarted"""

EPILOG = "`python -m gocp demo --help` describes the demo in full."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gocp",
        usage=USAGE,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["demo"], metavar="COMMAND", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m gocp COMMAND ...``: ``--help`` exits 0, bad usage exits 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    # Options before the command are ours; everything after the command is the demo's.
    command = next((i for i, arg in enumerate(args) if not arg.startswith("-")), len(args))
    _parser().parse_args(args[: command + 1])  # exits: 0 after --help, 2 on bad usage
    # Only "demo" gets here: argparse refused any other command.
    from ._demo import main as demo  # noqa: PLC0415 - keep `import gocp` light

    return demo(args[command + 1 :])


if __name__ == "__main__":
    sys.exit(main())
