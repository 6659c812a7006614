"""A fault-injecting HTTP proxy in front of the test S3 server, on 127.0.0.1.

:class:`FaultProxy` forwards every request to the moto server of tests/s3.py (standard library:
``http.server.ThreadingHTTPServer`` in, ``http.client`` out) and answers the requests its
:class:`Rule` s match with a fault instead, as a real S3 endpoint or the network can:

- ``SLOW_DOWN``: ``503 SlowDown`` with S3's XML error body (throttling), not forwarded;
- ``INTERNAL_ERROR``: ``500 InternalError`` with S3's XML error body, not forwarded;
- ``RESET``: the connection reset before any answer, not forwarded;
- ``LOST_ANSWER``: forwarded (a PUT is stored), then the connection reset before the answer;
- ``CUT_BODY``: forwarded, the answer's head and half its body sent, then the connection reset;
- ``FLIPPED_BODY``: forwarded, the answer sent whole with one bit of its body flipped (the
  same length: nothing at the HTTP level tells it from the object's bytes).

A rule matches by operation (``PUT``, ``GET``, ``HEAD``, ``DELETE``, ``LIST``, ``POST``) and a
regular expression searched in the object key (a listing's: its ``prefix``), and can let
``skip`` matching requests through first, fault only every ``every``-th one and stop after
``times`` faults; a rule given several faults answers with each in turn. ``proxy.before``
(optional) is called with each request's operation and key before it is handled: a test
stops the S3 server there to have it go down at an exact point.
A request that cannot be forwarded (the server is down) is answered by closing the connection,
as a TCP pass-through would. Every exchange is logged (``proxy.exchanges``), faults included.

::

    with FaultProxy(s3.port) as proxy:
        proxy.add(Rule(SLOW_DOWN, methods={"PUT"}, key=r"\\.zip$", times=3))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import TracebackType

SLOW_DOWN = "503 SlowDown"
INTERNAL_ERROR = "500 InternalError"
RESET = "connection reset"
LOST_ANSWER = "answer lost (forwarded, then reset)"
CUT_BODY = "answer cut mid-body"
FLIPPED_BODY = "bit flipped in the body"
FAULTS = (SLOW_DOWN, INTERNAL_ERROR, RESET, LOST_ANSWER, CUT_BODY, FLIPPED_BODY)
OPERATIONS = frozenset({"PUT", "GET", "HEAD", "DELETE", "LIST", "POST"})

_ERRORS = {
    SLOW_DOWN: (503, "SlowDown", "Please reduce your request rate."),
    INTERNAL_ERROR: (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Rule:
    """Which requests get ``fault`` (several: each in turn); see the module docstring."""

    fault: str | tuple[str, ...]
    methods: Collection[str] = OPERATIONS
    key: str = ""
    skip: int = 0
    every: int = 1
    times: int | None = None
    matched: int = field(default=0, init=False)
    injected: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        faults = (self.fault,) if isinstance(self.fault, str) else self.fault
        if not faults or set(faults) - set(FAULTS):
            raise ValueError(f"unknown fault {self.fault!r}")
        self.faults: tuple[str, ...] = faults
        unknown = set(self.methods) - OPERATIONS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")

    def take(self, method: str, key: str) -> str | None:
        """The fault this request gets, if any (counted)."""
        if method not in self.methods or not re.search(self.key, key):
            return None
        if self.times is not None and self.injected >= self.times:
            return None
        self.matched += 1
        if self.matched <= self.skip or (self.matched - self.skip - 1) % self.every:
            return None
        self.injected += 1
        return self.faults[(self.injected - 1) % len(self.faults)]


@dataclass(frozen=True)
class Exchange:
    """One request the proxy handled: its operation and key, the fault it got (None: passed
    through) and the status the client received (None: no answer)."""

    method: str
    key: str
    fault: str | None
    status: int | None


class FaultProxy:
    """The proxy: ``start()`` / ``stop()`` (or a ``with`` block), ``add()`` rules, ``clear()``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.exchanges: list[Exchange] = []
        self.before: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the proxy is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, *rules: Rule) -> None:
        with self._lock:
            self.rules.extend(rules)

    def clear(self) -> None:
        """No more faults: every request passes through."""
        with self._lock:
            self.rules.clear()

    def injected(self, fault: str | None = None) -> list[Exchange]:
        """The exchanges that got a fault (``fault``: that one only)."""
        with self._lock:
            return [e for e in self.exchanges if e.fault is not None and fault in (None, e.fault)]

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _choose(self, method: str, key: str) -> str | None:
        with self._lock:
            for rule in self.rules:
                fault = rule.take(method, key)
                if fault is not None:
                    return fault
        return None

    def _log(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)


def operation(method: str, target: str) -> tuple[str, str]:
    """(operation, key) of a path-style S3 request: ``LIST`` and its prefix for a listing."""
    parts = urllib.parse.urlsplit(target)
    path = urllib.parse.unquote(parts.path).lstrip("/")
    _, _, key = path.partition("/")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if method == "GET" and not key and ("list-type" in query or "prefix" in query):
        return "LIST", query.get("prefix", [""])[0]
    return method, key


def error_body(code: str, message: str, key: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>/{key}</Resource><RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_HEAD = do_DELETE = do_POST = do_GET

    def _handle(self) -> None:
        body = self._body()
        method, key = operation(self.command, self.path)
        if self.owner.before is not None:
            self.owner.before(method, key)
        fault = self.owner._choose(method, key)
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            self._answer(
                status, [("Content-Type", "application/xml")], error_body(code, message, key)
            )
            self.owner._log(Exchange(method, key, fault, status))
            return
        if fault == RESET:
            self._reset()
            self.owner._log(Exchange(method, key, fault, None))
            return
        try:
            status, headers, answer = self._forward(body)
        except OSError:  # the server is down: no answer, as a TCP pass-through
            self._reset()
            self.owner._log(Exchange(method, key, None, None))
            return
        if fault == LOST_ANSWER or (fault == CUT_BODY and len(answer) < 2):
            self._reset()
            self.owner._log(Exchange(method, key, fault, None))
            return
        if fault == CUT_BODY:
            self._answer(status, headers, answer, cut=len(answer) // 2)
            self.owner._log(Exchange(method, key, fault, None))
            return
        if fault == FLIPPED_BODY and answer:
            flipped = bytearray(answer)
            flipped[len(flipped) // 2] ^= 0x01
            answer = bytes(flipped)
        self._answer(status, headers, answer, head_length=self.command == "HEAD")
        self.owner._log(Exchange(method, key, fault, status))

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            return response.status, response.getheaders(), answer
        finally:
            upstream.close()

    def _answer(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        cut: int | None = None,
        head_length: bool = False,
    ) -> None:
        self.send_response_only(status)
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP or (lower == "content-length" and not head_length):
                continue
            self.send_header(name, value)
        if not head_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self._reset()

    def _reset(self) -> None:
        """Reset the connection (RST, not a polite close)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
