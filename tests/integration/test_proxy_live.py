"""Proxying over real sockets: keep-alive reuse, chunked bodies, 100-continue, pipelining."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from .support import (
    IO_TIMEOUT,
    Gateway,
    Origin,
    new_tempdir,
    pattern_sha256,
    raw_connect,
    read_response,
    read_until_close,
    split_response,
    start_pair,
)

CURL_TIMEOUT = 30


class QuickModeTests(SynchronousTestCase):
    """``twistd -n gateway --listen ... --upstream ...`` needs no file."""

    def test_quick_mode_forwards(self) -> None:
        """A request through a quick-mode gateway reaches the origin and comes back."""
        origin = Origin(self).start()
        gateway = Gateway(
            self, args=["--listen", "tcp:0:interface=127.0.0.1", "--upstream", origin.url]
        ).start()
        seen = gateway.echo("/echo?quick=1")
        self.assertEqual(seen["target"], "/echo?quick=1")
        self.assertEqual(origin.stats()["requests"], 1)

    def test_quick_mode_ssl_listen(self) -> None:
        """``--listen ssl:...`` terminates TLS; curl (which offers ALPN) gets through."""
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        directory = new_tempdir(self)
        key_path = os.path.join(directory, "key.pem")
        cert_path = os.path.join(directory, "cert.pem")
        ca_path = os.path.join(directory, "ca.pem")
        cert.private_key_pem.write_to_path(key_path)
        cert.cert_chain_pems[0].write_to_path(cert_path)
        ca.cert_pem.write_to_path(ca_path)
        origin = Origin(self).start()
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        gateway = Gateway(self, args=["--listen", listen, "--upstream", origin.url]).start()
        result = subprocess.run(
            ["curl", "-s", "--cacert", ca_path, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
             f"https://localhost:{gateway.port}/echo"],
            capture_output=True, timeout=CURL_TIMEOUT, check=False,
        )
        self.assertEqual(result.stdout, b"200 1.1", result.stderr)
        self.assertEqual(origin.stats()["requests"], 1)


class KeepAliveTests(SynchronousTestCase):
    """Upstream connections are pooled and reused, proven by the origin's accept count."""

    def setUp(self) -> None:
        self.origin, self.gateway = start_pair(self)

    def test_one_client_connection_one_upstream_connection(self) -> None:
        """50 sequential requests on one client keep-alive connection use 1 upstream connection."""
        conn = self.gateway.connection()
        sockets = set()
        for n in range(50):
            conn.request("GET", f"/echo?n={n}")
            response = conn.getresponse()
            seen = json.loads(response.read())
            self.assertEqual(seen["target"], f"/echo?n={n}")
            self.assertIsNotNone(conn.sock, "the gateway closed the client connection")
            sockets.add(conn.sock.getsockname())
        self.assertEqual(len(sockets), 1, "the client connection was not kept alive")
        self.assertEqual(self.origin.stats(), {"connections": 1, "requests": 50})

    def test_several_client_connections_one_upstream_connection(self) -> None:
        """50 requests taken in turn over 5 client connections use 1 upstream connection."""
        conns = [self.gateway.connection() for _ in range(5)]
        for n in range(50):
            conn = conns[n % len(conns)]
            conn.request("GET", f"/echo?n={n}")
            self.assertEqual(json.loads(conn.getresponse().read())["target"], f"/echo?n={n}")
        self.assertEqual(self.origin.stats(), {"connections": 1, "requests": 50})


