"""``kinds``: every kind of gocp pool over a single pool of the same members.

The kinds: ``gocp.new`` (a single pool of sockets, the floor), ``gocp.pool`` of
trivial clients, ``gocp.keyed`` with one key and ``gocp.cluster``, against three
echo server processes. Tables:

- get+put, 1 thread, 12 members, with socket members and with clients (issue 10's
  target: keyed and cluster get+put at most 1.5x a single pool's);
- 16 threads sharing 4 members in all (the ``contended`` scenario's measure: fairness,
  waits, the first-come-first-served check, the fair floor for reference), in each
  placement but ``split`` (the servers are idle: no I/O is timed);
- the echo round trip, 1 and 8 threads, 12 members, in each placement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gocp

from ..echo import MSG, SERVERS, EchoProcess, close_socks, make_sock
from ..placement import placed, placed_key, placed_title, without_server
from ..results import Row, Settings, Table, error_status
from ..roundtrips import Run, calibrate_rt, rt_pooled, rt_raw_turns, sample_rt
from ..subjects import FAIR_FLOOR_NAME, Subject, close_all, fair_floor_subject
from ..timing import getput_loop, run_interleaved
from . import contended

Address = tuple[str, int]
#: A pool kind as a row: (row name, row kind, pool, get for the warm-up (it dials), get to
#: time). The timed gets stay the default-argument lambdas they have always been (mypy
#: cannot type them), so that the figures stay comparable with earlier runs.
Plan = tuple[str, str, Any, Callable[[], Any], Callable[[], Any]]

SINGLE_NAME = "floor: gocp.new (one address)"
MEMBERS = 12  # members in all in the get+put and round-trip tables


def socket_plans(addresses: Sequence[Address], size: int, per_server: int) -> list[Plan]:
    """gocp.new (the floor) and a keyed pool of one key, ``size`` sockets each to the
    first address, and a cluster of ``per_server`` sockets to each of ``addresses``."""
    first = addresses[0]
    single = gocp.new(first, size=size)
    keyed = gocp.keyed(size=size)
    cluster = gocp.cluster(list(addresses), size=per_server)
    return [
        (SINGLE_NAME, "floor", single, functools.partial(single.get, connect=True), single.get),
        (
            "gocp.keyed (one key)",
            "gocp",
            keyed,
            functools.partial(keyed.get, first, connect=True),
            lambda p=keyed: p.get(first),  # type: ignore[misc]
        ),
        (f"gocp.cluster ({len(addresses)} servers)", "gocp", cluster, cluster.get, cluster.get),
    ]


def pool_plan(name: str, row_kind: str, dial: Callable[[], Any], size: int) -> Plan:
    """A ``gocp.pool`` of ``size`` clients made by ``dial``."""
    single = gocp.pool(dial, size=size)
    return (name, row_kind, single, single.get, single.get)


def client_plans(size: int, servers: int, per_server: int) -> list[Plan]:
    """gocp.pool (the floor), a keyed pool of one key, ``size`` clients each, and a cluster
    of ``per_server`` clients for each of ``servers``; the clients are plain objects."""
    keyed = gocp.keyed(size=size, dial=lambda key: object())
    names = [chr(ord("a") + index) for index in range(servers)]
    cluster = gocp.cluster(names, size=per_server, dial=lambda address: object())
    return [
        pool_plan("floor: gocp.pool (clients)", "floor", object, size),
        (
            "gocp.keyed (clients, one key)",
            "gocp",
            keyed,
            functools.partial(keyed.get, "a"),
            lambda p=keyed: p.get("a"),  # type: ignore[misc]
        ),
        (f"gocp.cluster (clients, {servers} servers)", "gocp", cluster, cluster.get, cluster.get),
    ]


def kind_subjects(table: Table, plans: list[Plan], members: int) -> list[tuple[Row, Subject]]:
    """A row in ``table`` and a subject for each plan, ``members`` members of each dialled
    (a plan that fails has its row say why, and its pool closed)."""
    subjects = []
    for name, row_kind, pool, warm_get, get in plans:
        row = Row(name, row_kind)
        table.rows.append(row)
        try:
            held = [warm_get() for _ in range(members)]
            for item in held:
                pool.put(item)
        except Exception as exc:
            row.status = error_status(exc)
            pool.close()
            continue
        subjects.append((row, Subject(name, get, pool.put, pool.close)))
    return subjects


def getput_table(cfg: Settings, kind: str, addresses: list[Address]) -> Table:
    """get+put on 12 members of each kind of pool, ``kind`` "sockets" or "clients"."""
    table = Table(
        f"kinds_{kind}",
        f"get+put by pool kind ({kind}): {MEMBERS} members, 1 thread",
        "us/op",
        notes=[
            f"floor: a single pool (gocp.new / gocp.pool) of {MEMBERS}; keyed: one key of "
            f"{MEMBERS}; cluster: 3 servers x {MEMBERS // 3}",
            "every member connected before timing; a cluster get probes its "
            "socket (the stale check, one system call) so that a dead server "
            "fails over at get"
            if kind == "sockets"
            else "clients are plain objects made by the dial hook",
        ],
    )
    if kind == "sockets":
        plans = socket_plans(addresses, MEMBERS, MEMBERS // 3)
    else:
        plans = client_plans(MEMBERS, 3, MEMBERS // 3)
    subjects = kind_subjects(table, plans, MEMBERS)
    try:
        run_interleaved(cfg, subjects, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(subjects)
    return table


def contended_table(cfg: Settings, addresses: list[Address], placement: str) -> Table:
    """16 threads sharing 4 members in all, through each kind of pool."""
    size = contended.SIZE
    servers = addresses[:2]
    per_server = size // len(servers)
    table = contended.new_table(
        cfg,
        "kinds_contended",
        f"{contended.THREADS} threads sharing {size} members by pool kind: get+put",
        placement,
        [
            f"{size} members in all: gocp.new, gocp.pool (clients: plain objects) and keyed "
            f"(one key) of {size}; cluster: {len(servers)} servers x {per_server} (round "
            "robin; 3 servers cannot share 4 members evenly)",
            "every socket member connected before timing (a cluster get probes its socket)",
        ],
    )
    plans = socket_plans(servers, size, per_server)
    plans.insert(1, pool_plan("gocp.pool (clients)", "gocp", object, size))
    subjects = kind_subjects(table, plans, size)
    fair = Row(FAIR_FLOOR_NAME, "info")
    table.rows.append(fair)
    subjects.append((fair, fair_floor_subject(size)))
    contended.measure(cfg, table, subjects)
    return table


def roundtrip_table(cfg: Settings, threads: int, addresses: list[Address], placement: str) -> Table:
    """The echo round trip through each kind of pool, ``threads`` threads, 12 members."""
    table = Table(
        placed_key(f"kinds_roundtrip_{threads}", placement),
        f"echo round trip by pool kind, {len(MSG)} B: {threads} thread"
        f"{'s' if threads > 1 else ''}, {MEMBERS} members {placed_title(placement)}",
        "us/rt",
        notes=[
            f"servers: {SERVERS[cfg.server]}, 3 processes; floor: gocp.new on one; "
            "gocp.pool: its clients are sockets to that one, made by its dial hook; "
            f"cluster: 3 servers x {MEMBERS // 3}, round robin",
        ],
    )
    sized: list[tuple[Row, Sequence[Run], int]] = []
    # What round robin does to the servers, without any pool: each round trip on
    # a connection to the next server (three processes to wake in turn).
    turns = [make_sock(address) for address in addresses for _ in range(threads)]
    subjects: list[tuple[Row, Subject]] = []
    try:
        row = Row("3 raw sockets, one per server, used in turn (no pool)", "info")
        table.rows.append(row)
        turn_runs = [functools.partial(rt_raw_turns, turns[i::threads]) for i in range(threads)]
        try:
            sized.append((row, turn_runs, calibrate_rt(turn_runs, cfg.rt_sample)))
        except Exception as exc:
            row.status = error_status(exc)
        plans = socket_plans(addresses, MEMBERS, MEMBERS // 3)
        dial = functools.partial(make_sock, addresses[0])
        plans.insert(1, pool_plan("gocp.pool (clients: sockets)", "gocp", dial, MEMBERS))
        subjects = kind_subjects(table, plans, MEMBERS)
        for row, subject in subjects:
            runs = [rt_pooled(subject)] * threads
            try:
                sized.append((row, runs, calibrate_rt(runs, cfg.rt_sample)))
            except Exception as exc:
                row.status = error_status(exc)
        sample_rt(sized, cfg.rt_repeats)
    finally:
        close_socks(turns)
        close_all(subjects)
    return table


def run(cfg: Settings) -> list[Table]:
    """Every kind of pool over a single pool of the same members: get+put (sockets and
    clients), 16 threads on 4 members and the echo round trip (1 and 8 threads), the last
    two in each placement."""
    servers = [EchoProcess(cfg.server) for _ in range(3)]
    addresses = [server.address for server in servers]
    try:
        tables = [getput_table(cfg, kind, addresses) for kind in ("sockets", "clients")]
        for placement in without_server(cfg.placements):
            with placed(placement):
                tables.append(contended_table(cfg, addresses, placement))
        for placement in cfg.placements:
            with placed(placement, *servers):
                tables += [
                    roundtrip_table(cfg, threads, addresses, placement) for threads in (1, 8)
                ]
    finally:
        for server in servers:
            server.close()
    return tables
