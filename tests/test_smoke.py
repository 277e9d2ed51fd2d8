import gocp


def test_round_trip_and_restart(echo_server):
    with gocp.new(echo_server.address, size=1) as pool:
        with pool.connection(timeout=1) as conn:
            conn.sendall(b"ping")
            assert conn.recv(16) == b"ping"
        echo_server.restart()
        with pool.connection(timeout=1) as conn:
            conn.sendall(b"pong")
            assert conn.recv(16) == b"pong"
        assert pool.stats().stale == 1
