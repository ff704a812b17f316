"""Malformed and oversized requests over raw sockets: right status, closed, still serving.

Each test sends one bad request class in one write, expects the gateway's
answer and the connection closed by the gateway, a ``rejected request`` line in
its log, no traceback, and a normal request served afterwards.  Limits are set
small in the configuration, so every limit is tried on both sides.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .support import (
    RawResult,
    raw_connect,
    raw_exchange,
    read_response,
    read_until_close,
    split_response,
    start_pair,
)

MAX_REQUEST_LINE = 1024
MAX_HEADER_SIZE = 4096
MAX_HEADER_COUNT = 20
MAX_BODY_SIZE = 1024
TIMEOUT_HEADER = 1.0

LIMITS = {
    "max_request_line": MAX_REQUEST_LINE,
    "max_header_size": MAX_HEADER_SIZE,
    "max_header_count": MAX_HEADER_COUNT,
    "max_body_size": MAX_BODY_SIZE,
    "timeout_header": f"{int(TIMEOUT_HEADER * 1000)}ms",
}

REJECTED = r"rejected request from 127\.0\.0\.1: {status} "


def request(*fields: bytes, line: bytes = b"GET /echo HTTP/1.1", body: bytes = b"") -> bytes:
    """A request head with ``Host`` first, then ``fields`` as given, then ``body``."""
    return line + b"\r\nHost: t\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def request_line_of(length: int) -> bytes:
    """``GET /echo?aaa... HTTP/1.1`` exactly ``length`` bytes long."""
    prefix, suffix = b"GET /echo?", b" HTTP/1.1"
    return prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix


def head_of(size: int, *fields: bytes) -> bytes:
    """A GET head (request line through the final CRLF CRLF) of exactly ``size`` bytes.

    That whole span is what ``max_header_size`` bounds (gateway.parser
    ``HeadLimits.max_size``).  ``fields`` come after Host; an ``X-Pad`` field at
    the end makes up the size.
    """
    base = request(*fields, b"X-Pad: ")
    return request(*fields, b"X-Pad: " + b"p" * (size - len(base)))


class HostileRequestTests(SynchronousTestCase):
    """One malformed-request class per test, against a gateway with small limits."""

    def setUp(self) -> None:
        self.origin, self.gateway = start_pair(self, listener=LIMITS)

    # -- helpers -------------------------------------------------------------------

    def assert_rejected(self, data: bytes, status: int) -> RawResult:
        """``data`` gets ``status``, the connection closes, it is logged, and we still serve."""
        before = len(re.findall(REJECTED.format(status=status), self.gateway.log()))
        result = raw_exchange(self.gateway.port, data)
        self.assertEqual(result.status, status, result.data[:300])
        self.assertTrue(result.closed, "the gateway kept the connection open")
        head, _ = split_response(result.data)
        self.assertIn(b"\r\nConnection: close", head)
        log = self.gateway.wait_for_log(REJECTED.format(status=status), count=before + 1)
        self.assertNotIn("Traceback", log)
        self.gateway.assert_serving()
        return result

    def assert_accepted(self, data: bytes) -> dict[str, Any]:
        """``data`` is forwarded: 200 from the origin's echo; what the origin saw."""
        with raw_connect(self.gateway.port) as sock:
            sock.sendall(data)
            response = read_response(sock)
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:300])
        _, body = split_response(response)
        return json.loads(body)

    # -- framing ---------------------------------------------------------------------

    def test_content_length_with_transfer_encoding(self) -> None:
        """Content-Length and Transfer-Encoding together: 400 (smuggling vector)."""
        fields = (b"Content-Length: 5", b"Transfer-Encoding: chunked")
        self.assert_rejected(request(*fields, line=b"POST /echo HTTP/1.1"), 400)

    def test_differing_duplicate_content_length(self) -> None:
        """Two Content-Length fields that disagree: 400."""
        self.assert_rejected(
            request(b"Content-Length: 5", b"Content-Length: 6", line=b"POST /echo HTTP/1.1"), 400
        )

    def test_transfer_encoding_not_final_chunked(self) -> None:
        """Transfer-Encoding whose final coding is not chunked: 400."""
        self.assert_rejected(
            request(b"Transfer-Encoding: chunked, gzip", line=b"POST /echo HTTP/1.1"), 400
        )

    def test_invalid_chunk_size(self) -> None:
        """A chunk-size line that is not hex: 400."""
        self.assert_rejected(
            request(
                b"Transfer-Encoding: chunked",
                line=b"POST /echo HTTP/1.1",
                body=b"zz\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        )

    # -- field syntax ------------------------------------------------------------------

    def test_obs_fold(self) -> None:
        """A field value continued on an indented line (obs-fold): 400."""
        self.assert_rejected(request(b"X-Folded: a", b" b"), 400)

    def test_whitespace_before_colon(self) -> None:
        """Whitespace between a field name and its colon: 400."""
        self.assert_rejected(request(b"X-Space : a"), 400)

    def test_invalid_byte_in_field_name(self) -> None:
        """A NUL inside a field name: 400."""
        self.assert_rejected(request(b"X-Bad\x00Name: a"), 400)

    def test_invalid_byte_in_field_value(self) -> None:
        """A NUL inside a field value: 400."""
        self.assert_rejected(request(b"X-Value: a\x00b"), 400)

    def test_bare_cr(self) -> None:
        """A bare CR inside a field line: 400."""
        self.assert_rejected(request(b"X-Cr: a\rb"), 400)

    def test_bad_request_line(self) -> None:
        """A request line that is not ``method SP target SP HTTP/1.x``: 400."""
        self.assert_rejected(b"NOT A REQUEST LINE AT ALL\r\nHost: t\r\n\r\n", 400)

    # -- limits, both sides --------------------------------------------------------------

    def test_request_line_over_limit(self) -> None:
        """A request line one byte over max_request_line: 414."""
        self.assert_rejected(request(line=request_line_of(MAX_REQUEST_LINE + 1)), 414)

    def test_request_line_at_limit(self) -> None:
        """A request line exactly max_request_line long is forwarded."""
        line = request_line_of(MAX_REQUEST_LINE)
        seen = self.assert_accepted(request(line=line))
        self.assertEqual(seen["target"].encode(), line.split(b" ")[1])

    def test_head_over_max_header_size(self) -> None:
        """A request head one byte over max_header_size: 431."""
        self.assert_rejected(head_of(MAX_HEADER_SIZE + 1), 431)

    def test_head_at_max_header_size(self) -> None:
        """A request head of exactly max_header_size bytes is forwarded."""
        data = head_of(MAX_HEADER_SIZE, b"X-Marker: at-limit")
        self.assertEqual(len(data), MAX_HEADER_SIZE)
        seen = self.assert_accepted(data)
        self.assertIn(["X-Marker", "at-limit"], seen["headers"])

    def test_header_count_over_limit(self) -> None:
        """One field more than max_header_count: 431."""
        fields = [b"X-N%d: v" % n for n in range(MAX_HEADER_COUNT)]  # + Host = limit + 1
        self.assert_rejected(request(*fields), 431)

    def test_header_count_at_limit(self) -> None:
        """Exactly max_header_count fields (Host included) are forwarded."""
        fields = [b"X-N%d: v" % n for n in range(MAX_HEADER_COUNT - 1)]
        seen = self.assert_accepted(request(*fields))
        names = [name for name, _ in seen["headers"]]
        self.assertIn(f"X-N{MAX_HEADER_COUNT - 2}", names)

    def test_content_length_over_max_body_size(self) -> None:
        """A declared body one byte over max_body_size: 413 before any of it is read."""
        self.assert_rejected(
            request(b"Content-Length: %d" % (MAX_BODY_SIZE + 1), line=b"POST /echo HTTP/1.1"),
            413,
        )

    def test_chunked_body_over_max_body_size(self) -> None:
        """A chunked body that grows past max_body_size: 413."""
        size = MAX_BODY_SIZE + 1
        body = b"%x\r\n" % size + b"b" * size + b"\r\n0\r\n\r\n"
        self.assert_rejected(
            request(b"Transfer-Encoding: chunked", line=b"POST /echo HTTP/1.1", body=body), 413
        )

    def test_body_at_max_body_size(self) -> None:
        """A body of exactly max_body_size bytes is forwarded whole."""
        body = b"b" * MAX_BODY_SIZE
        seen = self.assert_accepted(
            request(
                b"Content-Length: %d" % len(body),
                line=b"POST /echo HTTP/1.1",
                body=body,
            )
        )
        self.assertEqual(seen["body_length"], MAX_BODY_SIZE)

    # -- time ------------------------------------------------------------------------------

    def test_slow_head_times_out(self) -> None:
        """A head still unfinished after timeout_header: 408, then the connection closes."""
        with raw_connect(self.gateway.port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
            result = read_until_close(sock, timeout=TIMEOUT_HEADER + 5)
            elapsed = time.monotonic() - started
        self.assertEqual(result.status, 408, result.data[:300])
        self.assertTrue(result.closed)
        self.assertGreaterEqual(elapsed, TIMEOUT_HEADER * 0.9)
        log = self.gateway.wait_for_log(REJECTED.format(status=408))
        self.assertNotIn("Traceback", log)
        self.gateway.assert_serving()


class RejectionLogTests(SynchronousTestCase):
    """Operators can see every rejection in the log."""

    def test_one_log_line_per_rejection(self) -> None:
        """Ten rejections of different kinds leave ten ``rejected request`` lines, no traceback."""
        origin, gateway = start_pair(self, listener=LIMITS)
        bad = [
            (request(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
            (request(b"Content-Length: 5", b"Content-Length: 6"), 400),
            (request(b"X-Folded: a", b" b"), 400),
            (request(b"X-Space : a"), 400),
            (request(b"X-Cr: a\rb"), 400),
            (b"NOT A REQUEST LINE AT ALL\r\nHost: t\r\n\r\n", 400),
            (request(line=request_line_of(MAX_REQUEST_LINE + 1)), 414),
            (head_of(MAX_HEADER_SIZE * 2), 431),
            (request(*[b"X-N%d: v" % n for n in range(MAX_HEADER_COUNT * 2)]), 431),
            (request(b"Content-Length: %d" % (MAX_BODY_SIZE * 2), line=b"POST / HTTP/1.1"), 413),
        ]
        for data, status in bad:
            self.assertEqual(raw_exchange(gateway.port, data).status, status, data[:60])
        log = gateway.wait_for_log(r"rejected request from ", count=len(bad))
        self.assertEqual(len(re.findall(r"rejected request from ", log)), len(bad))
        for status in (400, 413, 414, 431):
            expected = sum(1 for _, s in bad if s == status)
            self.assertEqual(len(re.findall(REJECTED.format(status=status), log)), expected)
        self.assertNotIn("Traceback", log)
        gateway.assert_serving()
