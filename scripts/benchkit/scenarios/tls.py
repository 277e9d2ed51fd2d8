"""``tls``: the round trip over TLS (issue 12), one thread, in each placement.

A raw ``ssl`` socket held by the caller (the floor) against gocp with ``ssl=``
(a pool of 1, and a pool of 8 lent in turn, beside 8 raw TLS sockets used in
turn). The server is the echo subprocess in ``threads`` mode wrapping each
connection in TLS, with a certificate ``trustme`` makes.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gocp

from ..echo import IO_TIMEOUT, MSG, EchoProcess, close_socks, make_sock
from ..placement import placed, placed_key, placed_title
from ..results import Row, Settings, Table
from ..roundtrips import rt_pooled, rt_raw, rt_raw_turns
from ..subjects import Subject, close_all
from ..timing import run_interleaved


def tls_table(cfg: Settings, server: EchoProcess, client: Any, placement: str) -> Table:
    """One thread's TLS round trips: raw ssl sockets, gocp with ``ssl=``."""
    address, size = server.address, 8
    table = Table(
        placed_key("tls", placement),
        f"TLS echo round trip, {len(MSG)} B: 1 thread " + placed_title(placement),
        "us/rt",
        notes=[
            "server: a blocking thread-per-connection TLS echo server in a subprocess; "
            f"every socket TCP_NODELAY, timeout {IO_TIMEOUT:g} s; TLS 1.3, a trustme certificate",
            f"{cfg.rt_repeats} samples of ~{cfg.rt_sample * 1000:.0f} ms per subject, gc off",
            "floor: 1 raw ssl socket held by the caller",
        ],
    )

    def tls_sock() -> socket.socket:
        sock: socket.socket = client.wrap_socket(make_sock(address), server_hostname="127.0.0.1")
        return sock

    subjects: list[tuple[Row, Subject]] = []
    runs: dict[str, Callable[[int], None]] = {}

    def add(row: Row, run: Callable[[int], None], close: Callable[[], None]) -> None:
        table.rows.append(row)
        runs[row.name] = run
        subjects.append((row, Subject(row.name, lambda: None, lambda _: None, close)))

    sock = tls_sock()
    add(
        Row(f"floor: raw ssl socket (timeout {IO_TIMEOUT:g} s)", "floor"),
        functools.partial(rt_raw, sock),
        sock.close,
    )
    socks = [tls_sock() for _ in range(size)]
    add(
        Row(f"{size} raw ssl sockets used in turn (as a ring pool lends them)", "info"),
        functools.partial(rt_raw_turns, socks),
        functools.partial(close_socks, socks),
    )
    for pool_size in (1, size):
        pool = gocp.new(address, size=pool_size, ssl=client)
        name = f"gocp, ssl=, pool of {pool_size}"
        add(Row(name, "gocp"), rt_pooled(Subject(name, pool.get, pool.put, pool.close)), pool.close)
    try:  # the warm-up dials every member (and does its handshake)
        rt = dataclasses.replace(cfg, repeats=cfg.rt_repeats, sample=cfg.rt_sample)
        run_interleaved(rt, subjects, lambda subject: runs[subject.name])
    finally:
        close_all(subjects)
    return table


def run(cfg: Settings) -> list[Table]:
    try:
        import ssl

        import trustme
    except ImportError:
        print("\n== tls: needs trustme (pip install -e '.[dev]')")
        return []
    ca = trustme.CA()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    with tempfile.TemporaryDirectory() as directory:
        pem = Path(directory) / "server.pem"
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(pem)
        )
        server = EchoProcess("threads", str(pem))
    try:
        tables = []
        for placement in cfg.placements:
            with placed(placement, server):
                tables.append(tls_table(cfg, server, client, placement))
        return tables
    finally:
        server.close()
