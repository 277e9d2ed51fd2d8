"""``python -m gocp.testing proxy``: the fault proxy out of process, controlled over HTTP."""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from test_proxy import IO_TIMEOUT, round_trip

from gocp.testing import EchoServer, FaultProxy
from gocp.testing.__main__ import main
from gocp.testing._control import ControlServer

START_BOUND = 20.0  # a new interpreter importing gocp, on a busy machine


class Api:
    """A client of the control API at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """``(status, JSON answer)`` of one request."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())


@pytest.fixture(name="controlled")
def fixture_controlled(echo_server: EchoServer) -> Iterator[tuple[FaultProxy, Api]]:
    """A proxy in front of ``echo_server`` and a client of its control API."""
    with FaultProxy(echo_server.address, seed=1) as proxy:
        control = ControlServer(proxy).start()
        try:
            yield proxy, Api(control.url)
        finally:
            control.close()


# -- the control API ------------------------------------------------------------------------


def test_the_api_sets_faults_and_reads_events(
    controlled: tuple[FaultProxy, Api], echo_server: EchoServer
) -> None:
    proxy, api = controlled
    assert api("GET", "/status") == (
        200,
        {
            "listen": proxy.address_text,
            "upstream": echo_server.address_text,
            "running": True,
            "connections": 0,
            "faults": 0,
        },
    )
    with socket.create_connection(proxy.address, timeout=IO_TIMEOUT) as client:
        round_trip(client, b"plain")
        fault = {"kind": "latency", "seconds": 0.2, "direction": "down"}
        assert api("POST", "/faults", fault) == (201, {"name": "latency-1"})
        assert round_trip(client, b"slow") >= 0.2
        assert api("GET", "/faults")[1] == [
            {
                "name": "latency-1",
                "kind": "latency",
                "seconds": 0.2,
                "jitter": 0.0,
                "direction": "down",
                "conn": "all",
                "probability": 1.0,
                "per": "connection",
            }
        ]
        assert api("DELETE", "/faults/latency-1") == (200, {"removed": "latency-1"})
        _, mark = api("GET", "/mark")
        assert api("POST", "/reset") == (200, {"ok": True})  # any call, by name
    _, event = api("GET", f"/events/wait?what=reset&after={mark['seq']}&timeout=5")
    assert (event["conn"], event["what"], event["detail"]) == (1, "reset", "reset()")
    _, events = api("GET", "/events?what=delay&conn=1")
    assert [(e["direction"], e["seconds"]) for e in events] == [("down", 0.2)]
    assert api("GET", "/events?after=1000")[1] == []


def test_the_api_answers_bad_input_with_the_argument_named(
    controlled: tuple[FaultProxy, Api],
) -> None:
    _, api = controlled
    answers = {
        "kind": api("POST", "/faults", {"kind": "jam"}),
        "seconds": api("POST", "/faults", {"kind": "latency", "seconds": -1}),
        "params": api("POST", "/faults", {"kind": "latency", "secs": 1}),
        "probability": api("POST", "/faults", {"kind": "blackhole", "probability": 2}),
        "after": api("POST", "/reset", {"after": "soon"}),
        "argument": api("POST", "/kill_all", {"hard": True}),
        "body": api("POST", "/heal", [1]),
        "conn": api("GET", "/events?conn=one"),
        "timeout": api("GET", "/events/wait?what=cut&timeout=600"),
        "what": api("GET", "/events/wait?conn=1"),
    }
    assert {name: status for name, (status, _) in answers.items()} == dict.fromkeys(answers, 400)
    errors = {name: answer["error"] for name, (_, answer) in answers.items()}
    assert errors["kind"].startswith("kind: expected one of ['bandwidth', 'blackhole',")
    assert errors["seconds"] == "seconds: must be >= 0, got -1"
    assert errors["params"].startswith("latency: takes ['seconds', 'jitter'] and ['name',")
    assert errors["probability"] == "probability: must be > 0 and <= 1, got 2"
    assert errors["after"].startswith("after: expected a number of seconds")
    assert "unexpected keyword argument 'hard'" in errors["argument"]
    assert errors["body"] == "body: expected a JSON object, got list"
    assert errors["conn"] == "conn: expected an int, got 'one'"
    assert errors["timeout"] == "timeout: must be within 0..60.0, got 600.0"
    assert errors["what"] == "what: missing"
    assert api("DELETE", "/faults/none")[0] == 404
    assert api("GET", "/nowhere")[0] == 404
    assert api("POST", "/stop")[0] == 404  # not a call of the API
    assert api("GET", "/events/wait?what=cut&timeout=0.1")[0] == 504


