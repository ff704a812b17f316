"""An origin that records how long each response held it (``bash bench/run --slow``).

Usage: ``python bench/slow_origin.py PORT [--size BYTES] [--sndbuf BYTES]``.
A thread per connection, HTTP/1.1 keep-alive, like a synchronous application
server whose worker is busy until its response has left it.

- ``GET /body?id=NAME``: ``--size`` bytes (default 1 MiB) with Content-Length,
  written with ``sendall`` in 64 KiB pieces. The record of ``NAME`` holds
  ``start`` (the request head had been read), ``end`` (the ``sendall`` of the
  last byte returned, or the send failed), ``sent`` (body bytes the kernel
  took) and ``ok`` (all of them). Times are ``time.monotonic()`` seconds.
- ``GET /_timings``: the records as JSON, ``{"NAME": {...}}``; with
  ``?reset=1`` they are cleared after being read. Not recorded itself.

``--sndbuf`` sets SO_SNDBUF on every accepted connection (the kernel doubles
it). Without it, loopback autotuning lets the send buffer grow to
``net.ipv4.tcp_wmem``'s maximum (4 MiB by default), which swallows a whole
1 MiB body: the origin would be "done" at once whatever the proxy does, and
the measurement would show the kernel, not the proxy. Bounded: the process
serves until it gets SIGTERM; every connection has a 60 s idle timeout.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import threading
import time
from urllib.parse import parse_qs, urlsplit

PIECE = 64 * 1024
IDLE_TIMEOUT_S = 60.0


class Records:
    """Every recorded response by id, shared by the connection threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, object]] = {}

    def put(self, name: str, record: dict[str, object]) -> None:
        with self._lock:
            self._records[name] = record

    def take(self, reset: bool) -> dict[str, dict[str, object]]:
        with self._lock:
            found = dict(self._records)
            if reset:
                self._records.clear()
        return found


class Handler(socketserver.StreamRequestHandler):
    """One client connection: requests one after another until it closes."""

    server: Origin

    def setup(self) -> None:
        self.request.settimeout(IDLE_TIMEOUT_S)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.sndbuf:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.sndbuf)
        super().setup()

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except OSError:
            pass

    def _one(self) -> bool:
        """Read one request head and answer it; whether the connection stays open."""
        line = self.rfile.readline(8192)
        if not line:
            return False
        started = time.monotonic()
        method, target, version = line.decode("latin-1").split()
        close = version == "HTTP/1.0"
        while True:
            field = self.rfile.readline(8192)
            if field in (b"\r\n", b"\n", b""):
                break
            name, _, value = field.decode("latin-1").partition(":")
            if name.strip().lower() == "connection" and "close" in value.lower():
                close = True
        url = urlsplit(target)
        query = parse_qs(url.query)
        if url.path == "/_timings":
            body = json.dumps(self.server.records.take("reset" in query)).encode()
            self._head(200, len(body), close, "application/json")
            self.request.sendall(body)
        elif url.path == "/body" and method in ("GET", "HEAD"):
            self._head(200, len(self.server.body), close, "application/octet-stream")
            if method == "GET":
                self._body(query.get("id", [""])[0], started)
        else:
            self._head(404, 0, close, "text/plain")
        return not close

    def _head(self, status: int, length: int, close: bool, content_type: str) -> None:
        reason = {200: "OK", 404: "Not Found"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {length}\r\n"
            f"Content-Type: {content_type}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.request.sendall(head.encode("latin-1"))

    def _body(self, name: str, started: float) -> None:
        body = memoryview(self.server.body)
        sent, ok = 0, False
        try:
            for offset in range(0, len(body), PIECE):
                piece = body[offset:offset + PIECE]
                self.request.sendall(piece)
                sent += len(piece)
            ok = True
        finally:
            if name:
                self.server.records.put(
                    name, {"start": started, "end": time.monotonic(), "sent": sent, "ok": ok}
                )


class Origin(socketserver.ThreadingTCPServer):
    """The listening socket on 127.0.0.1, its body and its records."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int, size: int, sndbuf: int) -> None:
        self.body = bytes(ord("a") + i % 26 for i in range(size))
        self.sndbuf = sndbuf
        self.records = Records()
        super().__init__(("127.0.0.1", port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--sndbuf", type=int, default=0)
    args = parser.parse_args()
    with Origin(args.port, args.size, args.sndbuf) as origin:
        origin.serve_forever()


if __name__ == "__main__":
    main()