class BodyTests(SynchronousTestCase):
    """Bodies cross the gateway intact both ways, framed as the peer needs."""

    def setUp(self) -> None:
        self.origin, self.gateway = start_pair(self)

    def test_chunked_upload_intact(self) -> None:
        """A 5 MB chunked upload (http.client) reaches the origin with the same sha256."""
        body = os.urandom(5 * 1024 * 1024)
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        conn = self.gateway.connection(timeout=IO_TIMEOUT * 3)
        conn.request("POST", "/echo", body=iter(pieces), encode_chunked=True)
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        seen = json.loads(response.read())
        self.assertEqual(seen["body_length"], len(body))
        self.assertEqual(seen["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_large_chunked_response_intact(self) -> None:
        """A 20 MB chunked response arrives chunked, complete and with the right sha256."""
        size = 20 * 1024 * 1024
        conn = self.gateway.connection(timeout=IO_TIMEOUT * 3)
        conn.request("GET", f"/chunked/{size}")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Transfer-Encoding"), "chunked")
        digest = hashlib.sha256()
        received = 0
        while piece := response.read(1024 * 1024):
            digest.update(piece)
            received += len(piece)
        self.assertEqual(received, size)
        self.assertEqual(digest.hexdigest(), pattern_sha256(size))

    def test_expect_continue_upload_with_curl(self) -> None:
        """curl with ``Expect: 100-continue`` gets 100 Continue, then its body arrives intact."""
        body = os.urandom(2 * 1024 * 1024)
        path = os.path.join(new_tempdir(self), "upload.bin")
        with open(path, "wb") as file:
            file.write(body)
        result = subprocess.run(
            [
                "curl", "-sS", "-v", "--max-time", "20",
                "-H", "Expect: 100-continue",
                "--expect100-timeout", "10",
                "--data-binary", f"@{path}",
                f"http://127.0.0.1:{self.gateway.port}/echo",
            ],
            capture_output=True,
            timeout=CURL_TIMEOUT,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertIn(b"< HTTP/1.1 100 Continue", result.stderr)
        seen = json.loads(result.stdout)
        self.assertEqual(seen["body_length"], len(body))
        self.assertEqual(seen["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_head_has_no_body(self) -> None:
        """HEAD gets GET's head (Content-Length: 1000) and no body; the next response follows."""
        with raw_connect(self.gateway.port) as sock:
            sock.sendall(
                b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /echo?after-head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            result = read_until_close(sock)
        self.assertTrue(result.closed)
        head, rest = split_response(result.data)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"\r\nContent-Length: 1000", head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 "), rest[:100])
        _, body = split_response(rest)
        self.assertEqual(json.loads(body)["target"], "/echo?after-head")


class ContentLengthTests(SynchronousTestCase):
    """A repeated identical Content-Length is accepted, but forwarded as one valid field.

    RFC 9112 §6.3 lets a recipient accept ``Content-Length: 3, 3`` (or the field
    twice) as 3; RFC 9110 §8.6 says "a sender MUST NOT forward a message with a
    Content-Length header field value that does not match the ABNF above", the
    exception being to "replace that invalid field value with a single instance
    of the decimal value".  Passing the list on lets the next hop frame the body
    differently: the request-smuggling pattern.
    """

    def setUp(self) -> None:
        self.origin, self.gateway = start_pair(self)

    def test_request_repeated_content_length_forwarded_once(self) -> None:
        """Request with ``Content-Length: 3`` twice: the origin sees one ``Content-Length: 3``."""
        with raw_connect(self.gateway.port) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                b"Content-Length: 3\r\n\r\nabc"
            )
            response = read_response(sock)
        head, body = split_response(response)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), response[:300])
        seen = json.loads(body)
        lengths = [value for name, value in seen["headers"] if name.lower() == "content-length"]
        self.assertEqual(lengths, ["3"])
        self.assertEqual(seen["body_length"], 3)

    def test_response_repeated_content_length_forwarded_once(self) -> None:
        """Response with ``Content-Length: 1000`` twice: the client sees it once, and 1000 bytes."""
        status, headers, body = self.gateway.get("/dupcl/1000")
        self.assertEqual(status, 200)
        self.assertEqual(len(body), 1000)
        conn = self.gateway.connection()
        conn.request("GET", "/dupcl/1000")
        response = conn.getresponse()
        response.read()
        self.assertEqual(response.headers.get_all("Content-Length"), ["1000"])


class PipeliningTests(SynchronousTestCase):
    """Requests written back to back before any answer are answered in order."""

    def test_pipelined_requests_answered_in_order(self) -> None:
        """Five requests in one sendall get five answers, in the order sent."""
        origin, gateway = start_pair(self)
        count = 5
        requests = b"".join(
            b"GET /echo?n=%d HTTP/1.1\r\nHost: t\r\n%s\r\n"
            % (n, b"Connection: close\r\n" if n == count - 1 else b"")
            for n in range(count)
        )
        with raw_connect(gateway.port) as sock:
            sock.sendall(requests)
            result = read_until_close(sock)
        self.assertTrue(result.closed)
        targets = []
        rest = result.data
        while rest:
            head, rest = split_response(rest)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            length = int(http.client.parse_headers(_lines(head))["Content-Length"])
            targets.append(json.loads(rest[:length])["target"])
            rest = rest[length:]
        self.assertEqual(targets, [f"/echo?n={n}" for n in range(count)])


def _lines(head: bytes) -> io.BytesIO:
    """The field lines of ``head`` as a file, for http.client.parse_headers."""
    return io.BytesIO(head.split(b"\r\n", 1)[1] + b"\r\n\r\n")


class QuickCacheTests(SynchronousTestCase):
    """``--cache DIR`` turns the disk cache on for the quick-mode route."""

    def test_second_request_is_a_hit(self) -> None:
        """A cacheable response is fetched once; the second answer says hit."""
        origin = Origin(self).start()
        cache_dir = os.path.join(new_tempdir(self), "cache")
        gateway = Gateway(
            self,
            args=[
                "--listen", "tcp:0:interface=127.0.0.1",
                "--upstream", origin.url,
                "--cache", cache_dir,
            ],
        ).start()
        gateway.get("/cache/quick")
        status, headers, _ = gateway.get("/cache/quick")
        self.assertEqual(status, 200)
        lowered = {name.lower(): value for name, value in headers.items()}
        self.assertIn("hit", lowered.get("cache-status", ""))
        self.assertEqual(origin.stats()["requests"], 1)
