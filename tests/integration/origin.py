"""A real origin server for the integration tests, run as its own process.

``python origin.py`` binds 127.0.0.1 on a port the kernel picks, prints
``PORT\\n`` on stdout and serves HTTP/1.1 with keep-alive until it is killed.
Standard library only, so it shares nothing with the gateway under test.

Options:

- ``--port N``: bind port N instead (with SO_REUSEADDR), so that an origin
  killed by a test can come back on the same address.
- ``--name NAME``: add ``X-Served-By: NAME`` to every response it writes, so a
  client behind a balancer can tell which origin answered.
- ``--delay SECONDS``: wait that long before serving each request (control
  requests excepted), to play a slow server.

Endpoints (any method unless noted):

- ``/bytes/N``: N bytes of :func:`pattern` with Content-Length, written in
  pieces (``?piece=SIZE``, default 256 KiB) so that no body is held in memory.
- ``/chunked/N``: the same N bytes with ``Transfer-Encoding: chunked``.
- ``/dupcl/N``: the same N bytes, announced by two identical Content-Length
  fields (legal to receive, RFC 9112 §6.3; never to forward, RFC 9110 §8.6).
- ``/echo``: JSON of the request: method, target, headers (in order), the body's
  length and sha256, and which connection and which request on it this was.
  The body is hashed as it is read (Content-Length or chunked), never kept.
- ``/sleep/SECONDS``: waits, then answers ``slept``.
- ``/close``: closes the connection without answering.
- ``/close-after-body``: reads the whole request body, then closes the
  connection without answering (a server dying after taking a POST).
- A request whose Content-Length is not plain digits gets 400 and a close, as
  from a strict server.
- ``/_stats``: JSON ``{"connections": C, "requests": R}`` counting the TCP
  connections accepted and the requests served, excluding connections whose
  first request was a control request (``/_stats``, ``/_hits``, ``/_health``:
  the test's own connections and the gateway's health checks) and the control
  requests themselves.
- ``/_hits``: JSON ``{PATH: COUNT}`` of the requests served per path (query left
  out), with the same exclusions as ``/_stats``.
- ``/_health``: ``ok``, for active health checks, never counted.
- ``/cache/NAME``: a cacheable answer whose body says which request to this
  path it was and echoes the request's ``X-Token``: ``NAME n=COUNT
  token=TOKEN``, padded to ``?size=N`` bytes if given. ``?cc=VALUE`` sets
  Cache-Control, ``?delay=SECONDS`` waits first, ``?cookie=1`` adds a
  Set-Cookie. Every answer has ``ETag: "v1"`` and a Last-Modified; a request
  whose If-None-Match is ``"v1"`` gets 304 (with the same Cache-Control).

HEAD gets the head GET would get and no body.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

#: One period of the body pattern: every byte value, then again, 1 MiB in all.
_BLOCK = bytes(range(256)) * 4096


def pattern(size: int, piece: int = 256 * 1024):
    """The ``size`` body bytes of ``/bytes/N`` and ``/chunked/N``, as pieces."""
    view = memoryview(_BLOCK)
    offset = 0
    while offset < size:
        start = offset % len(_BLOCK)
        n = min(piece, size - offset, len(_BLOCK) - start)
        yield view[start : start + n]
        offset += n


def pattern_sha256(size: int) -> str:
    """The sha256 hex digest of the first ``size`` pattern bytes."""
    digest = hashlib.sha256()
    for part in pattern(size, 1024 * 1024):
        digest.update(part)
    return digest.hexdigest()


class _Stats:
    """Counters shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.control = 0  # connections that started with a control request
        self.requests = 0
        self.paths: collections.Counter[str] = collections.Counter()
        self.serial = itertools.count(1)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"connections": self.accepted - self.control, "requests": self.requests}


STATS = _Stats()

#: Requests to these paths are the tests' own (see ``/_stats``): never counted.
CONTROL_PATHS = frozenset({"/_stats", "/_hits", "/_health"})


class Settings:
    """The command-line options, read once in :func:`main`."""

    name = ""  # the X-Served-By value; empty sends none
    delay = 0.0  # seconds to wait before each counted request


class _InvalidLength(ValueError):
    """The request's Content-Length is not one field of plain digits (RFC 9110 §8.6)."""


