"""``aio``: gocp.aio against asyncio floors and psycopg_pool's ``AsyncConnectionPool``.

For each event loop (asyncio's own, and uvloop when it imports), in one process:

- get+put, one task, pool of 8: the floor is an ``asyncio.Queue`` of 8 items
  (``await q.get()`` then ``q.put_nowait()``); gocp.aio.new (members never
  dialled), gocp.aio.pool of plain objects, psycopg_pool's ``AsyncConnectionPool``
  of stand-in connections.
- 16 tasks on 4 members: each task takes a member, yields once, puts it back.
- echo round trip, 64 bytes, 1 task and 64 tasks, against raw asyncio streams and
  raw ``sock_*`` calls (one connection per task), and gocp.aio.new with as many
  members as tasks (and, for 1 task, 8 members lent in turn), in each placement (as
  the threaded round trips: this process and the echo server pinned).

Targets (issue 11): get+put at most 1.5x the ``asyncio.Queue`` floor and at most a
quarter of psycopg_pool's time; round trip at most 1.10x the faster raw form.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import gocp.aio

from ..echo import MSG, EchoProcess
from ..placement import placed, placed_key, placed_title
from ..results import Row, Settings, Table, error_status
from ..timing import perf

Run = Callable[[int], Awaitable[None]]


def loops() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    found: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    try:
        import uvloop
    except ImportError:
        return found
    found.append(("uvloop", uvloop.new_event_loop))
    return found


async def timed(run: Run, n: int) -> float:
    gc.disable()
    try:
        start = perf()
        await run(n)
        return perf() - start
    finally:
        gc.enable()


async def calibrate(run: Run, seconds: float) -> int:
    n = 16
    while True:
        elapsed = await timed(run, n)
        if elapsed >= seconds / 5 or n >= 1 << 24:
            return max(1, int(n * seconds / max(elapsed, 1e-9)))
        n *= 4


async def sample(rows: list[tuple[Row, Run]], seconds: float, repeats: int) -> None:
    """Calibrate each run, then take ``repeats`` interleaved samples (us per op)."""
    plans = []
    for row, run in rows:
        try:
            await run(50)
            plans.append((row, run, await calibrate(run, seconds)))
        except Exception as exc:
            row.status = error_status(exc)
    for _ in range(repeats):
        for row, run, n in plans:
            row.samples.append(await timed(run, n) / n * 1e6)


# -- subjects ---------------------------------------------------------------------


def queue_floor(size: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[Any], None]]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for _ in range(size):
        queue.put_nowait(object())
    return queue.get, queue.put_nowait


async def psycopg_async(size: int) -> Any:
    import logging

    from psycopg.pq import TransactionStatus
    from psycopg_pool import AsyncConnectionPool

    class PgConn:
        transaction_status = TransactionStatus.IDLE

    class FakeAsyncConnection:
        """Stands in for psycopg.AsyncConnection: idle, never talks to a server."""

        pgconn = PgConn()
        closed = False

        def __init__(self) -> None:
            self._pool: Any = None
            self._created_at = self._expire_at = 0.0

        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            return cls()

        async def close(self) -> None:
            pass

    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    fake: Any = FakeAsyncConnection  # a stand-in, not a psycopg.AsyncConnection
    pool = AsyncConnectionPool(
        "",
        connection_class=fake,
        min_size=size,
        max_size=size,
        open=False,
        name="bench",
    )
    await pool.open(wait=True, timeout=60.0)
    return pool


def getput(get: Callable[[], Awaitable[Any]], put: Callable[[Any], Any]) -> Run:
    async def run(n: int) -> None:
        for _ in range(n):
            put(await get())

    return run


def getput_async_put(
    get: Callable[[], Awaitable[Any]], put: Callable[[Any], Awaitable[Any]]
) -> Run:
    async def run(n: int) -> None:
        for _ in range(n):
            await put(await get())

    return run


def contended(get: Callable[[], Awaitable[Any]], put: Callable[[Any], Any], tasks: int) -> Run:
    """``tasks`` tasks, each n/tasks times: take a member, yield once, put it back."""

    async def one(count: int) -> None:
        for _ in range(count):
            item = await get()
            await asyncio.sleep(0)
            result = put(item)
            if result is not None:
                await result

    async def run(n: int) -> None:
        await asyncio.gather(*(one(max(1, n // tasks)) for _ in range(tasks)))

    return run


# -- round trips --------------------------------------------------------------------


def rt_sock(sock: socket.socket) -> Run:
    async def run(n: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            await loop.sock_sendall(sock, MSG)
            got = 0
            while got < 64:
                data = await loop.sock_recv(sock, 64 - got)
                if not data:
                    raise ConnectionError("echo server closed")
                got += len(data)

    return run


def rt_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Run:
    async def run(n: int) -> None:
        for _ in range(n):
            writer.write(MSG)
            await writer.drain()
            got = 0
            while got < 64:
                data = await reader.read(64 - got)
                if not data:
                    raise ConnectionError("echo server closed")
                got += len(data)

    return run


def rt_pool(pool: Any) -> Run:
    async def run(n: int) -> None:
        for _ in range(n):
            conn = await pool.get()
            await conn.sendall(MSG)
            got = 0
            while got < 64:
                got += len(await conn.recv(64 - got))
            pool.put(conn)

    return run


def together(runs: list[Run]) -> Run:
    """Each run in its own task, ``n // len(runs)`` operations each."""

    async def run(n: int) -> None:
        share = max(1, n // len(runs))
        await asyncio.gather(*(one(share) for one in runs))

    return run


# -- the scenario -------------------------------------------------------------------


async def _pool_tables(cfg: Settings, loop_name: str) -> list[Table]:
    """get+put, one task, and 16 tasks on 4 members, on the running loop."""
    seconds, repeats = cfg.sample, cfg.repeats
    tables = []
    async with contextlib.AsyncExitStack() as closers:
        # get+put, one task
        table = Table(
            f"aio_getput_{loop_name}",
            f"asyncio get+put, 1 task, pool of 8 [{loop_name}]",
            "us/op",
            notes=["floor: asyncio.Queue of 8 (await get, put_nowait)"],
        )
        rows: list[tuple[Row, Run]] = []
        get, put = queue_floor(8)
        rows.append((Row("floor: asyncio.Queue", "floor"), getput(get, put)))
        sockets = gocp.aio.new(("127.0.0.1", 9), size=8)
        closers.push_async_callback(sockets.close)
        rows.append(
            (Row("gocp.aio.new (members not dialled)", "gocp"), getput(sockets.get, sockets.put))
        )
        clients = gocp.aio.pool(object, size=8)
        closers.push_async_callback(clients.close)
        rows.append((Row("gocp.aio.pool (clients)", "gocp"), getput(clients.get, clients.put)))
        peer = Row("psycopg_pool AsyncConnectionPool", "peer")
        try:
            pg = await psycopg_async(8)
            closers.push_async_callback(pg.close)
            rows.append((peer, getput_async_put(pg.getconn, pg.putconn)))
        except Exception as exc:
            peer.status = f"n/a: {exc!r}"[:60]
        table.rows += [row for row, _ in rows] + ([peer] if peer.status else [])
        await sample(rows, seconds, repeats)
        tables.append(table)

        # 16 tasks on 4 members
        table = Table(
            f"aio_contended_{loop_name}",
            f"asyncio: 16 tasks on 4 members (take, yield once, put back) [{loop_name}]",
            "us/op",
            notes=["floor: asyncio.Queue of 4"],
        )
        rows = []
        get, put = queue_floor(4)
        rows.append((Row("floor: asyncio.Queue", "floor"), contended(get, put, 16)))
        small = gocp.aio.pool(object, size=4)
        closers.push_async_callback(small.close)
        rows.append((Row("gocp.aio.pool (clients)", "gocp"), contended(small.get, small.put, 16)))
        peer = Row("psycopg_pool AsyncConnectionPool", "peer")
        try:
            pg4 = await psycopg_async(4)
            closers.push_async_callback(pg4.close)
            rows.append((peer, contended(pg4.getconn, pg4.putconn, 16)))
        except Exception as exc:
            peer.status = f"n/a: {exc!r}"[:60]
        table.rows += [row for row, _ in rows] + ([peer] if peer.status else [])
        await sample(rows, seconds, repeats)
        tables.append(table)
    return tables


async def _roundtrip_table(
    cfg: Settings, loop_name: str, address: tuple[str, int], tasks: int, placement: str
) -> Table:
    """The echo round trip of ``tasks`` tasks on the running loop, as ``placement`` places
    this process and the server (the caller pins them)."""
    table = Table(
        placed_key(f"aio_roundtrip_{tasks}_{loop_name}", placement),
        f"asyncio echo round trip, 64 B: {tasks} task{'s' if tasks > 1 else ''} "
        f"[{loop_name}] {placed_title(placement)}",
        "us/rt",
        notes=[
            "one connection per task for the raw forms; floor: the faster raw form "
            "(shown first); us/rt = wall time / all tasks' round trips",
        ],
    )
    async with contextlib.AsyncExitStack() as closers:
        socks = []
        for _ in range(tasks):
            sock = socket.create_connection(address, timeout=10.0)
            closers.callback(sock.close)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            socks.append(sock)
        streams = []
        for _ in range(tasks):
            reader, writer = await asyncio.open_connection(*address)
            closers.callback(writer.close)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            streams.append((reader, writer))
        raw_sock = Row("raw sock_* calls", "info")
        raw_stream = Row("raw asyncio streams", "info")
        rows = [
            (raw_sock, together([rt_sock(sock) for sock in socks])),
            (raw_stream, together([rt_stream(r, w) for r, w in streams])),
        ]
        pooled = gocp.aio.new(address, size=tasks)
        closers.push_async_callback(pooled.close)
        rows.append(
            (Row(f"gocp.aio.new, {tasks} members", "gocp"), together([rt_pool(pooled)] * tasks))
        )
        if tasks == 1:
            ring = gocp.aio.new(address, size=8)
            closers.push_async_callback(ring.close)
            rows.append((Row("gocp.aio.new, 8 members lent in turn", "info"), rt_pool(ring)))
        table.rows += [row for row, _ in rows]
        await sample(rows, cfg.rt_sample, cfg.rt_repeats)
    # the floor: the faster raw form
    faster = min((raw_sock, raw_stream), key=lambda row: row.median or float("inf"))
    faster.kind = "floor"
    table.rows.remove(faster)
    table.rows.insert(0, faster)
    return table


def run(cfg: Settings) -> list[Table]:
    """The ``aio`` tables, for each event loop; the round trips in each placement."""
    server = EchoProcess(cfg.server)
    tables: list[Table] = []
    try:
        for name, factory in loops():
            with asyncio.Runner(loop_factory=factory) as runner:
                tables += runner.run(_pool_tables(cfg, name))
                for placement in cfg.placements:
                    with placed(placement, server):
                        for tasks in (1, 64):
                            table = _roundtrip_table(cfg, name, server.address, tasks, placement)
                            tables.append(runner.run(table))
    finally:
        server.close()
    return tables
