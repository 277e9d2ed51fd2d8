"""TLS: ``ssl=`` and ``server_hostname=`` on socket pools, against a loopback TLS server.

The certificate authority and certificates are made by ``trustme`` for each test module.
Every promise of a plain socket pool holds over TLS too: the handshake is bounded by
``dial_timeout``, a bad certificate is a ``DialError`` that says why (and nothing is sent),
a server restart is survived without an error, ``io_timeout``, ``abort()`` and fork work.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from conftest import wait_until
from invariants import MARGIN, recv_exactly, round_trip, within
from test_hardening import run_child
from tlsserver import TLSEchoServer, certificates, client_context, server_context

import gocp
from gocp._sockets import _stale_by_poll, stale
from gocp.testing import EchoServer, FakeClock

FAST_RETRY = {"retry_min": 0.01, "retry_max": 0.05}


@pytest.fixture(scope="module")
def pki() -> tuple[trustme.CA, trustme.LeafCert]:
    return certificates()


@pytest.fixture
def client(pki: tuple[trustme.CA, trustme.LeafCert]) -> ssl.SSLContext:
    return client_context(pki[0])


@pytest.fixture
def server(pki: tuple[trustme.CA, trustme.LeafCert]) -> Iterator[TLSEchoServer]:
    with TLSEchoServer(server_context(pki[1])) as tls_server:
        yield tls_server
    assert not tls_server.errors


def tls_pool(server: TLSEchoServer, context: ssl.SSLContext, **options: object) -> gocp.Pool:
    options.setdefault("size", 1)
    return gocp.new(server.address, ssl=context, **options)  # type: ignore[arg-type]


def fail_dial(pool: gocp.Pool) -> gocp.DialError:
    with pool.connection(timeout=5) as conn, pytest.raises(gocp.DialError) as info:
        conn.sendall(b"never in clear")
    return info.value


# -- a good certificate ------------------------------------------------------------------


def test_a_good_certificate_works_and_the_member_is_a_tls_socket(server, client):
    with tls_pool(server, client) as pool:
        with pool.connection() as conn:
            assert round_trip(conn, b"hello over tls") == b"hello over tls"
            sock = conn.socket
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            assert sock.getpeercert()["subjectAltName"]
        with pool.connection() as conn:  # the same connection, lent again
            assert round_trip(conn) == b"ping"
        stats = pool.stats()
        assert (stats.dials, stats.dial_failures, stats.connected) == (1, 0, 1)
    assert server.handshakes == 1


def test_tls_never_writes_the_descriptor_under_the_tls_layer(server, client, monkeypatch):
    """A plain socket's sends go straight to its descriptor; a TLS one's must not."""

    def forbidden(fd: int, data: bytes) -> int:
        raise AssertionError("clear text written under TLS")

    monkeypatch.setattr(gocp._conn, "_write", forbidden)
    with tls_pool(server, client) as pool, pool.connection() as conn:
        assert round_trip(conn, b"sealed") == b"sealed"


def test_server_hostname_defaults_to_the_address_host(pki):
    ca, _ = pki
    named = ca.issue_cert("localhost")  # a name only: an IP address would not match it
    with TLSEchoServer(server_context(named)) as tls_server:
        port = tls_server.address[1]
        with (
            gocp.new(f"localhost:{port}", size=1, ssl=client_context(ca)) as pool,
            pool.connection() as conn,
        ):
            assert round_trip(conn) == b"ping"
        assert tls_server.server_names == ["localhost"]  # SNI: the address's host
        with gocp.new(tls_server.address, size=1, ssl=client_context(ca)) as pool:
            error = fail_dial(pool)  # "127.0.0.1" is not on the certificate
        assert "127.0.0.1" in str(error)
        with (
            gocp.new(
                tls_server.address, size=1, ssl=client_context(ca), server_hostname="localhost"
            ) as pool,
            pool.connection() as conn,
        ):
            assert round_trip(conn) == b"ping"
        assert tls_server.server_names[-1] == "localhost"
        assert tls_server.received == 8  # the two round trips: the failed dial sent nothing


def test_large_payloads_cross_many_tls_records(server, client):
    # One holder at a time (an SSLSocket, unlike a plain socket, must not be read by one
    # thread while another writes): send a chunk, read its echo back.
    payload = os.urandom(1 << 20)
    chunk = 256 * 1024  # 16 TLS records of at most 16 KiB each
    with tls_pool(server, client) as pool, pool.connection() as conn:
        for start in range(0, len(payload), chunk):
            conn.sendall(payload[start : start + chunk])
            assert recv_exactly(conn, chunk) == payload[start : start + chunk]
    assert server.received == len(payload)


# -- certificates that do not verify ----------------------------------------------------


def test_a_wrong_host_name_is_a_dial_error_naming_the_cause(pki):
    ca, _ = pki
    other = ca.issue_cert("db.example")
    with TLSEchoServer(server_context(other)) as tls_server:
        with gocp.new(
            tls_server.address, size=2, ssl=client_context(ca), retry_min=5, retry_max=5
        ) as pool:
            error = fail_dial(pool)
            assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
            text = str(error)
            assert "127.0.0.1" in text
            assert "certificate verify failed" in text
            assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in text
            assert error.retry_in > 0
            stats = pool.stats()
            assert (stats.dials, stats.dial_failures, stats.connected) == (1, 1, 0)
        with gocp.new(
            tls_server.address,
            size=1,
            ssl=client_context(ca),
            server_hostname="wrong.example",
        ) as pool:
            error = fail_dial(pool)
            assert "Hostname mismatch, certificate is not valid for 'wrong.example'" in str(error)
        assert tls_server.received == 0  # nothing was sent, encrypted or not
        assert tls_server.handshakes == 0


def test_an_unknown_authority_is_a_dial_error_naming_the_cause(server):
    stranger = client_context(trustme.CA())  # trusts another CA only
    with tls_pool(server, stranger) as pool:
        error = fail_dial(pool)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert error.__cause__.verify_message in str(error)
    assert "unable to get local issuer certificate" in str(error)
    assert server.received == 0


def test_a_plain_tcp_server_is_a_dial_error_and_gets_no_clear_text(client):
    with EchoServer() as plain, gocp.new(plain.address, size=1, ssl=client) as pool:
        error = fail_dial(pool)
        assert isinstance(error.__cause__, ssl.SSLError | OSError)
        assert pool.stats().connected == 0


@pytest.fixture
def mute() -> Iterator[tuple[str, int]]:
    """A listener that never accepts: TCP connects (into the kernel's backlog), and the TLS
    handshake never gets an answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()


def test_the_handshake_counts_against_dial_timeout(client, mute):
    with (
        gocp.new(mute, size=1, ssl=client, dial_timeout=0.3) as pool,
        within(0.3, MARGIN, at_least=0.25),
    ):
        error = fail_dial(pool)
    assert isinstance(error.__cause__, TimeoutError)
    assert "TLS handshake" in str(error)
    assert "0.3" in str(error)


def test_get_connect_bounds_the_handshake_by_its_timeout(client, mute):
    with (
        gocp.new(mute, size=1, ssl=client, dial_timeout=30) as pool,
        within(0.3, MARGIN, at_least=0.25),
        pytest.raises(gocp.DialError) as info,
    ):
        pool.get(timeout=0.3, connect=True)
    assert isinstance(info.value.__cause__, TimeoutError)


# -- what breaks: restart, close, io_timeout, abort --------------------------------------


@pytest.mark.parametrize("ending", ["close_notify", "fin", "reset"])
def test_a_server_restart_is_survived_without_an_error(server, client, ending):
    with tls_pool(server, client, **FAST_RETRY) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        server.restart(ending)
        assert wait_until(lambda: pool.stats().connected == 0)  # the probe sees it idle
        with pool.connection() as conn:
            assert round_trip(conn, b"again") == b"again"  # no error: redialled first
        stats = pool.stats()
        assert (stats.stale, stats.broken, stats.dials) == (1, 0, 2)
    assert server.handshakes == 2


@pytest.mark.parametrize("ending", ["close_notify", "fin", "reset"])
def test_a_peer_closing_during_a_read_is_connection_broken(server, client, ending):
    server.stall = True
    with tls_pool(server, client) as pool:
        with pool.connection() as conn:
            conn.sendall(b"request")
            assert wait_until(lambda: server.received == 7)
            server.kill_connections(ending)
            with within(1.0), pytest.raises(gocp.ConnectionBroken) as info:
                conn.recv(64)  # never b"": the member raises
            assert not isinstance(info.value, gocp.IOTimeout)
        assert not conn.connected
        server.stall = False
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        assert pool.stats().broken == 1


def test_io_timeout_over_tls(server, client):
    server.stall = True
    with tls_pool(server, client, io_timeout=0.2) as pool:
        with pool.connection() as conn:
            conn.sendall(b"no answer")
            with within(0.2, MARGIN, at_least=0.15), pytest.raises(gocp.IOTimeout):
                conn.recv(64)
        server.stall = False
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        stats = pool.stats()
        assert (stats.broken, stats.dials) == (1, 2)


def test_abort_wakes_a_blocked_tls_read(server, client):
    server.stall = True
    with tls_pool(server, client, io_timeout=30) as pool:
        conn = pool.get()
        conn.sendall(b"no answer")
        errors: list[BaseException] = []
        started = threading.Event()

        def blocked() -> None:
            started.set()
            try:
                conn.recv(64)
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=blocked)
        reader.start()
        assert started.wait(5)
        assert wait_until(lambda: server.received == 9)
        with within(1.0):
            conn.abort()
            reader.join(5)
        assert not reader.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], gocp.ConnectionBroken)
        assert "aborted" in str(errors[0])
        pool.put(conn)
        server.stall = False
        with pool.connection() as again:
            assert round_trip(again) == b"ping"
        assert server.received == 9 + 4  # nothing else reached it: no clear text either