def test_the_api_refuses_accepts_and_says_when_the_proxy_is_stopped(
    controlled: tuple[FaultProxy, Api],
) -> None:
    proxy, api = controlled
    api("POST", "/refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=IO_TIMEOUT).close()
    api("POST", "/accept")
    with socket.create_connection(proxy.address, timeout=IO_TIMEOUT) as client:
        round_trip(client, b"back")
    proxy.stop()
    status, answer = api("POST", "/kill_all")
    assert (status, answer["error"]) == (
        409,
        "FaultProxy.kill_all(): the proxy is not running (call start())",
    )


def test_the_control_api_listens_on_loopback_only(echo_server: EchoServer) -> None:
    with pytest.raises(ValueError, match=r"^control: must be a loopback address, got '0.0.0.0'"):
        ControlServer(FaultProxy(echo_server.address), "0.0.0.0")


# -- the command line, in this process ----------------------------------------------------


class ReadyLine(io.StringIO):
    """Output that tells when the first line is complete."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        if "\n" in text:
            self.ready.set()
        return count


def drive(out: ReadyLine, failures: list[BaseException]) -> None:
    """Use the command's proxy, then end it with ``POST /shutdown`` (or, if anything went
    wrong, with SIGTERM, so that ``main`` always returns)."""
    try:
        assert out.ready.wait(IO_TIMEOUT)
        ready = json.loads(out.getvalue())
        api = Api(ready["control"])
        assert api("POST", "/faults", {"kind": "slicer", "average_size": 2})[0] == 201
        host, port = ready["listen"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT) as client:
            round_trip(client, b"through the command's proxy")
        assert api("POST", "/shutdown") == (200, {"ok": True})
    except BaseException as exc:
        failures.append(exc)
        if out.ready.is_set():  # main serves, with its own SIGTERM handler: end it
            os.kill(os.getpid(), signal.SIGTERM)


def test_main_serves_until_post_shutdown(echo_server: EchoServer) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    out = ReadyLine()
    failures: list[BaseException] = []
    driver = threading.Thread(target=drive, args=(out, failures))
    driver.start()
    try:
        args = ["proxy", "--listen", "127.0.0.1:0", "--upstream", echo_server.address_text]
        assert main(args, out=out) == 0
    finally:
        driver.join(IO_TIMEOUT)
    assert failures == []
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


BAD_COMMAND_LINES = [
    (["--listen", "nowhere", "--upstream", "127.0.0.1:9"], "--listen: address:"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"], "--upstream: address:"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--control", "[::]:0"], "loopback"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--seed", "x"], "--seed"),
    (
        ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--connect-timeout", "0"],
        "connect_timeout: must be > 0",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_COMMAND_LINES)
def test_bad_command_lines_exit_2_naming_the_option(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["proxy", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--listen", "--control"])
def test_a_port_in_use_exits_1_naming_the_option(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        used = f"127.0.0.1:{taken.getsockname()[1]}"
        args = {"--listen": "127.0.0.1:0", "--upstream": "127.0.0.1:9", "--control": "127.0.0.1:0"}
        args[option] = used
        assert main(["proxy", *[part for item in args.items() for part in item]]) == 1
    assert f"{option} {used}" in capsys.readouterr().err


# -- the command line, out of process -------------------------------------------------------


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first line of output, within ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout}s")
    return proc.stdout.readline()


def test_the_command_runs_out_of_process_and_ends_on_sigterm(echo_server: EchoServer) -> None:
    command = [sys.executable, "-m", "gocp.testing", "proxy", "--listen", "127.0.0.1:0"]
    command += ["--upstream", echo_server.address_text, "--seed", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            ready = json.loads(read_line(proc, START_BOUND))
            api = Api(ready["control"])
            host, port = ready["listen"].rsplit(":", 1)
            address = (host, int(port))
            assert api("POST", "/faults", {"kind": "latency", "seconds": 0.1})[0] == 201
            with socket.create_connection(address, timeout=IO_TIMEOUT) as client:
                assert round_trip(client, b"x") >= 0.2
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(IO_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(IO_TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=IO_TIMEOUT).close()
