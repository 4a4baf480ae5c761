"""A fault-injecting HTTP proxy for S3 tests: standard library only, loopback only.

``FaultProxy(upstream)`` listens on 127.0.0.1 (a free port) and forwards every request, method,
path, query, headers and body as received, to the upstream S3 server (moto on loopback), then
relays the response. A client signs its requests for the proxy's ``host:port``; the ``Host``
header is forwarded unchanged, so a server that checks signatures computes the same one.

A test tells it, in-process, to misbehave for the next N matching requests (or forever):

- ``slow_down(n)``: answer ``503 SlowDown`` with S3's XML error body, as S3 throttles;
- ``reset(n)``: read the request, then reset the connection without any response;
- ``stall(n, seconds)``: read the request, say nothing for ``seconds`` (longer than the
  client's read timeout), then close the connection without a response;
- ``drop_response(n)``: forward the request (the server applies it), then reset the
  connection instead of relaying the response: a write that happened but was never confirmed;
- ``error(n, status, code)``: answer with any S3 XML error, e.g. 403 ``InvalidAccessKeyId``.

``match`` limits a fault to some requests (a predicate on method and path with query), and
``after`` arms it only once a request matching that predicate has passed, so a fault can start
mid-run. Faults are consumed in the order they were added; ``clear()`` removes them all.
``stop()`` (or leaving the ``with`` block) shuts the server down, wakes stalled handlers and
closes every client connection, so no thread outlives the test.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

Match = Callable[[str, str], bool]  # (method, path with query) -> does the fault apply?

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business; everything else is forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",  # the proxy answers "100 Continue" itself; the upstream gets the whole body
}
MAX_BODY = 512 * 2**20  # a request body larger than this is refused: tests never send one
MAX_CHUNKS = 1_000_000
UPSTREAM_TIMEOUT = 60.0
IDLE_TIMEOUT = 30.0  # a keep-alive connection idle this long is closed by the proxy


def any_request(method: str, path: str) -> bool:
    return True


@dataclass
class Fault:
    kind: str  # "slow_down" | "reset" | "stall" | "drop_response" | "error"
    remaining: int | None  # None: forever
    match: Match = any_request
    after: Match | None = None  # armed once a request matching this has been forwarded
    seconds: float = 0.0
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    armed: bool = field(init=False)
    injected: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.armed = self.after is None


@dataclass(frozen=True)
class Seen:
    """One request the proxy received, and what it did with it."""

    method: str
    path: str
    action: str  # "forwarded" or the fault's kind
    status: int | None  # the status sent to the client; None when it got no response


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to plain HTTP on loopback only: {upstream}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.seen: list[Seen] = []
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="s3-fault-proxy",
            daemon=True,
        )
        self._thread.start()

    # -- what the tests call ------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def slow_down(self, n: int | None = None, **when) -> Fault:
        """503 SlowDown for the next ``n`` matching requests (``None``: forever)."""
        return self._add(Fault("slow_down", n, **when))

    def reset(self, n: int | None = None, **when) -> Fault:
        """Reset the connection, without a response, for the next ``n`` matching requests."""
        return self._add(Fault("reset", n, **when))

    def stall(self, n: int | None = None, seconds: float = 10.0, **when) -> Fault:
        """Say nothing for ``seconds``, then close without a response, ``n`` times."""
        return self._add(Fault("stall", n, seconds=seconds, **when))

    def drop_response(self, n: int | None = None, **when) -> Fault:
        """Forward the request, then reset the connection instead of relaying the answer."""
        return self._add(Fault("drop_response", n, **when))

    def error(
        self,
        n: int | None = None,
        status: int = 403,
        code: str = "InvalidAccessKeyId",
        message: str = "The AWS Access Key Id you provided does not exist in our records.",
        **when,
    ) -> Fault:
        """Answer with an S3 XML error ``status``/``code`` for ``n`` matching requests."""
        return self._add(Fault("error", n, status=status, code=code, message=message, **when))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, action: str | None = None, match: Match = any_request) -> int:
        """Requests seen (with that action, matching ``match``)."""
        with self._lock:
            return sum(
                1
                for s in self.seen
                if (action is None or s.action == action) and match(s.method, s.path)
            )

    def stop(self) -> None:
        self._stopping.set()
        self.clear()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # wake handlers blocked on an idle keep-alive socket
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- used by the handler --------------------------------------------------------------

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """The first armed fault that applies to this request, consumed by one."""
        with self._lock:
            for fault in self._faults:
                if not fault.armed or not fault.match(method, path):
                    continue
                if fault.remaining is not None:
                    if fault.remaining <= 0:
                        continue
                    fault.remaining -= 1
                fault.injected += 1
                return fault
            return None

    def _forwarded(self, method: str, path: str) -> None:
        with self._lock:
            for fault in self._faults:
                if not fault.armed and fault.after is not None and fault.after(method, path):
                    fault.armed = True

    def _record(self, method: str, path: str, action: str, status: int | None) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, action, status))


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler never keeps the test process alive
    allow_reuse_address = True

    def __init__(self, address, handler, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


_request_ids = itertools.count(1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the test reads ``proxy.seen`` instead

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        body = self._read_body()
        if body is None:
            return
        fault = proxy._take_fault(method, path)
        if fault is None:
            self._forward(method, path, body)
        elif fault.kind in ("slow_down", "error"):
            self._send_error_xml(fault.status, fault.code, fault.message, method)
            proxy._record(method, path, fault.kind, fault.status)
        elif fault.kind == "reset":
            proxy._record(method, path, "reset", None)
            self._reset()
        elif fault.kind == "stall":
            proxy._record(method, path, "stall", None)
            proxy._stopping.wait(fault.seconds)
            self._reset()
        elif fault.kind == "drop_response":
            self._upstream(method, path, body)
            proxy._forwarded(method, path)
            proxy._record(method, path, "drop_response", None)
            self._reset()
        else:  # pragma: no cover - a typo in a test
            raise ValueError(f"unknown fault {fault.kind!r}")

    # -- pieces ---------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, whole: Content-Length or chunked; None if the client went away."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks, size = [], 0
                for _ in range(MAX_CHUNKS):
                    line = self.rfile.readline(1024)
                    if not line:
                        return None
                    length = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if length == 0:
                        for _ in range(1024):  # trailers, then the blank line
                            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                                break
                        return b"".join(chunks)
                    size += length
                    if size > MAX_BODY:
                        raise ValueError("request body too large")
                    chunks.append(self.rfile.read(length))
                    self.rfile.readline(8)
                raise ValueError("too many chunks")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("request body too large")
            return self.rfile.read(length) if length else b""
        except (OSError, ValueError):
            self.close_connection = True
            return None

    def _upstream(self, method: str, path: str, body: bytes) -> tuple[int, list, bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(
            self.server.proxy.upstream_host,
            self.server.proxy.upstream_port,
            timeout=UPSTREAM_TIMEOUT,
        )
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            connection.close()

    def _forward(self, method: str, path: str, body: bytes) -> None:
        proxy = self.server.proxy
        try:
            status, headers, data = self._upstream(method, path, body)
        except OSError:
            proxy._record(method, path, "upstream-failed", 502)
            self._send_error_xml(502, "BadGateway", "the proxy could not reach the server", method)
            return
        proxy._forwarded(method, path)
        proxy._record(method, path, "forwarded", status)
        self.send_response_only(status)
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower == "content-length":
                continue
            self.send_header(name, value)
        if method == "HEAD":  # the object's size, though no body follows
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)

    def _send_error_xml(self, status: int, code: str, message: str, method: str) -> None:
        request_id = f"FAULTPROXY{next(_request_ids):08d}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Date", self.date_time_string(time.time()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset: the client gets no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
