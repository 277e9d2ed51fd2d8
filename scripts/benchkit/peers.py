"""Adapters that drive other Python pools the same way ``scripts/bench.py`` drives gocp.

Each peer is exercised through its own public (or documented lower-level)
get/put calls, so what is timed is that pool's own logic:

- SQLAlchemy ``QueuePool``: ``pool.connect()`` / ``fairy.close()``;
  ``max_overflow=0`` so the size is fixed; ``reset_on_return=None`` (no
  DBAPI rollback on return: pool logic only). Members are dummy objects, or
  real sockets from ``creator=``.
- redis-py ``ConnectionPool`` / ``BlockingConnectionPool``:
  ``get_connection()`` / ``release()``; the connection class is redis-py's
  own ``Connection`` with only ``connect``, ``disconnect`` and ``can_read``
  replaced by no-ops, so nothing touches the network. ``ConnectionPool``
  does not wait when exhausted (it raises), so it has no contended figure.
- urllib3 ``HTTPConnectionPool``: ``_get_conn()`` / ``_put_conn()`` with
  ``block=True``; the ``HTTPConnection`` members are never connected for
  get+put (urllib3 then sees them as "dropped" and calls ``close()`` on each
  get, which is what it does for an unconnected member); for round trips
  they connect to the echo server and the caller talks over ``conn.sock``.
- psycopg_pool ``ConnectionPool``: ``getconn()`` / ``putconn()`` with a
  ``connection_class`` whose ``connect()`` returns a stand-in that reports
  an idle transaction status (the pool's real code runs; no libpq
  connection is made). Its workers fill the pool at open.
- generic-connection-pool threading ``ConnectionPool``: ``acquire()`` /
  ``release()`` with a custom ``BaseConnectionManager``; for sockets its
  own ``TcpSocketConnectionManager`` (with its ``MSG_PEEK`` aliveness check
  on every acquire), creating sockets configured like everyone else's.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import socket
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from .results import Row, Table, error_status
from .subjects import Subject

__all__ = ["PEERS", "PSYCOPG_NAME", "Peer", "peer_rows"]

Address = tuple[str, int]
SockMaker = Callable[[], socket.socket]


class _Dummy:
    """A member that is never connected: get+put measures the pool alone."""

    def close(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass


class Peer:
    """One peer library: how to build its pool over dummies and over sockets."""

    name = ""
    dist = ""  # distribution name, for the version and for "not installed"
    module = ""

    def missing(self) -> str | None:
        """Why this peer cannot run here, or None."""
        try:
            importlib.import_module(self.module)
        except Exception as exc:
            return "not installed" if isinstance(exc, ImportError) else f"import failed: {exc}"
        return None

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    #: Why it has no contended (waiting) figure, if it has none.
    no_waiting: str | None = None
    #: Why it has no round-trip / memory figure, if it has none.
    no_sockets: str | None = None
    #: Why it has no lifecycle figure, if it has none.
    no_lifecycle: str | None = None

    def dummy(self, size: int) -> Subject:
        raise NotImplementedError

    def lifecycle(self, size: int) -> list[Subject]:
        raise NotImplementedError

    def sockets(self, size: int, address: Address, make_sock: SockMaker) -> Subject:
        raise NotImplementedError


# -- SQLAlchemy -------------------------------------------------------------------


class SQLAlchemyPeer(Peer):
    name = "SQLAlchemy QueuePool"
    dist = "SQLAlchemy"
    module = "sqlalchemy.pool"

    def _pool(self, creator: Callable[[], Any], size: int, **kw: Any) -> Subject:
        from sqlalchemy.pool import QueuePool
        from sqlalchemy.pool.base import _ConnectionFairy

        kw.setdefault("reset_on_return", None)
        pool = QueuePool(creator, pool_size=size, max_overflow=0, timeout=30.0, **kw)
        return Subject(
            self.name,
            pool.connect,
            _ConnectionFairy.close,
            pool.dispose,
            sock_of=attrgetter("dbapi_connection"),
        )

    def dummy(self, size: int) -> Subject:
        return self._pool(_Dummy, size)

    def lifecycle(self, size: int) -> list[Subject]:
        from sqlalchemy.pool.base import _ConnDialect

        class PingDialect(_ConnDialect):
            def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
                return True  # a ping that costs nothing: the pool's own overhead only

        subject = self._pool(
            _Dummy,
            size,
            pre_ping=True,
            recycle=3600,
            reset_on_return="rollback",
            dialect=PingDialect(),
        )
        subject.name = f"{self.name} (pre_ping, recycle, rollback)"
        return [subject]

    def sockets(self, size: int, address: Address, make_sock: SockMaker) -> Subject:
        return self._pool(make_sock, size)


# -- redis-py ---------------------------------------------------------------------


@functools.cache
def _idle_redis_connection() -> type:
    from redis.connection import Connection

    class IdleConnection(Connection):
        """redis-py's Connection with its network calls replaced by no-ops."""

        def connect(self) -> None:
            pass

        def disconnect(self, *args: Any, **kwargs: Any) -> None:
            pass

        def can_read(self, timeout: float = 0) -> bool:
            return False

    return IdleConnection


