"""The proxy core driven in memory: front end, exchange and upstream pool together.

Each test plays the client and the origin over StringTransports on a
MemoryReactorClock (gateway.testing); no sockets, no real time.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.testing import Harness, simple_config

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: secret/1.0\r\n\r\nhello"


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class ForwardingTests(SynchronousTestCase):
    """A plain request goes up, the answer comes back with our header rules."""

    def test_get_forwarded_and_answered(self) -> None:
        """The request line reaches the origin; the body reaches the client."""
        h = Harness()
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        sent = origin.received()
        self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertIn(b"Host: example.com\r\n", sent)
        self.assertIn(b"X-Forwarded-For: 192.0.2.10\r\n", sent)
        origin.send(OK)
        answer = client.received()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(answer.endswith(b"\r\n\r\nhello"))

    def test_upstream_server_header_replaced(self) -> None:
        """The backend's Server header never reaches the client (identity hiding)."""
        h = Harness()
        client = h.client()
        client.send(GET)
        h.upstream().send(OK)
        answer = client.received()
        self.assertNotIn(b"secret", answer)
        self.assertIn(b"Server: gateway\r\n", answer)

    def test_keep_alive_reuses_upstream_connection(self) -> None:
        """A second request on any client reuses the pooled upstream connection."""
        h = Harness(simple_config(servers=1))
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(OK)
        origin.received()
        client.received()
        client.send(GET)
        self.assertEqual(h.pending_connects(), 0)
        self.assertTrue(origin.received().startswith(b"GET /x"))
        origin.send(OK)
        self.assertIn(b"hello", client.received())

    def test_forwarded_follows_host_on_one_connection(self) -> None:
        """The Forwarded element a connection keeps is redone when the Host changes."""
        h = Harness(simple_config(servers=1))
        client = h.client()
        origin = None
        for host in (b"a.example", b"a.example", b"b.example"):
            client.send(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            origin = origin or h.upstream()
            sent = origin.received()
            self.assertIn(b";host=" + host + b";", sent)
            origin.send(OK)
            client.received()

    def test_chunked_response_rechunked(self) -> None:
        """A chunked upstream body reaches a 1.1 client chunked, ending with 0 CRLF CRLF."""
        h = Harness()
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        answer = client.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", answer)
        self.assertTrue(answer.endswith(b"3\r\nabc\r\n0\r\n\r\n"))

    def test_chunked_request_forwarded(self) -> None:
        """A chunked upload is forwarded chunked and completed with the last chunk."""
        h = Harness()
        client = h.client()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        origin = h.upstream()
        client.send(b"4\r\nwxyz\r\n0\r\n\r\n")
        sent = origin.received()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"4\r\nwxyz\r\n0\r\n\r\n"))

    def test_head_response_has_no_body(self) -> None:
        """HEAD answers carry headers only, even when the origin sends Content-Length."""
        h = Harness()
        client = h.client()
        client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        answer = client.received()
        self.assertTrue(answer.endswith(b"\r\n\r\n"))
        self.assertIn(b"Content-Length: 10\r\n", answer)

    def test_expect_continue_answered_by_gateway(self) -> None:
        """RFC 9110 §10.1.1: the client gets 100 Continue once an upstream is ready."""
        h = Harness()
        client = h.client()
        client.send(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(client.received(), b"")
        origin = h.upstream()
        self.assertEqual(client.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertNotIn(b"Expect", origin.received())
        client.send(b"abc")
        self.assertEqual(origin.received(), b"abc")

    def test_pipelined_requests_answered_in_order(self) -> None:
        """RFC 9112 §9.3.2: pipelined requests are answered in the order received."""
        h = Harness(simple_config(servers=1))
        client = h.client()
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        origin = h.upstream()
        self.assertNotIn(b"/2", origin.received())
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        h.clock.advance(0)
        self.assertIn(b"GET /2", origin.received())
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        answer = client.received()
        self.assertLess(answer.index(b"\r\n\r\n1"), answer.index(b"\r\n\r\n2"))


class DeepPipelineTests(SynchronousTestCase):
    """Answers made without an upstream, pipelined by the thousand: one loop, no recursion."""

    def test_many_pipelined_gateway_answers(self) -> None:
        """5000 pipelined requests that no route takes get 5000 404s in order on one connection."""
        h = Harness(simple_config(route={"host": "only.example"}))
        client = h.client()
        client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: other\r\n\r\n" % n for n in range(5000)))
        answers = client.received()
        self.assertEqual(answers.count(b"HTTP/1.1 404 "), 5000)
        self.assertFalse(client.closed)
        self.assertEqual(self.flushLoggedErrors(), [])


class BackpressureTests(SynchronousTestCase):
    """Slow peers pause the other side instead of filling memory."""

    def test_slow_client_pauses_upstream(self) -> None:
        """With buffering off, a client transport's pause pauses the upstream read."""
        h = Harness(simple_config(route={"buffering": False}))
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.transport.producer.pauseProducing()
        self.assertEqual(origin.transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(origin.transport.producerState, "producing")

    def test_slow_upstream_pauses_client(self) -> None:
        """When the upstream transport is full, the client's upload read pauses."""
        h = Harness()
        client = h.client()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        origin = h.upstream()
        origin.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        origin.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")


class LimitTests(SynchronousTestCase):
    """Each listener limit on both sides of its bound."""

    def test_body_at_limit_accepted(self) -> None:
        """Content-Length equal to max_body_size is forwarded."""
        h = Harness(simple_config(listener={"max_body_size": 10}))
        client = h.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        self.assertEqual(h.pending_connects(), 1)

    def test_body_over_limit_413(self) -> None:
        """Content-Length one over max_body_size gets 413 and no upstream connect."""
        h = Harness(simple_config(listener={"max_body_size": 10}))
        client = h.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
        self.assertEqual(status_of(client.received()), 413)
        self.assertEqual(h.pending_connects(), 0)
        self.assertTrue(client.closed)

    def test_chunked_body_over_limit_413(self) -> None:
        """A chunked body that grows past max_body_size is cut with 413."""
        h = Harness(simple_config(listener={"max_body_size": 4}))
        client = h.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        h.upstream()
        client.send(b"5\r\nabcde\r\n")
        self.assertEqual(status_of(client.received()), 413)

    def test_long_uri_414(self) -> None:
        """A request line over max_request_line gets 414."""
        h = Harness(simple_config(listener={"max_request_line": 64}))
        client = h.client()
        client.send(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(status_of(client.received()), 414)

    def test_too_many_headers_431(self) -> None:
        """More header fields than max_header_count get 431."""
        h = Harness(simple_config(listener={"max_header_count": 3}))
        client = h.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        self.assertEqual(status_of(client.received()), 431)

    def test_malformed_request_400(self) -> None:
        """A malformed request line gets our 400 page and the connection closes."""
        h = Harness()
        client = h.client()
        client.send(b"GARBAGE\r\n\r\n")
        answer = client.received()
        self.assertEqual(status_of(answer), 400)
        self.assertTrue(client.closed)

    def test_max_connections(self) -> None:
        """The listener refuses connections past max_connections and accepts up to it."""
        h = Harness(simple_config(listener={"max_connections": 2}))
        h.client()
        h.client()
        self.assertRaises(AssertionError, h.client)


class TimeoutTests(SynchronousTestCase):
    """Timeouts move only with clock.advance()."""

    def test_header_timeout_408(self) -> None:
        """A head still incomplete after timeout_header gets 408."""
        h = Harness(simple_config(listener={"timeout_header": 5.0}))
        client = h.client()
        client.send(b"GET / HTTP/1.1\r\n")
        h.clock.advance(4.9)
        self.assertEqual(client.received(), b"")
        h.clock.advance(0.2)
        self.assertEqual(status_of(client.received()), 408)
        self.assertTrue(client.closed)

    def test_idle_timeout_closes(self) -> None:
        """An idle keep-alive connection closes after timeout_idle, not before."""
        h = Harness(simple_config(listener={"timeout_idle": 3.0}))
        client = h.client()
        h.clock.advance(2.9)
        self.assertFalse(client.closed)
        h.clock.advance(0.2)
        self.assertTrue(client.closed)

    def test_response_timeout_504(self) -> None:
        """No response head within timeout_response gives 504."""
        h = Harness(simple_config(backend={"timeout_response": 2.0}))
        client = h.client()
        client.send(GET)
        h.upstream()
        h.clock.advance(1.9)
        self.assertEqual(client.received(), b"")
        h.clock.advance(0.2)
        self.assertEqual(status_of(client.received()), 504)

    def test_queue_timeout_503(self) -> None:
        """With the pool full, a waiting request gets 503 after timeout_queue."""
        h = Harness(simple_config(servers=1, backend={"pool_max_conns": 1, "timeout_queue": 1.0}))
        first = h.client()
        first.send(GET)
        h.upstream()
        second = h.client()
        second.send(GET)
        h.clock.advance(0.9)
        self.assertEqual(second.received(), b"")
        h.clock.advance(0.2)
        self.assertEqual(status_of(second.received()), 503)


class FailureTests(SynchronousTestCase):
    """Upstream failures become our own 502/503/504 pages, retried when safe."""

    def test_connect_refused_retried_on_other_server(self) -> None:
        """A refused connect is retried on another server (nothing was sent)."""
        h = Harness(simple_config(servers=2))
        client = h.client()
        client.send(GET)
        h.refuse()
        origin = h.upstream()
        origin.send(OK)
        self.assertEqual(status_of(client.received()), 200)

    def test_all_refused_502(self) -> None:
        """When every server refuses, the client gets our 502 page."""
        h = Harness(simple_config(servers=2))
        client = h.client()
        client.send(GET)
        h.refuse()
        h.refuse()
        answer = client.received()
        self.assertEqual(status_of(answer), 502)
        self.assertNotIn(b"Traceback", answer)

    def test_post_with_body_sent_not_retried(self) -> None:
        """A POST whose body reached a server is never replayed; it gets 502."""
        h = Harness(simple_config(servers=2))
        client = h.client()
        client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        origin = h.upstream()
        self.assertTrue(origin.received().endswith(b"abc"))
        origin.lose()
        self.assertEqual(status_of(client.received()), 502)
        self.assertEqual(h.pending_connects(), 0)

    def test_malformed_upstream_response_502(self) -> None:
        """A response that doesn't parse becomes 502 without the backend's bytes."""
        h = Harness()
        client = h.client()
        client.send(GET)
        h.upstream().send(b"HTTP/1.1 2OO OK\r\n\r\nsecret internals")
        answer = client.received()
        self.assertEqual(status_of(answer), 502)
        self.assertNotIn(b"secret", answer)

    def test_no_route_404(self) -> None:
        """A request no route matches gets the gateway's 404 and keeps the connection."""
        from gateway.config import RouteConfig
        from dataclasses import replace

        config = simple_config()
        config = replace(config, routes=(RouteConfig("only", "app", host="only.example"),))
        h = Harness(config)
        client = h.client()
        client.send(GET)
        self.assertEqual(status_of(client.received()), 404)
        self.assertFalse(client.closed)


class CrashTests(SynchronousTestCase):
    """A bug in request handling costs one request, never the process."""

    def test_exception_answered_500_and_logged(self) -> None:
        """An exception while routing is logged with its traceback and answered 500."""
        from twisted.logger import globalLogPublisher

        class Broken:
            def match(self, *args: object) -> None:
                raise RuntimeError("routing bug")

        h = Harness()
        h.runtime.routes["web"] = Broken()  # type: ignore[assignment]
        failures: list[dict] = []
        observer = lambda event: failures.append(event) if "log_failure" in event else None
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = h.client()
        client.send(GET)
        answer = client.received()
        self.assertEqual(status_of(answer), 500)
        self.assertNotIn(b"routing bug", answer)
        self.assertTrue(client.closed)
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_other_connections_unaffected(self) -> None:
        """After one request crashed, a new connection is served normally."""
        h = Harness()
        real = h.runtime.routes["web"]

        class Broken:
            def match(self, *args: object) -> None:
                raise RuntimeError("routing bug")

        h.runtime.routes["web"] = Broken()  # type: ignore[assignment]
        h.client().send(GET)
        self.flushLoggedErrors(RuntimeError)
        h.runtime.routes["web"] = real
        client = h.client()
        client.send(GET)
        h.upstream().send(OK)
        self.assertEqual(status_of(client.received()), 200)


class HostTests(SynchronousTestCase):
    """The upstream request always carries a Host (RFC 9112 §3.2)."""

    def test_http10_without_host_gets_server_address(self) -> None:
        """An HTTP/1.0 request without Host goes upstream with the server's address."""
        h = Harness(simple_config(servers=1))
        client = h.client()
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertIn(b"\r\nHost: 127.0.0.1:9001\r\n", h.upstream().received())

    def test_client_host_preserved(self) -> None:
        """By default the client's Host reaches the upstream unchanged."""
        h = Harness(simple_config(servers=1))
        client = h.client()
        client.send(GET)
        self.assertIn(b"\r\nHost: example.com\r\n", h.upstream().received())