def test_a_check_over_tls_after_check_interval(server, client):
    clock = FakeClock()
    checks: list[bytes] = []

    def check(conn: gocp.PersistentConn) -> None:
        checks.append(round_trip(conn, b"check"))

    with tls_pool(server, client, check=check, check_interval=10, clock=clock) as pool:
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        clock.advance(11)
        assert wait_until(lambda: checks == [b"check"])
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        assert pool.stats().dials == 1


def test_close_wakes_a_check_blocked_on_a_silent_tls_server(server, client):
    clock = FakeClock()
    entered = threading.Event()

    def check(conn: gocp.PersistentConn) -> None:
        entered.set()
        round_trip(conn, b"are you there")  # the server reads it and never answers

    pool = tls_pool(server, client, check=check, check_interval=10, clock=clock, io_timeout=30)
    with pool.connection() as conn:
        assert round_trip(conn) == b"ping"
    server.stall = True
    clock.advance(11)
    assert entered.wait(5)
    assert wait_until(lambda: server.received == 4 + 13)
    with within(1.0):
        pool.close()  # shuts the checked socket down: the check's recv wakes at once
        assert wait_until(lambda: pool.stats().connected == 0, 2.0)


def test_interrupt_wakes_a_tls_reader_and_nothing_goes_out_after(server, client):
    from gocp._sockets import SocketConnector

    connector = SocketConnector(server.address, gocp.Options(ssl=client), check=None)
    sock = connector.connect(deadline=time.monotonic() + 5)
    try:
        results: list[object] = []
        reader = threading.Thread(target=lambda: results.append(sock.recv(1)))
        reader.start()
        connector.interrupt(sock)
        reader.join(5)
        assert results == [b""]  # the blocked reader woke: end of stream
        with pytest.raises(OSError):
            sock.send(b"secret")  # fails: never written unencrypted
    finally:
        sock.close()
    assert server.received == 0