class RedisPeer(Peer):
    name = "redis-py ConnectionPool"
    dist = "redis"
    module = "redis.connection"
    no_waiting: str | None = "raises MaxConnectionsError instead of waiting when exhausted"
    no_sockets = "its members speak RESP when they connect: needs a Redis server"
    no_lifecycle = (
        "no pool-level policies (health_check_interval acts per command on the connection)"
    )

    def dummy(self, size: int) -> Subject:
        from redis.connection import ConnectionPool

        pool = ConnectionPool(connection_class=_idle_redis_connection(), max_connections=size)
        return Subject(self.name, pool.get_connection, pool.release, pool.disconnect)


class RedisBlockingPeer(RedisPeer):
    name = "redis-py BlockingConnectionPool"
    no_waiting = None

    def dummy(self, size: int) -> Subject:
        from redis.connection import BlockingConnectionPool

        pool = BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=_idle_redis_connection(), max_connections=size, timeout=30
        )
        return Subject(self.name, pool.get_connection, pool.release, pool.disconnect)


# -- urllib3 ----------------------------------------------------------------------


def _urllib3_sock(conn: Any) -> socket.socket:
    sock = conn.sock
    if sock is None:
        conn.connect()
        sock = conn.sock
    return sock  # type: ignore[no-any-return]


class Urllib3Peer(Peer):
    name = "urllib3 HTTPConnectionPool"
    dist = "urllib3"
    module = "urllib3"
    no_lifecycle = "no lifecycle options (its dropped-connection check is always on)"

    def _pool(self, host: str, port: int, size: int) -> Subject:
        from urllib3 import HTTPConnectionPool

        pool = HTTPConnectionPool(host, port, maxsize=size, block=True, timeout=30.0)
        return Subject(self.name, pool._get_conn, pool._put_conn, pool.close, sock_of=_urllib3_sock)

    def dummy(self, size: int) -> Subject:
        return self._pool("127.0.0.1", 9, size)  # never connected

    def sockets(self, size: int, address: Address, make_sock: SockMaker) -> Subject:
        return self._pool(address[0], address[1], size)


# -- psycopg_pool -----------------------------------------------------------------


@functools.cache
def _fake_pg_classes() -> tuple[type, type]:
    from psycopg.pq import TransactionStatus

    class PgConn:
        transaction_status = TransactionStatus.IDLE

    class FakeConnection:
        """Stands in for psycopg.Connection: idle, never talks to a server."""

        pgconn = PgConn()
        closed = False

        def __init__(self) -> None:
            self._pool: Any = None
            self._created_at = self._expire_at = 0.0

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            return cls()

        def close(self) -> None:
            pass

    class SocketConnection(FakeConnection):
        """As FakeConnection, holding a real socket to the echo server."""

        make_sock: SockMaker | None = None

        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            return cls(kwargs["make_sock"]())

        def close(self) -> None:
            self.sock.close()

    return FakeConnection, SocketConnection


