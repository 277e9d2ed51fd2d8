"""``roundtrip``: a 64-byte echo through a pooled member.

1 thread on a pool of 8 and 8 threads on a pool of 8, in each placement; the
floor is a raw socket held by the caller (8 threads: 8 raw sockets). The echo
server runs in a subprocess, so it never competes with the client for the GIL:
by default one selector thread for all connections (``--server threads``: a
blocking thread per connection, which makes a pool that lends its members in
turn pay for waking a different server thread on every request; the "raw
sockets used in turn" row shows that cost without any pool). Every socket (raw,
gocp's, the peers') has ``TCP_NODELAY`` and a 30 s timeout, as gocp's members
have by default. Reference rows: raw sockets inside the floor pool and the fair
floor pool, which is what any shared pool costs before doing anything of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from ..echo import IO_TIMEOUT, MSG, SERVERS, close_socks, make_sock, shared_echo
from ..peers import peer_rows
from ..placement import placed, placed_key, placed_title
from ..results import Row, Settings, Table, error_status
from ..roundtrips import Run, calibrate_rt, rt_pooled, rt_raw, rt_raw_turns, sample_rt
from ..subjects import FairFloorPool, FloorPool, Subject, gocp_subjects


def roundtrip_table(
    cfg: Settings, address: tuple[str, int], threads: int, size: int, placement: str
) -> Table:
    table = Table(
        placed_key(f"roundtrip_{threads}", placement),
        f"echo round trip, {len(MSG)} B: {threads} thread{'s' if threads > 1 else ''}, "
        f"pool of {size} " + placed_title(placement),
        "us/rt",
        notes=[
            f"server: {SERVERS[cfg.server]} (no GIL sharing); "
            f"every socket TCP_NODELAY, timeout {IO_TIMEOUT:g} s",
            f"{cfg.rt_repeats} samples of ~{cfg.rt_sample * 1000:.0f} ms per subject, gc off"
            + ("; us/rt = wall time / all threads' round trips" if threads > 1 else ""),
            f"floor: {threads} raw socket{'s' if threads > 1 else ''} held by the caller",
        ],
    )
    # each subject: (row, one run function per thread, closer)
    plans: list[tuple[Row, Sequence[Run], Callable[[], None]]] = []
    for name, kind, timeout in (
        (f"floor: raw socket (timeout {IO_TIMEOUT:g} s)", "floor", IO_TIMEOUT),
        ("raw socket, blocking (no timeout)", "info", None),
    ):
        socks = [make_sock(address, timeout) for _ in range(threads)]
        row = Row(name, kind)
        table.rows.append(row)
        plans.append(
            (
                row,
                [functools.partial(rt_raw, sock) for sock in socks],
                functools.partial(close_socks, socks),
            )
        )
    if threads == 1:
        # What a ring pool does to the server: each round trip on the next connection.
        socks = [make_sock(address) for _ in range(size)]
        row = Row(f"{size} raw sockets used in turn (as a ring pool lends them)", "info")
        table.rows.append(row)
        plans.append(
            (row, [functools.partial(rt_raw_turns, socks)], functools.partial(close_socks, socks))
        )
    for name, pool_class in (
        ("floor pool: raw sockets in a deque + Condition", FloorPool),
        ("fair floor pool: raw sockets, FIFO hand-off", FairFloorPool),
    ):
        # The least any pool adds: a shared lock and deque around raw sockets.
        floor_pool = pool_class(0)
        socks = [make_sock(address) for _ in range(size)]
        for sock in socks:
            floor_pool.put(sock)
        row = Row(name, "info")
        table.rows.append(row)
        pooled = rt_pooled(Subject(name, floor_pool.get, floor_pool.put, lambda: None))
        plans.append((row, [pooled] * threads, functools.partial(close_socks, socks)))
    for row, subject in gocp_subjects(size, address):
        table.rows.append(row)
        plans.append((row, [rt_pooled(subject)] * threads, subject.close))
    for row, subject in peer_rows(
        table,
        lambda p: [p.sockets(size, address, functools.partial(make_sock, address))],
        lambda p: p.no_sockets,
    ):
        plans.append((row, [rt_pooled(subject)] * threads, subject.close))
    try:
        sized: list[tuple[Row, Sequence[Run], int]] = []
        for row, runs, _close in plans:
            try:
                n = calibrate_rt(runs, cfg.rt_sample)
            except Exception as exc:
                row.status = error_status(exc)
                continue
            sized.append((row, runs, n))
        sample_rt(sized, cfg.rt_repeats)
    finally:
        for _row, _runs, close in plans:
            close()
    return table


def run(cfg: Settings) -> list[Table]:
    server = shared_echo(cfg.server)
    tables = []
    for placement in cfg.placements:
        with placed(placement, server):
            tables.append(roundtrip_table(cfg, server.address, 1, 8, placement))
            tables.append(roundtrip_table(cfg, server.address, 8, 8, placement))
    return tables
