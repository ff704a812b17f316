"""The integration origin (``origin.py``) plus endpoints that record when it was held.

Run as ``python timing_origin.py``: it takes ``origin.py``'s options and
endpoints, and adds the ones the spooling tests need. Every recorded request
carries ``?id=NAME``; its record says when the origin started on it and when it
was done with it, on ``time.monotonic()``, which on Linux is the system-wide
``CLOCK_MONOTONIC``: the test process reads the same clock.

Options: ``--port``, ``--name`` and ``--delay`` as for ``origin.py``, and

- ``--sndbuf BYTES``: SO_SNDBUF on every accepted connection. A backend's send
  buffer lets it finish early by what fits in it; loopback autotuning (up to
  ``net.ipv4.tcp_wmem``'s 4 MiB) would swallow a whole test body and hide
  whether the gateway holds the backend. A small buffer makes "done" mean "the
  gateway took the bytes".

Extra endpoints:

- ``/timed/N?id=NAME``: N pattern bytes (as ``/bytes/N``) with Content-Length,
  written with ``sendall`` in pieces (``&piece=SIZE``, default 64 KiB).
  ``&chunked=1`` sends them chunked instead; ``&pace=SECONDS`` sleeps that
  long after each piece (a slow backend); ``&cut=BYTES`` resets the
  connection (SO_LINGER 0) once that many body bytes are sent (a backend
  dying mid-body). The record's ``start`` is when
  the request head had been read, ``end`` when the ``sendall`` of the last byte
  returned (the last byte has left the origin), ``sent`` the body bytes handed
  to the kernel so far, and ``ok`` false if the peer went away first (``end``
  is then when it noticed).
- ``/events?id=NAME&n=COUNT&interval=SECONDS``: a chunked stream of COUNT
  events, one every SECONDS, each ``data: SEQ SENT_AT\\n\\n`` where SENT_AT is
  the origin's monotonic clock just before the write; ``&type=sse`` (default)
  sends ``Content-Type: text/event-stream``, ``&type=accel`` sends
  ``text/plain`` with ``X-Accel-Buffering: no``, ``&type=plain`` plain
  ``text/plain`` (which may be spooled). ``&pad=BYTES`` first sends that many
  bytes of SSE comments (``:``, spaces, a newline; 64 KiB a chunk), to fill a
  stalled client's buffers. Recorded like ``/timed``.
- ``/upload?id=NAME``: reads the request body (Content-Length or chunked),
  hashing it, and answers its length and sha256 as JSON. The record's
  ``start`` is when the head had been read, ``end`` when the last body byte
  had, plus ``length`` and ``sha256``; the answer also has the request's
  ``headers`` (in order, as ``[name, value]`` pairs).
- ``/_timings``: JSON ``{"now": NOW, "requests": {NAME: RECORD}}``; a control
  request, never counted in ``/_stats``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import origin
from origin import Handler, pattern


class _Timings:
    """Per-request records, shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, dict[str, object]] = {}

    def begin(self, name: str, **fields: object) -> dict[str, object]:
        record: dict[str, object] = {"start": time.monotonic(), "end": None, "ok": None}
        record.update(fields)
        with self.lock:
            self.requests[name] = record
        return record

    def end(self, record: dict[str, object], ok: bool, **fields: object) -> None:
        with self.lock:
            record.update(fields)
            record["end"] = time.monotonic()
            record["ok"] = ok

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "now": time.monotonic(),
                "requests": {name: dict(record) for name, record in self.requests.items()},
            }


TIMINGS = _Timings()


class Settings:
    """This script's own option, read once in :func:`main`."""

    sndbuf = 0  # SO_SNDBUF for accepted connections; 0 leaves the kernel's


class TimingHandler(Handler):
    """``origin.Handler`` with the recorded endpoints."""

    def setup(self) -> None:
        super().setup()
        if Settings.sndbuf:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, Settings.sndbuf)

    def _dispatch(self, head: bool = False) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        try:
            if url.path == "/_timings":
                body = json.dumps(TIMINGS.snapshot()).encode()
                self._send(200, body, "application/json", head)
            elif parts[0] == "timed" and len(parts) == 2:
                self._timed(int(parts[1]), query)
            elif url.path == "/events":
                self._events(query)
            elif url.path == "/upload":
                self._upload(query, head)
            else:
                super()._dispatch(head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _timed(self, size: int, query: dict[str, str]) -> None:
        record = TIMINGS.begin(query.get("id", self.path), sent=0)
        chunked = query.get("chunked") == "1"
        piece = int(query.get("piece", "65536"))
        pace = float(query.get("pace", "0"))
        cut = int(query.get("cut", "-1"))
        self._discard_body()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        sock = self.connection
        sent = 0
        try:
            for part in pattern(size, piece):
                if 0 <= cut <= sent:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    TIMINGS.end(record, False, sent=sent)
                    return
                if chunked:
                    sock.sendall(b"%x\r\n" % len(part))
                sock.sendall(part)
                if chunked:
                    sock.sendall(b"\r\n")
                sent += len(part)
                record["sent"] = sent
                if pace:
                    time.sleep(pace)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            TIMINGS.end(record, False, sent=sent)
            raise ConnectionResetError from None
        TIMINGS.end(record, True, sent=sent)

    def _events(self, query: dict[str, str]) -> None:
        record = TIMINGS.begin(query.get("id", self.path), sent=0)
        count = int(query.get("n", "5"))
        interval = float(query.get("interval", "0.2"))
        pad = int(query.get("pad", "0"))
        self._discard_body()
        self.send_response(200)
        kind = query.get("type", "sse")
        if kind == "accel":
            self.send_header("Content-Type", "text/plain")
            self.send_header("X-Accel-Buffering", "no")
        elif kind == "plain":
            self.send_header("Content-Type", "text/plain")
        else:
            self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sock = self.connection
        sent = 0

        def chunk(data: bytes) -> None:
            nonlocal sent
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            sent += len(data)
            record["sent"] = sent

        try:
            for at in range(0, pad, 64 * 1024):
                size = min(64 * 1024, pad - at)
                chunk(b":" + b" " * max(0, size - 2) + b"\n")
            next_at = time.monotonic()
            for seq in range(count):
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                chunk(b"data: %d %.6f\n\n" % (seq, time.monotonic()))
                next_at += interval
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            TIMINGS.end(record, False, sent=sent)
            raise ConnectionResetError from None
        TIMINGS.end(record, True, sent=sent)

    def _upload(self, query: dict[str, str], head: bool) -> None:
        record = TIMINGS.begin(query.get("id", self.path))
        length, digest = self._read_body()
        TIMINGS.end(record, True, length=length, sha256=digest)
        answer = {
            "body_length": length,
            "body_sha256": digest,
            "headers": [[name, value] for name, value in self.headers.items()],
        }
        body = json.dumps(answer).encode()
        self._send(200, body, "application/json", head)


def main() -> None:
    parser = argparse.ArgumentParser(description="origin.py with recorded timings")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: kernel picks)")
    parser.add_argument("--name", default="", help="X-Served-By value for every response")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF per connection")
    options = parser.parse_args()
    origin.Settings.name = options.name
    origin.Settings.delay = options.delay
    Settings.sndbuf = options.sndbuf
    server = origin.Server(("127.0.0.1", options.port), TimingHandler)
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