class PsycopgPeer(Peer):
    name = "psycopg_pool ConnectionPool"
    dist = "psycopg-pool"
    module = "psycopg_pool"

    def _pool(
        self, size: int, cls: type, kwargs: dict[str, Any] | None = None, **kw: Any
    ) -> Subject:
        import logging

        from psycopg_pool import ConnectionPool

        logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
        pool = ConnectionPool(
            "",
            connection_class=cls,
            kwargs=kwargs,
            min_size=size,
            max_size=size,
            open=True,
            name="bench",
            **kw,
        )
        pool.wait(timeout=60.0)
        return Subject(
            self.name,
            pool.getconn,
            pool.putconn,
            pool.close,
            sock_of=attrgetter("sock"),
        )

    def dummy(self, size: int) -> Subject:
        return self._pool(size, _fake_pg_classes()[0])

    def lifecycle(self, size: int) -> list[Subject]:
        fake = _fake_pg_classes()[0]

        def check(conn: Any) -> None:
            pass

        lifetimes: dict[str, Any] = {"max_lifetime": 3600.0, "max_idle": 600.0}
        checked = self._pool(size, fake, check=check, **lifetimes)
        checked.name = f"{self.name} (check, max_lifetime, max_idle)"
        reset = self._pool(size, fake, check=check, reset=check, **lifetimes)
        reset.name = f"{self.name} (... + reset)"
        reset.note = "reset= makes every putconn go through a worker thread"
        return [checked, reset]

    def sockets(self, size: int, address: Address, make_sock: SockMaker) -> Subject:
        return self._pool(size, _fake_pg_classes()[1], kwargs={"make_sock": make_sock})


# -- generic-connection-pool ------------------------------------------------------

_ENDPOINT = "bench"


class GenericPeer(Peer):
    name = "generic-connection-pool"
    dist = "generic-connection-pool"
    module = "generic_connection_pool.threading"

    def _pool(self, manager: Any, endpoint: Any, size: int, **kw: Any) -> Subject:
        from generic_connection_pool.threading import ConnectionPool

        pool = ConnectionPool(manager, min_idle=size, max_size=size, total_max_size=size, **kw)
        release = pool.release

        def put(conn: Any) -> None:
            release(conn, endpoint)

        return Subject(self.name, functools.partial(pool.acquire, endpoint), put, pool.close)

    @staticmethod
    def _dummy_manager(checked: bool) -> Any:
        from generic_connection_pool.threading import BaseConnectionManager

        class DummyManager(BaseConnectionManager[str, _Dummy]):
            def create(self, endpoint: str, timeout: float | None = None) -> _Dummy:
                return _Dummy()

            def dispose(self, endpoint: str, conn: _Dummy, timeout: float | None = None) -> None:
                pass

        class CheckedManager(DummyManager):
            def check_aliveness(
                self, endpoint: str, conn: _Dummy, timeout: float | None = None
            ) -> bool:
                return True

        return CheckedManager() if checked else DummyManager()

    def dummy(self, size: int) -> Subject:
        return self._pool(self._dummy_manager(False), _ENDPOINT, size)

    def lifecycle(self, size: int) -> list[Subject]:
        subject = self._pool(
            self._dummy_manager(True), _ENDPOINT, size, idle_timeout=600.0, max_lifetime=3600.0
        )
        subject.name = f"{self.name} (check_aliveness, idle_timeout, max_lifetime)"
        return [subject]

    def sockets(self, size: int, address: Address, make_sock: SockMaker) -> Subject:
        from ipaddress import IPv4Address

        from generic_connection_pool.contrib.socket import TcpSocketConnectionManager

        class Manager(TcpSocketConnectionManager):
            def create(self, endpoint: Any, timeout: float | None = None) -> socket.socket:
                return make_sock()

        return self._pool(Manager(), (IPv4Address(address[0]), address[1]), size)


PEERS: list[Peer] = [
    SQLAlchemyPeer(),
    RedisPeer(),
    RedisBlockingPeer(),
    Urllib3Peer(),
    PsycopgPeer(),
    GenericPeer(),
]

PSYCOPG_NAME = next((p.name for p in PEERS if p.module == "psycopg_pool"), "psycopg_pool")


def peer_rows(
    table: Table,
    make: Callable[[Peer], list[Subject]],
    reason: Callable[[Peer], str | None],
) -> list[tuple[Row, Subject]]:
    """Build each installed peer's subjects; rows for the others say why not."""
    built = []
    for peer in PEERS:
        why = peer.missing() or reason(peer)
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
            continue
        try:
            subjects = make(peer)
        except Exception as exc:
            table.rows.append(Row(peer.name, "peer", status=error_status(exc)))
            continue
        for subject in subjects:
            row = Row(subject.name, "peer", note=subject.note)
            table.rows.append(row)
            built.append((row, subject))
    return built
