#!/usr/bin/env python3
"""The cost of ``gocp.testing.FaultProxy`` with no fault set: throughput and round trip.

    .venv/bin/python scripts/bench_proxy.py                       # about 20 s
    .venv/bin/python scripts/bench_proxy.py --quick               # a smoke run (a few seconds)
    .venv/bin/python scripts/bench_proxy.py --baseline /tmp/base  # with a "proxy before" row

Scenarios, each against the same servers reached directly (the baseline, "direct")
and through a proxy in this process (as a test uses it):

- ``throughput``: one stream, one connection per sample: the client sends
  ``--megabytes`` MB in 1 MiB ``sendall`` calls, shuts down writing and waits
  for the sink's byte count; MB/s over that interval.
- ``echo``: one connection per subject, kept; a sample is ``--echoes`` round
  trips of 64 bytes (send, read them back); microseconds per round trip, and
  what the proxy adds to the direct one.

The sink and the echo server run in a child process (one blocking thread per
connection), so they never compete with the client or the proxy for this
process's GIL. Every socket has ``TCP_NODELAY``. Every figure is the median
of ``--samples`` samples (min and max shown); samples of the subjects are
interleaved so drift hits them alike. ``--baseline PATH``: a directory
holding the package ``gocp_before`` (an earlier gocp), whose
``gocp_before.testing.FaultProxy`` gets a "proxy before" row. This is a
report: it exits 0 whatever the figures say.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gocp.testing import FaultProxy

MiB = 1 << 20
ECHO_BYTES = 64
IO_TIMEOUT = 30.0


# -- the child process: a sink and an echo server ----------------------------------------


def _serve_forever(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _peer = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _sink(conn: socket.socket) -> None:
    """Read until EOF, answer the byte count (8 bytes), close."""
    buffer = bytearray(MiB)
    total = 0
    with conn:
        while count := conn.recv_into(buffer):
            total += count
        conn.sendall(struct.pack("!Q", total))


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def serve() -> None:
    """The child: print the sink's and the echo server's ports, serve until stdin closes."""
    sink = socket.create_server(("127.0.0.1", 0))
    echo = socket.create_server(("127.0.0.1", 0))
    for listener, handle in ((sink, _sink), (echo, _echo)):
        threading.Thread(target=_serve_forever, args=(listener, handle), daemon=True).start()
    print(sink.getsockname()[1], echo.getsockname()[1], flush=True)
    sys.stdin.read()


@contextlib.contextmanager
def servers() -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """Start the child; yield the sink's and the echo server's addresses; stop it."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        sink_port, echo_port = map(int, child.stdout.readline().split())
        yield ("127.0.0.1", sink_port), ("127.0.0.1", echo_port)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


# -- samples -----------------------------------------------------------------------------


def dial(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def throughput_sample(address: tuple[str, int], megabytes: int) -> float:
    """MB/s of one stream of ``megabytes`` MiB to the sink at ``address``."""
    block = memoryview(bytes(MiB))
    with dial(address) as sock:
        started = time.perf_counter()
        for _ in range(megabytes):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        (received,) = struct.unpack("!Q", sock.recv(8, socket.MSG_WAITALL))
        elapsed = time.perf_counter() - started
    if received != megabytes * MiB:
        raise AssertionError(f"the sink got {received} of {megabytes * MiB} bytes")
    return megabytes * MiB / elapsed / 1e6


def echo_sample(sock: socket.socket, echoes: int) -> float:
    """Microseconds per 64-byte round trip over ``sock``, averaged over ``echoes``."""
    message = b"x" * ECHO_BYTES
    started = time.perf_counter()
    for _ in range(echoes):
        sock.sendall(message)
        received = 0
        while received < ECHO_BYTES:
            chunk = sock.recv(ECHO_BYTES - received)
            if not chunk:
                raise ConnectionError("the echo server closed")
            received += len(chunk)
    return (time.perf_counter() - started) / echoes * 1e6


# -- the run -----------------------------------------------------------------------------


def load_baseline(path: str) -> Any:
    """``gocp_before.testing.FaultProxy`` from the directory ``path``."""
    if not (Path(path) / "gocp_before" / "__init__.py").is_file():
        raise ValueError(f"no package gocp_before in {path!r}")
    sys.path.insert(0, str(Path(path).resolve()))
    import gocp_before.testing  # type: ignore[import-not-found]

    return gocp_before.testing.FaultProxy


def describe(samples: list[float], unit: str) -> str:
    median = statistics.median(samples)
    return f"{median:9.1f} {unit}  (min {min(samples):.1f}, max {max(samples):.1f})"


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds: list[tuple[str, Any]] = [("proxy", FaultProxy)]
    if args.baseline is not None:
        kinds.append(("proxy before", load_baseline(args.baseline)))
    names = ["direct"] + [name for name, _ in kinds]
    rates: dict[str, list[float]] = {name: [] for name in names}
    micros: dict[str, list[float]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        sink, echo = stack.enter_context(servers())
        sinks = {"direct": sink}
        echo_socks = {"direct": stack.enter_context(dial(echo))}
        for name, kind in kinds:
            sinks[name] = stack.enter_context(kind(sink)).address
            echo_socks[name] = stack.enter_context(dial(stack.enter_context(kind(echo)).address))
        for sock in echo_socks.values():
            echo_sample(sock, 100)  # warm up
        gc.disable()
        try:
            for _ in range(args.samples):
                for name in names:
                    rates[name].append(throughput_sample(sinks[name], args.megabytes))
                    micros[name].append(echo_sample(echo_socks[name], args.echoes))
        finally:
            gc.enable()
    direct_rate = statistics.median(rates["direct"])
    direct_echo = statistics.median(micros["direct"])
    print(f"one stream, {args.megabytes} MiB per sample, {args.samples} samples:")
    for name in names:
        ratio = statistics.median(rates[name]) / direct_rate
        print(f"  {name:13} {describe(rates[name], 'MB/s')}  {ratio:.2f}x direct")
    print(f"{ECHO_BYTES}-byte echo, {args.echoes} round trips per sample:")
    for name in names:
        added = statistics.median(micros[name]) - direct_echo
        print(f"  {name:13} {describe(micros[name], 'us')}  +{added:.0f} us")
    return {"throughput_mb_s": rates, "echo_us": micros}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--echoes", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="3 samples of 64 MiB, 300 echoes")
    parser.add_argument("--baseline", metavar="PATH", help="a directory holding gocp_before")
    parser.add_argument("--json", metavar="FILE", help="also write the samples here")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.quick:
        args.samples, args.megabytes, args.echoes = 3, 64, 300
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