# -- the stale probe over TLS ----------------------------------------------------------------


def _tls_pair(server: TLSEchoServer, client: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(server.address, timeout=5)
    return client.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.mark.parametrize("ending", ["close_notify", "fin", "reset"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_stale_probes_over_tls(pki, client, version, ending):
    with (
        TLSEchoServer(server_context(pki[1], maximum=version)) as tls_server,
        _tls_pair(tls_server, client) as sock,
    ):
        assert sock.version() == version.name.replace("v1_", "v1.")
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"  # a round trip: TLS 1.3 tickets read on the way
        assert not stale(sock)
        assert not _stale_by_poll(sock)  # the probe where TCP_INFO is missing
        tls_server.kill_connections(ending)
        assert wait_until(lambda: stale(sock))
        assert _stale_by_poll(sock)
        if ending != "reset":
            assert sock.recv(1) == b""  # the probes consumed nothing


def test_the_handshake_closes_the_socket_on_every_failure(client):
    from gocp._dial import handshake

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sock = socket.create_connection(listener.getsockname(), timeout=5)
        with pytest.raises(ValueError, match="check_hostname requires server_hostname"):
            handshake(sock, client, None, time.monotonic() + 5, label="x")
        assert sock.fileno() == -1


def test_unread_session_tickets_are_no_reason_to_redial(server, client):
    with _tls_pair(server, client) as sock:
        assert sock.version() == "TLSv1.3"
        # The server's session tickets arrive after the handshake and wait, unread.
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        with raw:
            assert wait_until(lambda: _has_bytes(raw))
        assert not stale(sock)  # TCP_INFO: still established
        sock.sendall(b"y")
        assert sock.recv(1) == b"y"


def _has_bytes(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


# -- fork ----------------------------------------------------------------------------------

FORK_CHILD = """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import gocp
    from tlsserver import TLSEchoServer, certificates, client_context, server_context

    ca, cert = certificates()
    out = {{}}
    with TLSEchoServer(server_context(cert)) as server, gocp.new(
        server.address, size=1, ssl=client_context(ca)
    ) as pool:
        conn = pool.get()
        conn.sendall(b"p"); conn.recv(1)
        mine = conn.socket.getsockname()
        pool.put(conn)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            child = {{}}
            try:
                with pool.connection(timeout=5) as conn:
                    conn.sendall(b"c")
                    child["reply"] = conn.recv(1).decode()
                    child["new_socket"] = conn.socket.getsockname() != mine
            except BaseException as exc:
                child["error"] = repr(exc)
            os.write(write, json.dumps(child).encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            out["child"] = json.loads(pipe.read())
        out["status"] = status
        with pool.connection(timeout=5) as conn:
            conn.sendall(b"q")
            out["parent_reply"] = conn.recv(1).decode()
            out["parent_same_socket"] = conn.socket.getsockname() == mine
        out["handshakes"] = server.handshakes
        out["stale"] = pool.stats().stale
    print(json.dumps(out))
"""


def test_a_forked_child_redials_and_leaves_the_parents_tls_connection_alone():
    out = run_child(FORK_CHILD.format(tests=str(Path(__file__).parent)), timeout=30)
    assert out["status"] == 0
    assert out["child"] == {"reply": "c", "new_socket": True}
    # The child closed its copy without a close_notify or a FIN: the parent's still works.
    assert out["parent_reply"] == "q"
    assert out["parent_same_socket"] is True
    assert out["stale"] == 0
    assert out["handshakes"] == 2


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "yes", 1, ssl.create_default_context])
def test_ssl_must_be_an_ssl_context(value):
    with pytest.raises(TypeError, match=r"^ssl: expected an ssl\.SSLContext") as info:
        gocp.new("127.0.0.1:9", ssl=value)
    if value is True:
        assert "ssl.create_default_context()" in str(info.value)


def test_a_server_side_context_is_refused():
    with pytest.raises(ValueError, match=r"^ssl: a server-side context"):
        gocp.new("127.0.0.1:9", ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


@pytest.mark.parametrize(
    ("value", "error"),
    [(3, TypeError), (b"host", TypeError), ("", ValueError), ("a b", ValueError)],
)
def test_server_hostname_must_be_a_host_name(client, value, error):
    with pytest.raises(error, match=r"^server_hostname: "):
        gocp.new("127.0.0.1:9", ssl=client, server_hostname=value)


def test_server_hostname_that_idna_cannot_encode(client):
    with pytest.raises(ValueError, match=r"^server_hostname: .* not a valid host name"):
        gocp.new("127.0.0.1:9", ssl=client, server_hostname="a" * 64 + ".example")


def test_server_hostname_needs_ssl():
    with pytest.raises(ValueError, match=r"^server_hostname: .*without ssl="):
        gocp.new("127.0.0.1:9", server_hostname="db.example")


@pytest.mark.parametrize("name", ["ssl", "server_hostname"])
def test_tls_options_are_for_socket_pools_only(client, name):
    value = client if name == "ssl" else "db.example"
    with pytest.raises(TypeError, match=rf"^{name}: an option of socket pools"):
        gocp.pool(object, **{name: value})


def test_tls_hostname_is_decided_once_for_every_shell(client):
    assert gocp.Options().tls_hostname("db.example") is None
    options = gocp.Options(ssl=client)
    assert options.tls_hostname("db.example") == "db.example"
    assert options.tls_hostname("fe80::1%eth0") == "fe80::1"
    named = gocp.Options(ssl=client, server_hostname="cache.internal")
    assert named.tls_hostname("10.0.0.7") == "cache.internal"
    assert gocp.Options(ssl=client).ssl is client


# -- gocp.aio: the same TLS, on the loop's transports ------------------------------------


def test_asyncio_members_speak_tls_survive_a_restart_and_name_a_bad_certificate(pki, server):
    """``ssl=`` in ``gocp.aio`` too: a good certificate works, the member rides out a server
    restart (the stale check sees the close), a wrong name and an unknown authority are
    ``DialError``s that say why."""
    import asyncio

    import gocp.aio

    ca, _leaf = pki
    good = client_context(ca)

    async def scenario() -> None:
        async with gocp.aio.new(server.address, size=1, ssl=good) as pool:
            async with pool.connection(timeout=5.0) as conn:
                await conn.sendall(b"secret")
                assert await conn.recv(6) == b"secret"
                assert conn.socket is not None
            server.restart()
            async with pool.connection(timeout=5.0) as conn:
                await conn.sendall(b"again")
                assert await conn.recv(5) == b"again"
            assert pool.stats().stale + pool.stats().broken >= 1
        wrong = gocp.aio.new(server.address, size=1, ssl=good, server_hostname="wrong.example")
        async with wrong:
            conn = await wrong.get(timeout=5.0)
            with pytest.raises(gocp.DialError, match="Hostname mismatch") as failed:
                await conn.sendall(b"x")
            assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
            wrong.put(conn)
        stranger = client_context(trustme.CA())
        async with gocp.aio.new(server.address, size=1, ssl=stranger) as unknown:
            conn = await unknown.get(timeout=5.0)
            with pytest.raises(gocp.DialError, match="unable to get local issuer") as failed:
                await conn.sendall(b"x")
            unknown.put(conn)

    asyncio.run(scenario())
