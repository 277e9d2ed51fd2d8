"""``uncontended``: get+put, pool of 8, one thread.

Also gocp's pool of clients, ``gocp.pool(object, size=8)`` (every member dialled
before timing), with its ratio to psycopg_pool's (a pool of stand-in connection
objects), and gocp's ``pool.connection()`` context manager for information.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

import gocp

from ..peers import PSYCOPG_NAME, peer_rows
from ..results import Row, Settings, Table, error_status
from ..subjects import (
    CLIENTS_NAME,
    FLOOR_NAME,
    Subject,
    clients_subject,
    close_all,
    floor_subject,
    gocp_subjects,
)
from ..timing import getput_loop, run_interleaved


def run(cfg: Settings) -> list[Table]:
    table = Table(
        "uncontended",
        "uncontended get+put: pool of 8, 1 thread",
        "us/op",
        notes=[
            f"{cfg.repeats} samples of ~{cfg.sample * 1000:.0f} ms each per subject, gc off",
            f"{CLIENTS_NAME}: gocp.pool(object, size=8), every member dialled "
            "before timing; 'x psycopg_pool': over psycopg_pool's pool of stand-ins",
        ],
        columns=[("x_psycopg", "x psycopg_pool", ".2f")],
    )
    ctx_pool = gocp.new(("127.0.0.1", 9), size=8)
    ctx_name = "gocp, with pool.connection() (context manager)"
    ctx = Subject(ctx_name, ctx_pool.get, ctx_pool.put, ctx_pool.close)
    subjects: list[tuple[Row, Subject]] = [
        (Row(FLOOR_NAME, "floor"), floor_subject(8)),
        *gocp_subjects(8),
        (Row(ctx_name, "info"), ctx),
    ]
    table.rows += [row for row, _subject in subjects]
    subjects += peer_rows(table, lambda p: [p.dummy(8)], lambda p: None)
    # gocp.pool of plain objects, shown just above psycopg_pool (also a pool of clients).
    clients = Row(CLIENTS_NAME, "gocp")
    psycopg = table.row(PSYCOPG_NAME)
    table.rows.insert(table.rows.index(psycopg) if psycopg else len(table.rows), clients)
    try:
        subjects.append((clients, clients_subject(8)))
    except Exception as exc:
        clients.status = error_status(exc)

    def make_run(subject: Subject) -> Callable[[int], None]:
        if subject is not ctx:
            return getput_loop(subject.get, subject.put)
        connection = ctx_pool.connection

        def loop(n: int) -> None:
            for _ in repeat(None, n):
                with connection():
                    pass

        return loop

    try:
        run_interleaved(cfg, subjects, make_run)
    finally:
        close_all(subjects)
    if psycopg is not None:
        clients.extra["x_psycopg"] = table.ratio(clients, psycopg)
    return [table]
