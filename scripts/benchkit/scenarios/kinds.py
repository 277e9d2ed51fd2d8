"""``kinds``: keyed pools and clusters over a single pool of the same kind.

get+put with socket members and with clients, and the echo round trip (1 and 8
threads; three echo server processes; issue 10's target: keyed and cluster
get+put at most 1.5x a single pool's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gocp

from ..echo import MSG, SERVERS, EchoProcess, close_socks, make_sock
from ..results import Row, Settings, Table, error_status
from ..roundtrips import Run, calibrate_rt, rt_pooled, rt_raw_turns, sample_rt
from ..subjects import Subject, close_all
from ..timing import getput_loop, run_interleaved

Address = tuple[str, int]


def _kind_subject(name: str, pool: Any, get: Callable[[], Any], warm: int) -> Subject:
    """A subject over a keyed pool or cluster (or a single pool), its members dialled."""
    held = [get() for _ in range(warm)]
    for item in held:
        pool.put(item)
    return Subject(name, get, pool.put, pool.close)


def getput_table(cfg: Settings, kind: str, addresses: list[Address]) -> Table:
    """get+put on 12 members of each kind of pool, ``kind`` "sockets" or "clients"."""
    first = addresses[0]
    table = Table(
        f"kinds_{kind}",
        f"get+put by pool kind ({kind}): 12 members, 1 thread",
        "us/op",
        notes=[
            "floor: a single pool (gocp.new / gocp.pool) of 12; keyed: one key of 12; "
            "cluster: 3 servers x 4",
            "every member connected before timing; a cluster get probes its "
            "socket (the stale check, one system call) so that a dead server "
            "fails over at get"
            if kind == "sockets"
            else "clients are plain objects made by the dial hook",
        ],
    )
    subjects: list[tuple[Row, Subject]] = []
    # (row name, row kind, pool, get for the warm-up (it dials), get to time); the timed
    # gets stay the default-argument lambdas they have always been (mypy cannot type them),
    # so that the figures stay comparable with earlier runs
    plan: list[tuple[str, str, Any, Callable[[], Any], Callable[[], Any]]]
    if kind == "sockets":
        single = gocp.new(first, size=12)
        keyed = gocp.keyed(size=12)
        cluster = gocp.cluster(addresses, size=4)
        plan = [
            (
                "floor: gocp.new (one address)",
                "floor",
                single,
                functools.partial(single.get, connect=True),
                single.get,
            ),
            (
                "gocp.keyed (one key)",
                "gocp",
                keyed,
                functools.partial(keyed.get, first, connect=True),
                lambda p=keyed: p.get(first),  # type: ignore[misc]
            ),
            ("gocp.cluster (3 servers)", "gocp", cluster, cluster.get, cluster.get),
        ]
    else:
        single = gocp.pool(object, size=12)  # type: ignore[arg-type]
        keyed = gocp.keyed(size=12, dial=lambda key: object())
        cluster = gocp.cluster(["a", "b", "c"], size=4, dial=lambda address: object())
        plan = [
            ("floor: gocp.pool (clients)", "floor", single, single.get, single.get),
            (
                "gocp.keyed (clients, one key)",
                "gocp",
                keyed,
                functools.partial(keyed.get, "a"),
                lambda p=keyed: p.get("a"),  # type: ignore[misc]
            ),
            (
                "gocp.cluster (clients, 3 servers)",
                "gocp",
                cluster,
                cluster.get,
                cluster.get,
            ),
        ]
    for name, row_kind, pool, warm_get, get in plan:
        row = Row(name, row_kind)
        table.rows.append(row)
        try:
            _kind_subject(name, pool, warm_get, 12)
            subjects.append((row, Subject(name, get, pool.put, pool.close)))
        except Exception as exc:
            row.status = error_status(exc)
            pool.close()
    try:
        run_interleaved(cfg, subjects, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(subjects)
    return table


def roundtrip_table(cfg: Settings, threads: int, addresses: list[Address]) -> Table:
    """The echo round trip through each kind of pool, ``threads`` threads, 12 members."""
    first = addresses[0]
    table = Table(
        f"kinds_roundtrip_{threads}",
        f"echo round trip by pool kind, {len(MSG)} B: {threads} thread"
        f"{'s' if threads > 1 else ''}, 12 members",
        "us/rt",
        notes=[
            f"servers: {SERVERS[cfg.server]}, 3 processes; floor: gocp.new on one; "
            "cluster: 3 servers x 4, round robin",
        ],
    )
    single = gocp.new(first, size=12)
    keyed = gocp.keyed(size=12)
    cluster = gocp.cluster(addresses, size=4)
    plans: list[tuple[str, str, Any, Callable[[], Any]]] = [
        ("floor: gocp.new (one address)", "floor", single, single.get),
        ("gocp.keyed (one key)", "gocp", keyed, lambda p=keyed: p.get(first)),  # type: ignore[misc]
        ("gocp.cluster (3 servers)", "gocp", cluster, cluster.get),
    ]
    sized: list[tuple[Row, Sequence[Run], int]] = []
    # What round robin does to the servers, without any pool: each round trip on
    # a connection to the next server (three processes to wake in turn).
    turns = [make_sock(address) for address in addresses for _ in range(threads)]
    row = Row("3 raw sockets, one per server, used in turn (no pool)", "info")
    table.rows.append(row)
    turn_runs = [functools.partial(rt_raw_turns, turns[index::threads]) for index in range(threads)]
    try:
        sized.append((row, turn_runs, calibrate_rt(turn_runs, cfg.rt_sample)))
    except Exception as exc:
        row.status = error_status(exc)
    try:
        for name, row_kind, pool, get in plans:
            row = Row(name, row_kind)
            table.rows.append(row)
            runs = [rt_pooled(Subject(name, get, pool.put, pool.close))] * threads
            try:
                sized.append((row, runs, calibrate_rt(runs, cfg.rt_sample)))
            except Exception as exc:
                row.status = error_status(exc)
        sample_rt(sized, cfg.rt_repeats)
    finally:
        close_socks(turns)
        for _name, _kind, pool, _get in plans:
            pool.close()
    return table


def run(cfg: Settings) -> list[Table]:
    """Keyed pools and clusters over a single pool of the same members: get+put (sockets
    and clients) and the echo round trip (1 and 8 threads)."""
    servers = [EchoProcess(cfg.server) for _ in range(3)]
    addresses = [server.address for server in servers]
    try:
        tables = [getput_table(cfg, kind, addresses) for kind in ("sockets", "clients")]
        tables += [roundtrip_table(cfg, threads, addresses) for threads in (1, 8)]
    finally:
        for server in servers:
            server.close()
    return tables
