"""``python -m gocp demo``: see the pool recover from faults by itself."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "demo":
        print("usage: python -m gocp demo [--seconds N] [--workers N] [--size N]", file=sys.stderr)
        return 2
    from ._demo import main as demo  # noqa: PLC0415 - keep `import gocp` light

    return demo(args[1:])


if __name__ == "__main__":
    sys.exit(main())
