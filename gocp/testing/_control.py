"""HTTP control of a FaultProxy, on loopback: for tests of clients written in any language.

Requests and answers are JSON (``Content-Type: application/json``):

==========================  ===========================================================
``GET /status``             ``{"listen", "upstream", "running", "connections", "faults"}``
``GET /faults``             the faults in force: ``[{"name", "kind", <parameters>,
                            "direction", "conn", "probability", "per"}]``
``POST /faults``            add one: ``{"kind": "latency", "seconds": 0.1, "jitter": 0.01,
                            "direction": "down", "name": "lag", "conn": "new",
                            "probability": 0.5, "per": "chunk"}`` (only ``kind`` and the
                            kind's required parameters are needed); answers ``{"name"}``
``DELETE /faults/<name>``   remove one
``GET /mark``               ``{"seq"}``: the latest event's place in the log
``GET /events``             ``?after=<seq>&what=<kind>&conn=<id>``: the events logged
``GET /events/wait``        ``?what=<kind>&conn=<id>&after=<seq>&timeout=<s>``: the first
                            such event, waiting up to ``timeout`` (at most 60) seconds
``POST /<call>``            any other call of ``FaultProxy`` by name, its arguments as a
                            JSON object: ``heal``, ``reset`` (``{"after": 0.5}``),
                            ``kill_all``, ``refuse``, ``accept``, ``set_latency``,
                            ``set_bandwidth``, ``set_slice``, ``cut_after``,
                            ``blackhole``, ``stall``, ``slow_close``
``POST /shutdown``          stop the proxy and end the command
==========================  ===========================================================

Fault kinds by name: ``latency``, ``bandwidth``, ``slicer``, ``limit_data``,
``blackhole``, ``stall``, ``slow_close``, ``reset_peer``, ``timeout``, with
the parameters of their classes (seconds, not milliseconds). Errors answer
``{"error": "<message>"}``: 400 for bad input (the message names the
argument), 404 for an unknown path or fault name, 409 for an action on a
stopped proxy, 504 when a wait timed out.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import attrs

from .._address import format_address
from ._events import ProxyEvent
from ._faults import KINDS_BY_NAME, ActiveFault
from ._proxy import FaultProxy

__all__ = ["ControlServer"]

_REQUEST_BOUND: Final = 5.0  # seconds to read a request
_WAIT_BOUND: Final = 60.0  # the longest wait /events/wait accepts
_CALLS: Final = frozenset(
    {
        "heal",
        "reset",
        "kill_all",
        "refuse",
        "accept",
        "set_latency",
        "set_bandwidth",
        "set_slice",
        "cut_after",
        "blackhole",
        "stall",
        "slow_close",
    }
)
_OPTIONS: Final = ("name", "direction", "conn", "probability", "per")


class _Answer(Exception):
    """Not an error: an answer to send as it is."""

    def __init__(self, status: HTTPStatus, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _fault_json(fault: ActiveFault) -> dict[str, Any]:
    return {
        "name": fault.name,
        "kind": fault.fault.kind,
        **attrs.asdict(fault.fault),
        "direction": fault.direction,
        "conn": fault.conn,
        "probability": fault.probability,
        "per": fault.per,
    }


def _event_json(event: ProxyEvent) -> dict[str, Any]:
    return attrs.asdict(event)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlServer:
    """Serves the HTTP control API of ``proxy`` on a loopback ``host``/``port`` (0: any).

    ``start`` serves in a thread; ``close`` stops it (within a few tenths of
    a second) and releases its socket. ``shutdown_requested`` is set by
    ``POST /shutdown``. Raises ``ValueError`` if ``host`` is not a loopback
    address (the API has no authentication).
    """

    def __init__(self, proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0) -> None:
        if not _is_loopback(host):
            raise ValueError(f"control: must be a loopback address, got {host!r}")
        self.proxy = proxy
        self.shutdown_requested = threading.Event()
        handler = type("_BoundHandler", (_Handler,), {"control": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="gocp-fault-proxy-control",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """``http://host:port`` of the API."""
        host, port = self._server.server_address[:2]
        return f"http://{format_address((str(host), int(port)))}"

    def start(self) -> ControlServer:
        """Serve in a background thread; return ``self``."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(_REQUEST_BOUND)
        self._server.server_close()

    # -- the routes ---------------------------------------------------------------------

    def get(self, path: str, query: dict[str, str]) -> object:
        proxy = self.proxy
        if path == "/status":
            return {
                "listen": proxy.address_text,
                "upstream": format_address(proxy.upstream),
                "running": proxy.running,
                "connections": proxy.connections,
                "faults": len(proxy.faults),
            }
        if path == "/faults":
            return [_fault_json(fault) for fault in proxy.faults]
        if path == "/mark":
            return {"seq": proxy.mark()}
        if path == "/events":
            after = _int_param(query, "after") or 0
            conn = _int_param(query, "conn")
            what = query.get("what")
            return [
                _event_json(e)
                for e in proxy.events
                if e.seq > after
                and (what is None or e.what == what)
                and (conn is None or e.conn == conn)
            ]
        if path == "/events/wait":
            if "what" not in query:
                raise _Answer(HTTPStatus.BAD_REQUEST, {"error": "what: missing"})
            timeout = _param(query, "timeout", float)
            timeout = 5.0 if timeout is None else timeout
            if not 0 <= timeout <= _WAIT_BOUND:
                raise ValueError(f"timeout: must be within 0..{_WAIT_BOUND}, got {timeout!r}")
            event = proxy.wait_for_event(
                query["what"],
                conn=_int_param(query, "conn"),
                after=_int_param(query, "after") or 0,
                timeout=timeout,
            )
            return _event_json(event)
        raise _Answer(HTTPStatus.NOT_FOUND, {"error": f"no such path: GET {path}"})

    def post(self, path: str, body: dict[str, Any]) -> tuple[HTTPStatus, object]:
        proxy = self.proxy
        if path == "/faults":
            kind_name = body.pop("kind", None)
            kind = KINDS_BY_NAME.get(kind_name) if isinstance(kind_name, str) else None
            if kind is None:
                raise ValueError(
                    f"kind: expected one of {sorted(KINDS_BY_NAME)}, got {kind_name!r}"
                )
            options = {key: body.pop(key) for key in _OPTIONS if key in body}
            try:
                fault = kind(**body)
            except TypeError as exc:
                if "argument" not in str(exc):
                    raise
                fields = [field.name for field in attrs.fields(kind)]
                raise ValueError(
                    f"{kind_name}: takes {fields} and {list(_OPTIONS)}, got {sorted(body)}"
                ) from None
            name = proxy.add_fault(fault, **options)
            return HTTPStatus.CREATED, {"name": name}
        if path == "/shutdown":
            self.shutdown_requested.set()
            return HTTPStatus.OK, {"ok": True}
        call = path.lstrip("/")
        if call not in _CALLS:
            raise _Answer(HTTPStatus.NOT_FOUND, {"error": f"no such path: POST {path}"})
        try:
            getattr(proxy, call)(**body)
        except TypeError as exc:
            if "argument" not in str(exc):
                raise
            raise ValueError(f"{call}: {exc}") from None
        return HTTPStatus.OK, {"ok": True}

    def delete(self, path: str) -> object:
        prefix = "/faults/"
        if not path.startswith(prefix) or len(path) == len(prefix):
            raise _Answer(HTTPStatus.NOT_FOUND, {"error": f"no such path: DELETE {path}"})
        name = urllib.parse.unquote(path[len(prefix) :])
        try:
            self.proxy.remove_fault(name)
        except ValueError as exc:
            raise _Answer(HTTPStatus.NOT_FOUND, {"error": str(exc)}) from None
        return {"removed": name}


def _param(query: dict[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    """The query parameter ``name`` as ``kind``; ``None`` if absent."""
    text = query.get(name)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "an int" if kind is int else "a number"
        raise ValueError(f"{name}: expected {what}, got {text!r}") from None


def _int_param(query: dict[str, str], name: str) -> int | None:
    value = _param(query, name, int)
    return None if value is None else int(value)


class _Handler(BaseHTTPRequestHandler):
    control: ControlServer
    timeout = _REQUEST_BOUND  # every read of a request is bounded
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self._answer(lambda: (HTTPStatus.OK, self.control.get(url.path, query)))

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self._answer(lambda: self.control.post(path, self._body()))

    def do_DELETE(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self._answer(lambda: (HTTPStatus.OK, self.control.delete(path)))

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ValueError(f"body: not JSON: {raw[:80]!r}") from None
        if not isinstance(body, dict):
            raise TypeError(f"body: expected a JSON object, got {type(body).__name__}")
        return body

    def _answer(self, handle: Callable[[], tuple[HTTPStatus, object]]) -> None:
        try:
            status, body = handle()
        except _Answer as answer:
            status, body = answer.status, answer.body
        except (TypeError, ValueError) as exc:
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except TimeoutError as exc:
            status, body = HTTPStatus.GATEWAY_TIMEOUT, {"error": str(exc)}
        except RuntimeError as exc:
            status, body = HTTPStatus.CONFLICT, {"error": str(exc)}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test's output is not the place for an access log."""
