"""Tests for gateway.cache.producer: streaming a stored body with backpressure."""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from gateway.cache.entry import CorruptEntry
from gateway.cache.producer import BodyFileProducer, ProducerState, TransferStopped

BODY = bytes(range(256)) * 40  # 10 240 bytes


class TurnClock(Clock):
    """A Clock whose ``turn()`` runs only the calls already due, like one reactor iteration.

    ``Clock.advance(0)`` also runs calls scheduled while it runs, which a real
    reactor leaves for its next iteration.
    """

    def turn(self) -> None:
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call in self.calls:
                self.calls.remove(call)
                call.func(*call.args, **call.kw)


class ProducerTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Not mktemp(): under pytest that lands in the work tree.
        directory = tempfile.mkdtemp(prefix="gateway-cache-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "body")
        with open(path, "wb") as f:
            f.write(b"HEAD" + BODY + b"TAIL")
        self.file = open(path, "rb")
        self.addCleanup(self.file.close)
        self.clock = TurnClock()
        self.transport = StringTransport()

    def producer(self, offset: int = 4, length: int = len(BODY), **options) -> BodyFileProducer:
        options.setdefault("chunk_size", 1000)
        options.setdefault("chunks_per_turn", 2)
        return BodyFileProducer(self.file, offset, length, self.clock, **options)  # type: ignore[arg-type]

    def run_out(self) -> None:
        for _ in range(100):
            self.clock.turn()

    def test_interface(self) -> None:
        """BodyFileProducer is an IPushProducer."""
        self.assertTrue(verifyObject(IPushProducer, self.producer()))

    def test_streams_whole_body(self) -> None:
        """Every byte of the range reaches the consumer; the Deferred fires; it unregisters."""
        producer = self.producer()
        done = producer.start(self.transport)
        self.assertIs(self.transport.producer, producer)
        self.assertTrue(self.transport.streaming)
        self.run_out()
        self.assertEqual(self.transport.value(), BODY)
        self.assertIsNone(self.successResultOf(done))
        self.assertIsNone(self.transport.producer)
        self.assertEqual(producer.state, ProducerState.DONE)

    def test_range(self) -> None:
        """RFC 9110 §14: a byte range is streamed from offset for length bytes."""
        done = self.producer(offset=4 + 100, length=50).start(self.transport)
        self.run_out()
        self.successResultOf(done)
        self.assertEqual(self.transport.value(), BODY[100:150])

    def test_bounded_work_per_turn(self) -> None:
        """At most chunks_per_turn chunks of chunk_size are written per reactor turn."""
        self.producer().start(self.transport)
        self.assertEqual(self.transport.value(), b"")  # nothing before the reactor runs
        self.clock.turn()
        self.assertEqual(len(self.transport.value()), 2000)

    def test_pause_and_resume(self) -> None:
        """Backpressure: nothing is read while paused; resume continues where it stopped."""
        producer = self.producer()
        done = producer.start(self.transport)
        self.clock.turn()
        producer.pauseProducing()
        self.run_out()
        self.assertEqual(len(self.transport.value()), 2000)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        producer.resumeProducing()
        self.run_out()
        self.assertEqual(self.transport.value(), BODY)
        self.successResultOf(done)

    def test_pause_from_inside_write(self) -> None:
        """A consumer that pauses inside write (as TCP transports do) stops the batch at once."""
        producer = self.producer()

        class Pausing(StringTransport):
            def write(self, data: bytes) -> None:
                super().write(data)
                producer.pauseProducing()

        transport = Pausing()
        producer.start(transport)
        self.clock.turn()
        self.assertEqual(len(transport.value()), 1000)
        self.assertEqual(producer.state, ProducerState.PAUSED)

    def test_stop(self) -> None:
        """stopProducing ends the transfer with TransferStopped; nothing more is written."""
        producer = self.producer()
        done = producer.start(self.transport)
        self.clock.turn()
        producer.stopProducing()
        self.run_out()
        self.assertEqual(len(self.transport.value()), 2000)
        self.failureResultOf(done, TransferStopped)

    def test_checksum_verified(self) -> None:
        """A whole body is checked against the stored CRC-32."""
        done = self.producer(expected_crc=zlib.crc32(BODY)).start(self.transport)
        self.run_out()
        self.successResultOf(done)

    def test_checksum_mismatch(self) -> None:
        """A body that does not match its CRC-32 fails with CorruptEntry (caller aborts the response)."""
        done = self.producer(expected_crc=zlib.crc32(BODY) ^ 1).start(self.transport)
        self.run_out()
        self.failureResultOf(done, CorruptEntry)
        self.assertIsNone(self.transport.producer)

    def test_short_file(self) -> None:
        """A file shorter than the announced length fails with CorruptEntry."""
        done = self.producer(length=len(BODY) + 100).start(self.transport)
        self.run_out()
        self.failureResultOf(done, CorruptEntry)

    def test_empty(self) -> None:
        """A zero-length body completes on the first turn."""
        done = self.producer(length=0).start(self.transport)
        self.clock.turn()
        self.successResultOf(done)
        self.assertEqual(self.transport.value(), b"")

    def test_start_twice(self) -> None:
        """A producer runs once."""
        producer = self.producer()
        producer.start(self.transport)
        self.assertRaises(RuntimeError, producer.start, StringTransport())
