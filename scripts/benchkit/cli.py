"""The command line of ``scripts/bench.py``: parse it, run the scenarios, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import gocp

from . import plot
from .echo import SERVERS, close_shared_echo
from .peers import PEERS
from .placement import PLACEMENTS, can_pin
from .report import document, print_table
from .results import Settings, Table
from .scenarios import RUNNERS, SCENARIOS
from .subjects import BEFORE_NAME, baseline, load_baseline
from .targets import print_targets, targets
from .timing import perf

DESCRIPTION = "gocp side by side with its floor and with other Python pools, in one process."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 30 s)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"scenarios to run, comma-separated or repeated: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="draw the run's ratios (each table's rows over its floor, with the targets) "
        "as an SVG chart at PATH (needs matplotlib: pip install -e '.[bench]')",
    )
    parser.add_argument("--repeats", type=int, help="samples per subject (default 7, quick 3)")
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="epoll",
        help="the echo server for round trips and memory: "
        + "; ".join(f"{k}: {v}" for k, v in sorted(SERVERS.items())),
    )
    parser.add_argument(
        "--placement",
        action="append",
        default=[],
        metavar="NAME",
        help="where the contended and round-trip runs place their threads, comma-separated "
        "or repeated (default: all; 'os' alone where pinning is impossible): "
        + "; ".join(f"{k}: {v[0]}" for k, v in PLACEMENTS.items()),
    )
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="a directory holding the package gocp_before (gocp before the restructure): "
        "adds a 'gocp before' row to the uncontended, contended, round-trip and memory tables",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        try:
            load_baseline(args.baseline)
        except Exception as exc:
            parser.error(f"--baseline {args.baseline}: {exc}")
    if args.plot is not None:  # checked now, not after a run of minutes
        why = plot.unavailable()
        if why:
            parser.error(f"--plot {args.plot}: {why}")
        if not Path(args.plot).resolve().parent.is_dir():
            parser.error(f"--plot {args.plot}: no such directory")
    placements = [p.strip() for item in args.placement for p in item.split(",") if p.strip()]
    bad = sorted(set(placements) - set(PLACEMENTS))
    if bad:
        parser.error(f"unknown placement(s): {', '.join(bad)}; pick from {', '.join(PLACEMENTS)}")
    if not placements:
        placements = list(PLACEMENTS) if can_pin() else ["os"]
    elif set(placements) - {"os"} and not can_pin():
        parser.error("pinning needs os.sched_setaffinity and at least 2 CPUs: use --placement os")
    args.placement = tuple(p for p in PLACEMENTS if p in placements)
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; pick from {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in only] if only else list(SCENARIOS)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def run_meta(cfg: Settings) -> dict[str, Any]:
    """What the run ran on, for the header and the JSON document."""
    before = baseline()
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gocp": gocp.__version__,
        "baseline": None if before is None else str(Path(before.__file__).parent),
        "quick": cfg.quick,
        "repeats": cfg.repeats,
        "server": cfg.server,
        "placements": {name: PLACEMENTS[name][0] for name in cfg.placements},
        "peers": {p.name: (p.missing() or p.version()) for p in PEERS},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_header(meta: dict[str, Any]) -> None:
    print(
        f"gocp {meta['gocp']} bench: {meta['implementation']} {meta['python']}, "
        f"{meta['platform']}, {meta['cpus']} CPUs{', quick' if meta['quick'] else ''}"
    )
    print("peers: " + "; ".join(f"{name} {v}" for name, v in meta["peers"].items()))
    if meta["baseline"] is not None:
        print(f"baseline ({BEFORE_NAME}): {meta['baseline']}")
    load = meta["load_average"]
    if load is not None:
        busy = load[0] > 0.5
        print(
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + ("  (the machine is busy: expect noisy figures)" if busy else "")
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = dataclasses.replace(
        Settings.make(args.quick), server=args.server, placements=args.placement
    )
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats, rt_repeats=args.repeats)
    started = perf()
    meta = run_meta(cfg)
    print_header(meta)
    tables: dict[str, Table] = {}
    try:
        for name in args.only:
            t0 = perf()
            try:
                produced = RUNNERS[name](cfg)
            except Exception as exc:
                print(f"\n== {name}: failed: {exc!r}")
                continue
            for table in produced:
                tables[table.key] = table
                print_table(table)
            print(f"   ({name}: {perf() - t0:.1f} s)")
    finally:
        close_shared_echo()
    found = targets(tables)
    print_targets(found, tables)
    print(f"\ntotal {perf() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(document(meta, tables, found), indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.plot:
        try:
            plot.draw(tables, found, meta, args.plot)
        except ValueError as exc:  # nothing to draw
            print(f"--plot {args.plot}: nothing written: {exc}", file=sys.stderr)
            return 1
        print(f"chart written to {args.plot}")
    return 0
