"""``lifecycle``: get+put with each pool's health-check and lifetime policies on.

A check is a no-op callback, so what is timed is the pool's machinery. gocp, for
``gocp.new`` and ``gocp.pool`` alike: ``check_interval=30`` with a ``check``
hook, ``idle_timeout=600``, ``max_lifetime=3600`` and all three, each over the
same pool with no policies ("x plain"; target: at most 1.10x). Every pool is
closed (its background thread stopped) after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..peers import PEERS, peer_rows
from ..results import Row, Settings, Table, error_status
from ..subjects import (
    FLOOR_NAME,
    Subject,
    clients_subject,
    close_all,
    floor_subject,
    gocp_subject,
)
from ..timing import getput_loop, run_interleaved


def _no_check(conn: object) -> None:
    """A check hook that finds every connection alive, at no cost."""


#: gocp's lifecycle policies as the lifecycle scenario benches them: row label -> options
#: (``check`` is the keyword of ``gocp.new``/``gocp.pool``, the rest are ``gocp.Options``).
GOCP_LIFECYCLE: dict[str, dict[str, Any]] = {
    "check_interval=30 + check": {"check": _no_check, "check_interval": 30.0},
    "idle_timeout=600": {"idle_timeout": 600.0},
    "max_lifetime=3600": {"max_lifetime": 3600.0},
    "all three": {
        "check": _no_check,
        "check_interval": 30.0,
        "idle_timeout": 600.0,
        "max_lifetime": 3600.0,
    },
}
GOCP_PLAIN = "no policies"

#: gocp's pool kinds in the lifecycle scenario: (kind, row name pattern, pool of 8 with
#: the options it is called with).
GOCP_KINDS: tuple[tuple[str, str, Callable[..., Subject]], ...] = (
    ("sockets", "gocp ({})", functools.partial(gocp_subject, 8)),
    ("clients", "gocp.pool (clients, {})", functools.partial(clients_subject, 8)),
)


def run(cfg: Settings) -> list[Table]:
    table = Table(
        "lifecycle",
        "get+put with lifecycle policies on: pool of 8, 1 thread",
        "us/op",
        notes=[
            "health checks are no-op callbacks: this is each pool's policy machinery; "
            "'x plain' = over the same pool without the policies",
            "gocp: gocp.new members (127.0.0.1:9) are never dialled by get+put, so no "
            "connection comes due; gocp.pool members each hold a client (dialled before "
            "timing); pools with policies run their background thread throughout",
        ],
        columns=[("x_plain", "x plain", ".2f")],
    )
    every: list[tuple[Row, Subject]] = []  # every subject timed, shown or not
    base_of: dict[str, Row] = {}  # a row with policies -> the same pool without them
    row = Row(FLOOR_NAME, "floor")
    table.rows.append(row)
    every.append((row, floor_subject(8)))
    try:
        for _kind, pattern, make in GOCP_KINDS:
            plain = Row(pattern.format(GOCP_PLAIN), "gocp")
            for label, options in {GOCP_PLAIN: {}, **GOCP_LIFECYCLE}.items():
                row = plain if not options else Row(pattern.format(label), "gocp")
                table.rows.append(row)
                if options:
                    base_of[row.name] = plain
                try:
                    subject = make(**options)
                except Exception as exc:
                    row.status = error_status(exc)
                    continue
                subject.name = row.name
                every.append((row, subject))
        peer_plain: dict[str, Row] = {}  # peer name -> its pool without policies (not shown)
        for row, subject in peer_rows(table, lambda p: p.lifecycle(8), lambda p: p.no_lifecycle):
            every.append((row, subject))
            peer = next((p for p in PEERS if row.name.startswith(p.name + " (")), None)
            if peer is None:
                continue
            if peer.name not in peer_plain:
                peer_plain[peer.name] = Row(peer.name, "info")
                try:
                    every.append((peer_plain[peer.name], peer.dummy(8)))
                except Exception as exc:
                    peer_plain[peer.name].status = error_status(exc)
            base_of[row.name] = peer_plain[peer.name]
        run_interleaved(cfg, every, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(every)  # and so stop every background thread
    for row in table.rows:
        base = base_of.get(row.name)
        if base is not None and base.samples and row.samples:
            row.extra["x_plain"] = table.ratio(row, base)
            row.extra["plain"] = base.name
    return [table]
