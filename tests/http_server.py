"""A loopback HTTP server for download tests: Range requests, dropped connections, 404, redirects.

Use the ``http_server`` fixture (register with ``pytest_plugins = ["tests.http_server"]`` in a
conftest, or import the fixture into a test module)::

    url = http_server.add("/a.bin", payload, drop_after=1000)   # first response dies after 1000 bytes
    http_server.requests_for("/a.bin")                           # [(path, range header or None), ...]
    http_server.dead_url("/a.bin")                               # a URL whose port refuses connections

Only ever binds 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Resource:
    """What the server answers for one path."""

    data: bytes = b""
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 1  # ... for this many responses, then answer normally
    ignore_range: bool = False  # answer 200 with the whole body even when a Range is asked
    status: int = 200  # e.g. 500 to simulate a broken server
    redirect_to: str | None = None  # answer 302 to this path


@dataclass
class LoggedRequest:
    """One request the server received."""

    path: str
    range: str | None
    status: int = 0


@dataclass
class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 serving in-memory resources."""

    resources: dict[str, Resource] = field(default_factory=dict)
    requests: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes = b"", **behaviour: object) -> str:
        """Serve ``data`` at ``path`` with the given Resource behaviour; return its URL."""
        with self._lock:
            self.resources[path] = Resource(data=data, **behaviour)  # type: ignore[arg-type]
        return self.url(path)

    def requests_for(self, path: str) -> list[LoggedRequest]:
        """The requests received for ``path``, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    @staticmethod
    def dead_url(path: str) -> str:
        """A URL on a 127.0.0.1 port nobody listens on (connection refused)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"


def _make_handler(state: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (quiet)
            return

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            range_header = self.headers.get("Range")
            logged = LoggedRequest(path, range_header)
            with state._lock:
                state.requests.append(logged)
                res = state.resources.get(path)
                drop = res is not None and res.drop_after is not None and res.drops > 0
                if drop and res is not None:
                    res.drops -= 1
            if res is None:
                logged.status = 404
                self.send_error(404, "Not Found")
                return
            if res.redirect_to is not None:
                logged.status = 302
                self.send_response(302)
                self.send_header("Location", res.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if res.status != 200:
                logged.status = res.status
                self.send_error(res.status)
                return
            data, total = res.data, len(res.data)
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match is None or res.ignore_range:
                body = data
                self.send_response(200)
                logged.status = 200
            else:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else total - 1
                if start >= total:
                    logged.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = min(end, total - 1)
                body = data[start : end + 1]
                self.send_response(206)
                logged.status = 206
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if head:
                return
            if drop and res.drop_after is not None:
                self.wfile.write(body[: res.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A started loopback HTTP server; stopped after the test."""
    server = LoopbackServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
