"""``memory``: ``tracemalloc`` bytes per idle member of a pool whose members hold a
connected socket (1,000 members; ``--quick``: 200), minus the bytes per raw connected
socket; with ``--baseline``, gocp before's too (issue 13: unchanged)."""

from __future__ import annotations

import functools
import gc
import socket
import tracemalloc
from collections.abc import Callable
from typing import Any

from ..echo import close_socks, make_sock, shared_echo
from ..peers import PEERS, Peer
from ..results import Row, Settings, Table, error_status
from ..subjects import BEFORE_NAME, Subject, baseline, before_subject, gocp_subject


def _traced(build: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes still allocated after ``build()`` (which keeps its result alive)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base, keep
    finally:
        tracemalloc.stop()


def _peer_sockets(peer: Peer, address: tuple[str, int], make: Any, n: int) -> Subject:
    return peer.sockets(n, address, make)


def _touch(sock: Any) -> None:
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise ConnectionError("echo server did not answer")


def run(cfg: Settings) -> list[Table]:
    address = shared_echo(cfg.server).address
    count = cfg.members
    table = Table(
        "memory",
        f"memory per idle member: pool of {count:,} members each holding a connected socket",
        "B/member",
        ratios=False,
        notes=[
            "tracemalloc bytes still allocated after building the pool and connecting every "
            "member (one 1-byte echo each), / members; 'over socket' subtracts the floor",
            "one measurement per subject (allocation counts barely vary)",
        ],
        columns=[("over", "over socket", ".0f")],
    )

    def sock_maker() -> socket.socket:
        return make_sock(address)

    def raw(n: int) -> list[socket.socket]:
        socks = [sock_maker() for _ in range(n)]
        for sock in socks:
            _touch(sock)
        return socks

    def pooled(make: Callable[[int], Subject]) -> Callable[[int], Subject]:
        def build(n: int) -> Subject:
            subject = make(n)
            held = [subject.get() for _ in range(n)]
            for item in held:
                _touch(item if subject.sock_of is None else subject.sock_of(item))
            for item in held:
                subject.put(item)
            return subject

        return build

    def close_subject(subject: Subject) -> None:
        subject.close()

    candidates: list[tuple[Row, Callable[[int], Any], Callable[[Any], None]]] = [
        (Row("floor: raw connected socket", "floor"), raw, close_socks),
        (Row("gocp", "gocp"), pooled(lambda n: gocp_subject(n, address)), close_subject),
    ]
    if baseline() is not None:
        before = pooled(lambda n: before_subject(n, address))
        candidates.append((Row(BEFORE_NAME, "gocp"), before, close_subject))
    for peer in PEERS:
        why = peer.missing() or peer.no_sockets
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
            continue
        make = pooled(functools.partial(_peer_sockets, peer, address, sock_maker))
        candidates.append((Row(peer.name, "peer"), make, close_subject))
    for row, build, close in candidates:
        table.rows.append(row)
        try:
            close(build(4))  # warm up: lazy imports and caches are not the members' cost
            used, keep = _traced(functools.partial(build, count))
            close(keep)
        except Exception as exc:
            row.status = error_status(exc)
            continue
        row.samples = [used / count]
    table.rows.sort(key=lambda r: ("floor", "gocp", "peer").index(r.kind))
    floor = table.floor()
    for row in table.rows:
        if floor is not None and row.samples and row is not floor:
            row.extra["over"] = (row.median or 0.0) - (floor.median or 0.0)
    return [table]
