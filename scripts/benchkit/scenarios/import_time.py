"""``import``: wall time of ``python -c "import X"`` minus ``python -c "pass"`` (a fresh
interpreter each, bytecode cached), for gocp and each peer's module; and what gocp pulls
in from outside, from ``-X importtime``."""

from __future__ import annotations

import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile

from ..peers import PEERS
from ..results import Row, Settings, Table
from ..timing import perf


@functools.cache
def _import_env() -> dict[str, str]:
    """The environment of the import measurements: bytecode cached (in a private prefix,
    written by the first run), as a user's installed package has it, even where
    PYTHONDONTWRITEBYTECODE is set (it is on these machines): compiling the source on
    every run would measure the compiler, not the import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="gocp-bench-pycache-")
    return env


def _wall(code: str) -> float:
    start = perf()
    subprocess.run([sys.executable, "-c", code], check=True, env=_import_env())
    return perf() - start


def _importtime(module: str) -> tuple[int, list[tuple[int, str]]]:
    """``-X importtime``: (cumulative us of ``module``, the imports it pulls in from outside).

    The outside imports are the non-``module`` modules imported directly by
    ``module`` or one of its submodules, with their cumulative time.
    """
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=_import_env(),
    ).stderr
    lines = []  # (cumulative us, level, name), children listed before their parent
    for line in out.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            lines.append((int(match[2]), (len(match[3]) - 1) // 2, match[4]))
    end = next((i for i, (_us, lvl, name) in enumerate(lines) if name == module and lvl == 0), -1)
    if end < 0:
        return 0, []
    start = end
    while start > 0 and lines[start - 1][1] > 0:
        start -= 1
    mine = module + "."
    outside = []
    for i in range(start, end):
        us, level, name = lines[i]
        if name.startswith(mine):
            continue
        parent = next(n for _u, lvl, n in lines[i + 1 : end + 1] if lvl < level)
        if parent == module or parent.startswith(mine):
            outside.append((us, name))
    return lines[end][0], sorted(outside, reverse=True)[:5]


def run(cfg: Settings) -> list[Table]:
    table = Table(
        "import",
        "import time: python -c 'import X' minus python -c 'pass' (fresh interpreter)",
        "ms",
        ratios=False,
        notes=[
            f"{cfg.import_runs} runs each, interleaved; median/min/max of the differences; "
            "'-X importtime' gives the module's own cumulative figure"
        ],
        columns=[("importtime_ms", "importtime ms", ".1f")],
    )
    modules = [("gocp", "gocp", "gocp")]
    for peer in PEERS:
        why = peer.missing()
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
        elif peer.module not in [m for _n, _k, m in modules]:
            modules.append((peer.name, "peer", peer.module))
    rows = [Row(name, kind) for name, kind, _m in modules]
    table.rows[0:0] = rows
    _wall("pass")
    for _name, _kind, module in modules:  # writes the bytecode each import then reads
        _wall(f"import {module}")
    for _ in range(cfg.import_runs):
        for row, (_name, _kind, module) in zip(rows, modules, strict=True):
            base = _wall("pass")
            row.samples.append((_wall(f"import {module}") - base) * 1000)
    runs = [_importtime("gocp") for _ in range(3)]
    rows[0].extra["importtime_ms"] = statistics.median(r[0] for r in runs) / 1000
    rows[0].extra["biggest"] = [
        {"module": name, "cumulative_ms": us / 1000} for us, name in runs[0][1]
    ]
    table.notes.append(
        "what gocp imports from outside (-X importtime, cumulative): "
        + ", ".join(f"{name} {us / 1000:.1f} ms" for us, name in runs[0][1])
    )
    return [table]
