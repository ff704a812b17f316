"""Tests for gateway.pages: the gateway's own error responses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.pages import REASONS, error_response


def split(response: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(status line, header list, body) of a serialized response."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    return lines[0], headers, body  # type: ignore[return-value]


class ErrorResponseTests(SynchronousTestCase):
    def test_status_line(self) -> None:
        """RFC 9112 §4: HTTP/1.1, the code and its RFC 9110 §15 reason phrase."""
        for status in (400, 403, 404, 405, 408, 413, 414, 417, 431, 500, 501, 502, 503, 504, 505):
            line, _, _ = split(error_response(status, server=b"", close=False))
            self.assertEqual(line, b"HTTP/1.1 %d %s" % (status, REASONS[status]))

    def test_reasons(self) -> None:
        """Reason phrases follow RFC 9110 §15 wording."""
        self.assertEqual(REASONS[413], b"Content Too Large")
        self.assertEqual(REASONS[502], b"Bad Gateway")
        self.assertEqual(REASONS[431], b"Request Header Fields Too Large")

    def test_headers(self) -> None:
        """Content-Type, Content-Length, Cache-Control: no-store and Server, in that order."""
        _, headers, body = split(error_response(502, server=b"gateway", close=False))
        self.assertEqual(
            headers,
            [
                (b"Content-Type", b"text/html; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Cache-Control", b"no-store"),
                (b"Server", b"gateway"),
            ],
        )

    def test_no_server(self) -> None:
        """server=b'' leaves Server out."""
        _, headers, _ = split(error_response(404, server=b"", close=False))
        self.assertNotIn(b"Server", [name for name, _ in headers])

    def test_close(self) -> None:
        """close=True adds Connection: close."""
        _, headers, _ = split(error_response(400, server=b"", close=True))
        self.assertIn((b"Connection", b"close"), headers)

    def test_keep_alive(self) -> None:
        """close=False sends no Connection field (HTTP/1.1 persists by default)."""
        _, headers, _ = split(error_response(404, server=b"", close=False))
        self.assertNotIn(b"Connection", [name for name, _ in headers])

    def test_body_names_status(self) -> None:
        """The body is a small HTML page naming the status and reason."""
        _, _, body = split(error_response(503, server=b"", close=False))
        self.assertIn(b"<title>503 Service Unavailable</title>", body)
        self.assertIn(b"<h1>503 Service Unavailable</h1>", body)
        self.assertLess(len(body), 512)

    def test_head_only(self) -> None:
        """RFC 9110 §9.3.2: a HEAD answer has no body but the GET answer's Content-Length."""
        full = error_response(404, server=b"g", close=False)
        head = error_response(404, server=b"g", close=False, head_only=True)
        self.assertTrue(full.startswith(head))
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        self.assertEqual(split(head)[1], split(full)[1])

    def test_extra_headers(self) -> None:
        """extra_headers come after ours, in order."""
        _, headers, _ = split(
            error_response(405, server=b"", close=True, extra_headers=[(b"Allow", b"GET, HEAD"), (b"Date", b"x")])
        )
        self.assertEqual(headers[-2:], [(b"Allow", b"GET, HEAD"), (b"Date", b"x")])

    def test_same_bytes_every_time(self) -> None:
        """The rendering is cached and stable: equal arguments, equal bytes."""
        self.assertEqual(error_response(500, server=b"s", close=True), error_response(500, server=b"s", close=True))

    def test_unknown_status(self) -> None:
        """A code without a listed reason gets its class's generic phrase."""
        line, _, body = split(error_response(599, server=b"", close=False))
        self.assertEqual(line, b"HTTP/1.1 599 Server Error")
        self.assertIn(b"599 Server Error", body)

    def test_not_an_error(self) -> None:
        """Statuses outside 400-599 are refused."""
        self.assertRaises(ValueError, error_response, 200, server=b"", close=False)
        self.assertRaises(ValueError, error_response, 600, server=b"", close=False)