class Handler(BaseHTTPRequestHandler):
    """One client connection; serves its requests one after another."""

    protocol_version = "HTTP/1.1"
    server_version = "origin/1"
    # A stalled test must not leave a thread blocked forever.
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with STATS.lock:
            STATS.accepted += 1
            self.conn_id = next(STATS.serial)
        self.served = 0

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the gateway's log is the one the tests read."""

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if Settings.name:
            self.send_header("X-Served-By", Settings.name)

    # -- dispatch --------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool = False) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path in CONTROL_PATHS:
            with STATS.lock:
                if self.served == 0:
                    STATS.control += 1
                hits = dict(STATS.paths)
            if url.path == "/_stats":
                body = json.dumps(STATS.snapshot()).encode()
            elif url.path == "/_hits":
                body = json.dumps(hits).encode()
            else:
                body = b"ok\n"
            content_type = "text/plain" if url.path == "/_health" else "application/json"
            self._send(200, body, content_type, head)
            return
        with STATS.lock:
            STATS.requests += 1
            STATS.paths[url.path] += 1
            count = STATS.paths[url.path]
        self.served += 1
        if Settings.delay:
            time.sleep(Settings.delay)
        query = parse_qs(url.query)
        try:
            if parts[0] == "bytes" and len(parts) == 2:
                self._bytes(int(parts[1]), int(query.get("piece", ["262144"])[0]), head)
            elif parts[0] == "chunked" and len(parts) == 2:
                self._chunked(int(parts[1]), int(query.get("piece", ["65536"])[0]), head)
            elif parts[0] == "dupcl" and len(parts) == 2:
                self._bytes(int(parts[1]), 262144, head, length_fields=2)
            elif parts[0] == "echo":
                self._echo(head)
            elif parts[0] == "cache" and len(parts) == 2:
                self._cache(parts[1], count, query, head)
            elif parts[0] == "sleep" and len(parts) == 2:
                self._discard_body()
                time.sleep(float(parts[1]))
                self._send(200, b"slept\n", "text/plain", head)
            elif parts[0] == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif parts[0] == "close-after-body":
                self._discard_body()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self._send(404, b"origin: no such endpoint\n", "text/plain", head)
        except _InvalidLength as exc:
            self.close_connection = True
            self._send(400, f"origin: invalid Content-Length {exc}\n".encode(), "text/plain", head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- endpoints ---------------------------------------------------------------

    def _bytes(self, size: int, piece: int, head: bool, length_fields: int = 1) -> None:
        self._discard_body()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        for _ in range(length_fields):
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            for part in pattern(size, piece):
                self.wfile.write(part)

    def _chunked(self, size: int, piece: int, head: bool) -> None:
        self._discard_body()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if head:
            return
        for part in pattern(size, piece):
            self.wfile.write(b"%x\r\n" % len(part))
            self.wfile.write(part)
            self.wfile.write(b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _cache(self, name: str, count: int, query: dict[str, list[str]], head: bool) -> None:
        self._discard_body()
        delay = float(query.get("delay", ["0"])[0])
        if delay:
            time.sleep(delay)
        control = query.get("cc", [""])[0]
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            if control:
                self.send_header("Cache-Control", control)
            self.end_headers()
            return
        body = f"{name} n={count} token={self.headers.get('X-Token', '')}\n".encode()
        size = int(query.get("size", ["0"])[0])
        if size:
            body = (body + b"." * size)[:size]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.send_header("Last-Modified", "Thu, 01 Jan 2015 00:00:00 GMT")
        if control:
            self.send_header("Cache-Control", control)
        if query.get("cookie"):
            self.send_header("Set-Cookie", f"session={count}")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _echo(self, head: bool) -> None:
        length, digest = self._read_body()
        answer = {
            "method": self.command,
            "target": self.path,
            "version": self.request_version,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body_length": length,
            "body_sha256": digest,
            "connection": self.conn_id,
            "request_on_connection": self.served,
        }
        self._send(200, json.dumps(answer).encode(), "application/json", head)

    # -- helpers -----------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        """Head and body in one write, so a killed origin never leaves half an answer."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n")
        if not head:
            self._headers_buffer.append(body)
        self.flush_headers()

    def _discard_body(self) -> None:
        self._read_body()

    def _read_body(self) -> tuple[int, str]:
        """Read the whole request body, hashing it; (length, sha256 hex)."""
        digest = hashlib.sha256()
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    break
                total += self._read_exact(size, digest)
                self.rfile.readline(16)  # the CRLF after the chunk data
        else:
            values = self.headers.get_all("Content-Length") or ["0"]
            if len(values) != 1 or not values[0].isdigit():
                raise _InvalidLength(", ".join(values))
            total = self._read_exact(int(values[0]), digest)
        return total, digest.hexdigest()

    def _read_exact(self, size: int, digest: "hashlib._Hash") -> int:
        left = size
        while left:
            data = self.rfile.read(min(left, 1024 * 1024))
            if not data:
                raise ConnectionResetError("client closed inside the body")
            digest.update(data)
            left -= len(data)
        return size


class Server(ThreadingHTTPServer):
    """Threaded, so that a slow request never holds up another connection."""

    daemon_threads = True
    request_queue_size = 128
    # A restarted origin binds its old port while old connections sit in TIME_WAIT.
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser(description="the integration tests' origin server")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: kernel picks)")
    parser.add_argument("--name", default="", help="X-Served-By value for every response")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    options = parser.parse_args()
    Settings.name = options.name
    Settings.delay = options.delay
    server = Server(("127.0.0.1", options.port), Handler)
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
