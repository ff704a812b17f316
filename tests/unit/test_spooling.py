"""Spoon feeding in the request path: a slow client's response moves to a spool.

Driven in memory (gateway.testing); the client's socket "fills" when the test
calls pauseProducing on whatever producer the client transport holds.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.spooling import spoolable
from gateway.testing import Harness, simple_config

GET = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"


def spool_dir(case: SynchronousTestCase) -> str:
    """A fresh directory removed after the test (``mktemp()`` would land in the work tree)."""
    directory = tempfile.mkdtemp(prefix="gw-spool-test-")
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def harness(case: SynchronousTestCase, **gateway: object) -> Harness:
    """A harness whose spool directory is a fresh temporary directory."""
    directory = spool_dir(case)
    settings = {"spool_dir": directory, **gateway}
    return Harness(simple_config(servers=1, **settings))


def drain(h: Harness, client) -> None:
    """Let the feeding producer run until it has nothing more to do."""
    for _ in range(1000):
        if not h.clock.getDelayedCalls() or all(
            call.getTime() > h.clock.seconds() for call in h.clock.getDelayedCalls()
        ):
            return
        h.clock.advance(0)


class SpoolTakeoverTests(SynchronousTestCase):
    """A client that falls behind no longer holds the upstream."""

    def test_upstream_released_before_client_finishes(self) -> None:
        """The upstream connection is back in the pool while the client still reads."""
        h = harness(self)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"a" * 1000)
        client.transport.producer.pauseProducing()  # the client's socket is full
        origin.send(b"b" * 299000)  # the upstream goes on at full speed
        self.assertEqual(origin.transport.producerState, "producing")
        pool = h.runtime.backends["app"].pools["s1"]
        self.assertEqual(pool.idle, [origin.protocol])
        client.transport.producer.resumeProducing()
        drain(h, client)
        body = client.received().split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"a" * 1000 + b"b" * 299000)
        self.assertEqual(h.runtime.spooling.budget.memory_used, 0)
        self.assertEqual(h.runtime.spooling.budget.disk_used, 0)

    def test_chunked_response_spooled_keeps_framing(self) -> None:
        """A re-chunked response fed from the spool ends with the last chunk."""
        h = harness(self)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        client.transport.producer.pauseProducing()
        origin.send(b"3\r\ndef\r\n0\r\n\r\n")
        client.transport.producer.resumeProducing()
        drain(h, client)
        answer = client.received()
        self.assertTrue(answer.endswith(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), answer)

    def test_client_gone_releases_spool(self) -> None:
        """A client that disconnects mid-feed leaves no spool budget held."""
        h = harness(self)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        client.transport.producer.pauseProducing()
        origin.send(b"b" * 50000)
        client.lose()
        self.assertEqual(h.runtime.spooling.budget.memory_used, 0)
        self.assertEqual(h.runtime.spooling.budget.disk_used, 0)


class BypassTests(SynchronousTestCase):
    """Streaming responses are never spooled."""

    def test_event_stream_not_spooled(self) -> None:
        """text/event-stream keeps direct streaming: a full client pauses the upstream."""
        h = harness(self)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n"
        )
        client.transport.producer.pauseProducing()
        self.assertEqual(origin.transport.producerState, "paused")

    def test_accel_buffering_no_not_spooled_and_stripped(self) -> None:
        """X-Accel-Buffering: no turns spooling off and never reaches the client."""
        h = harness(self)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(
            b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Length: 10\r\n\r\nab"
        )
        self.assertNotIn(b"X-Accel-Buffering", client.received())
        client.transport.producer.pauseProducing()
        self.assertEqual(origin.transport.producerState, "paused")

    def test_budget_exhausted_falls_back_to_backpressure(self) -> None:
        """With no spool budget left, a slow client pauses the upstream instead."""
        h = harness(self, spool_memory=0, spool_disk=0)
        client = h.client()
        client.send(GET)
        origin = h.upstream()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
        client.transport.producer.pauseProducing()
        self.assertEqual(origin.transport.producerState, "paused")

    def test_spoolable_rules(self) -> None:
        """Only event streams and X-Accel-Buffering: no opt out; the header is removed."""
        self.assertEqual(spoolable([(b"Content-Type", b"text/html")]), (True, [(b"Content-Type", b"text/html")]))
        self.assertFalse(spoolable([(b"content-type", b"Text/Event-Stream; charset=utf-8")])[0])
        allowed, headers = spoolable([(b"X-Accel-Buffering", b"yes"), (b"A", b"1")])
        self.assertEqual((allowed, headers), (True, [(b"A", b"1")]))


def buffered(case: SynchronousTestCase, servers: int = 1) -> Harness:
    """A harness whose route buffers request bodies."""
    directory = spool_dir(case)
    config = simple_config(
        servers=servers, route={"request_buffering": True}, spool_dir=directory
    )
    return Harness(config)


class RequestBufferingTests(SynchronousTestCase):
    """With request_buffering, no server is contacted before the body is complete."""

    def test_no_upstream_until_body_complete(self) -> None:
        """Half a body: no connect; the whole body: connect and send it."""
        h = buffered(self)
        client = h.client()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        self.assertEqual(h.pending_connects(), 0)
        client.send(b"56789")
        origin = h.upstream()
        drain(h, client)
        sent = origin.received()
        self.assertIn(b"Content-Length: 10\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n0123456789"), sent)

    def test_chunked_upload_sent_with_length(self) -> None:
        """A buffered chunked upload goes upstream with its Content-Length."""
        h = buffered(self)
        client = h.client()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"3\r\nabc\r\n0\r\n\r\n")
        origin = h.upstream()
        drain(h, client)
        sent = origin.received()
        self.assertIn(b"Content-Length: 3\r\n", sent)
        self.assertNotIn(b"Transfer-Encoding", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nabc"), sent)

    def test_buffered_put_replayed_on_retry(self) -> None:
        """An idempotent buffered request is retried with its whole body."""
        h = buffered(self, servers=2)
        client = h.client()
        client.send(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz")
        first = h.upstream()
        drain(h, client)
        self.assertTrue(first.received().endswith(b"xyz"))
        first.lose()
        second = h.upstream()
        drain(h, client)
        self.assertTrue(second.received().endswith(b"xyz"))
        second.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"204", client.received())

    def test_buffered_spool_released(self) -> None:
        """After the exchange, the request spool's budget is given back."""
        h = buffered(self)
        client = h.client()
        client.send(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        origin = h.upstream()
        drain(h, client)
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(h.runtime.spooling.budget.memory_used, 0)
