"""Tests for gateway.bodystore: the push producer and file-range bodies.

The consumer is a StringTransport (it records registerProducer and lets a test
pause and resume); time is a MemoryReactorClock moved one reactor turn at a
time, so a test can see what each turn does. Spooled bodies read by the same
producer are tested in test_spool.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.bodystore import (
    CHUNK_SIZE,
    Abort,
    BodyProducer,
    FileRange,
    Flow,
    IBodySource,
)
from gateway.chunked import encode_chunk


def turn(clock: MemoryReactorClock) -> int:
    """Run one reactor turn: the calls due now, not the ones they schedule.

    ``Clock.advance(0)`` would also run calls scheduled during the turn, which
    hides whether the producer yields to the reactor between chunks.
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return len(due)


def run(clock: MemoryReactorClock, limit: int = 10_000) -> int:
    """Run turns until nothing is due; how many turns ran (bounded)."""
    for turns in range(limit):
        if not turn(clock):
            return turns
    raise AssertionError("the reactor never went idle")


class Ends:
    """Records the producer's end callbacks."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.aborted: list[tuple[int, Abort]] = []

    def on_done(self, sent: int) -> None:
        self.done.append(sent)

    def on_abort(self, sent: int, why: Abort) -> None:
        self.aborted.append((sent, why))


class CountingRange(FileRange):
    """A FileRange that counts reads, to show the producer never reads ahead."""

    __slots__ = ("reads",)

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__(fd, offset, length)
        self.reads = 0

    def read(self, offset: int, size: int) -> bytes:
        self.reads += 1
        return super().read(offset, size)


class FileCase(SynchronousTestCase):
    """Gives each test a temporary file holding a header then a body."""

    HEADER = b"entry-header\n" * 7
    BODY = bytes(range(256)) * 40 + b"tail"

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "entry")
        with open(path, "wb") as f:
            f.write(self.HEADER + self.BODY)
        self.fd = os.open(path, os.O_RDONLY)
        self.addCleanup(self._close_fd)
        self.clock = MemoryReactorClock()
        self.transport = StringTransport()
        self.ends = Ends()

    def _close_fd(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def body_range(self) -> FileRange:
        return FileRange(self.fd, len(self.HEADER), len(self.BODY))

    def producer(self, source: IBodySource, **kw: object) -> BodyProducer:
        return BodyProducer(
            self.clock,
            source,
            self.transport,
            on_done=self.ends.on_done,
            on_abort=self.ends.on_abort,
            **kw,  # type: ignore[arg-type]
        )


class InterfaceTests(FileCase):
    def test_file_range_provides_body_source(self) -> None:
        """FileRange provides IBodySource."""
        self.assertTrue(verifyObject(IBodySource, self.body_range()))

    def test_producer_provides_push_producer(self) -> None:
        """BodyProducer provides IPushProducer."""
        self.assertTrue(verifyObject(IPushProducer, self.producer(self.body_range())))


class FileRangeTests(FileCase):
    def test_range_at_offset_is_streamed_exactly(self) -> None:
        """Only the body after the header reaches the consumer, and on_done gets its size."""
        producer = self.producer(self.body_range(), chunk_size=1000)
        producer.start()
        run(self.clock)
        self.assertEqual(self.transport.value(), self.BODY)
        self.assertEqual(self.ends.done, [len(self.BODY)])
        self.assertEqual(producer.flow, Flow.DONE)

    def test_inner_range(self) -> None:
        """An arbitrary (offset, length) range of the file is served, nothing around it."""
        whole = self.HEADER + self.BODY
        self.producer(FileRange(self.fd, 50, 3000), chunk_size=700).start()
        run(self.clock)
        self.assertEqual(self.transport.value(), whole[50:3050])
        self.assertEqual(self.ends.done, [3000])

    def test_reads_leave_file_position_alone(self) -> None:
        """Reads are positional: the descriptor's file position does not move."""
        os.lseek(self.fd, 3, os.SEEK_SET)
        self.producer(self.body_range()).start()
        run(self.clock)
        self.assertEqual(os.lseek(self.fd, 0, os.SEEK_CUR), 3)

    def test_two_readers_share_one_descriptor(self) -> None:
        """Two producers interleaving on one fd each get their own range intact."""
        other = StringTransport()
        other_ends = Ends()
        whole = self.HEADER + self.BODY
        self.producer(self.body_range(), chunk_size=100).start()
        BodyProducer(
            self.clock,
            FileRange(self.fd, 0, 5000),
            other,
            on_done=other_ends.on_done,
            on_abort=other_ends.on_abort,
            chunk_size=90,
        ).start()
        run(self.clock)
        self.assertEqual(self.transport.value(), self.BODY)
        self.assertEqual(other.value(), whole[:5000])

    def test_empty_range_completes(self) -> None:
        """A zero-length range ends at once with 0 bytes sent."""
        self.producer(FileRange(self.fd, 10, 0)).start()
        run(self.clock)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.ends.done, [0])
        self.assertIsNone(self.transport.producer)

    def test_range_past_end_of_file_aborts(self) -> None:
        """A file shorter than its range (a truncated cache entry) aborts, not hangs."""
        length = len(self.HEADER + self.BODY)
        producer = self.producer(FileRange(self.fd, 0, length + 10), chunk_size=4096)
        producer.start()
        run(self.clock)
        self.assertEqual(self.ends.done, [])
        self.assertEqual(self.ends.aborted, [(length, Abort.SOURCE_FAILED)])
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_read_error_aborts(self) -> None:
        """An OSError from the disk aborts the producer as a failed source."""
        source = self.body_range()
        producer = self.producer(source)
        producer.start()
        os.close(self.fd)  # the next pread fails with EBADF
        run(self.clock)
        self.assertEqual(self.ends.aborted, [(0, Abort.SOURCE_FAILED)])
        self.assertIsNone(self.transport.producer)

    def test_negative_range_rejected(self) -> None:
        """A negative offset or length is refused when the range is made."""
        self.assertRaises(ValueError, FileRange, self.fd, -1, 10)
        self.assertRaises(ValueError, FileRange, self.fd, 0, -10)

    def test_owned_descriptor_closed(self) -> None:
        """close() closes a descriptor the range owns."""
        fd = os.dup(self.fd)
        FileRange(fd, 0, 10, owns_fd=True).close()
        self.assertRaises(OSError, os.fstat, fd)

    def test_borrowed_descriptor_left_open(self) -> None:
        """close() leaves a borrowed descriptor open for its owner (the cache)."""
        source = self.body_range()
        source.close()
        os.fstat(self.fd)
        self.assertTrue(source.failed)

    def test_closed_range_aborts_reader(self) -> None:
        """A range closed while a producer reads it makes the producer abort."""
        source = self.body_range()
        producer = self.producer(source, chunk_size=1000)
        producer.start()
        turn(self.clock)
        source.close()
        run(self.clock)
        self.assertEqual(self.ends.aborted, [(1000, Abort.SOURCE_FAILED)])


class PacingTests(FileCase):
    def test_start_registers_streaming_producer(self) -> None:
        """start() registers the producer with the consumer as a push producer."""
        producer = self.producer(self.body_range())
        producer.start()
        self.assertIs(self.transport.producer, producer)
        self.assertTrue(self.transport.streaming)

    def test_nothing_written_before_reactor_turn(self) -> None:
        """start() writes nothing itself; the first chunk waits for the reactor."""
        self.producer(self.body_range()).start()
        self.assertEqual(self.transport.value(), b"")

    def test_one_chunk_per_turn(self) -> None:
        """Each reactor turn writes exactly one chunk, so a fast client can't hog the reactor."""
        producer = self.producer(self.body_range(), chunk_size=4096)
        producer.start()
        sizes = []
        while turn(self.clock):
            sizes.append(len(self.transport.value()))
        expected = list(range(4096, len(self.BODY), 4096)) + [len(self.BODY)]
        self.assertEqual(sizes, expected)

    def test_default_chunk_is_64k(self) -> None:
        """Reads are CHUNK_SIZE (64 KiB) by default."""
        self.assertEqual(CHUNK_SIZE, 65536)
        pieces: list[int] = []
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "big")
        with open(path, "wb") as f:
            f.write(b"x" * (CHUNK_SIZE * 2 + 5))
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        self.producer(
            FileRange(fd, 0, CHUNK_SIZE * 2 + 5), write=lambda d: pieces.append(len(d))
        ).start()
        run(self.clock)
        self.assertEqual(pieces, [CHUNK_SIZE, CHUNK_SIZE, 5])

    def test_done_unregisters_before_callback(self) -> None:
        """on_done runs after unregisterProducer, so the owner may write a terminator."""
        seen = []
        producer = BodyProducer(
            self.clock,
            self.body_range(),
            self.transport,
            on_done=lambda sent: seen.append(self.transport.producer),
            on_abort=self.ends.on_abort,
        )
        producer.start()
        run(self.clock)
        self.assertEqual(seen, [None])

    def test_write_hook_frames_body(self) -> None:
        """The write hook carries framing: here each piece is re-chunked."""
        producer = self.producer(
            self.body_range(),
            chunk_size=1000,
            write=lambda d: self.transport.writeSequence(encode_chunk(d)),
        )
        producer.start()
        run(self.clock)
        expected = b"".join(
            b"".join(encode_chunk(self.BODY[i : i + 1000])) for i in range(0, len(self.BODY), 1000)
        )
        self.assertEqual(self.transport.value(), expected)
        self.assertEqual(self.ends.done, [len(self.BODY)])


class BackpressureTests(FileCase):
    def test_pause_stops_reading(self) -> None:
        """While paused nothing is read or scheduled; resume carries on where it stopped."""
        source = CountingRange(self.fd, len(self.HEADER), len(self.BODY))
        producer = self.producer(source, chunk_size=1000)
        producer.start()
        turn(self.clock)
        producer.pauseProducing()
        self.assertEqual(producer.flow, Flow.PAUSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(source.reads, 1)
        self.assertEqual(len(self.transport.value()), 1000)
        producer.resumeProducing()
        run(self.clock)
        self.assertEqual(self.transport.value(), self.BODY)
        self.assertEqual(self.ends.done, [len(self.BODY)])

    def test_pause_from_inside_write(self) -> None:
        """A consumer that pauses during write (its buffer filled) gets no next chunk."""
        holder: list[BodyProducer] = []

        def write(data: bytes) -> None:
            self.transport.write(data)
            holder[0].pauseProducing()

        source = CountingRange(self.fd, len(self.HEADER), len(self.BODY))
        producer = self.producer(source, chunk_size=1000, write=write)
        holder.append(producer)
        producer.start()
        turn(self.clock)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(source.reads, 1)

    def test_one_read_per_chunk_handed_over(self) -> None:
        """Reads match chunks handed to the consumer: nothing is read ahead."""
        source = CountingRange(self.fd, len(self.HEADER), len(self.BODY))
        producer = self.producer(source, chunk_size=1000)
        producer.start()
        for chunks in range(1, 4):
            turn(self.clock)
            self.assertEqual(source.reads, chunks)
            self.assertEqual(len(self.transport.value()), chunks * 1000)

    def test_resume_when_not_paused_is_harmless(self) -> None:
        """A spurious resumeProducing doesn't schedule a second read loop."""
        producer = self.producer(self.body_range())
        producer.start()
        producer.resumeProducing()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_pause_twice_resume_once(self) -> None:
        """Pause is a flag, as Twisted's: one resume after two pauses resumes."""
        producer = self.producer(self.body_range())
        producer.start()
        producer.pauseProducing()
        producer.pauseProducing()
        producer.resumeProducing()
        run(self.clock)
        self.assertEqual(self.ends.done, [len(self.BODY)])


class StopTests(FileCase):
    def test_stop_reports_consumer_gone(self) -> None:
        """stopProducing (client gone) stops reading and calls on_abort with bytes sent."""
        producer = self.producer(self.body_range(), chunk_size=1000)
        producer.start()
        turn(self.clock)
        turn(self.clock)
        producer.stopProducing()
        self.assertEqual(self.ends.aborted, [(2000, Abort.CONSUMER_GONE)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(producer.flow, Flow.STOPPED)

    def test_stop_leaves_registration_to_transport(self) -> None:
        """After stopProducing the producer doesn't unregister: the transport drops it."""
        producer = self.producer(self.body_range())
        producer.start()
        producer.stopProducing()
        self.assertIs(self.transport.producer, producer)

    def test_stop_while_paused(self) -> None:
        """A paused producer that is stopped aborts once and never resumes."""
        producer = self.producer(self.body_range())
        producer.start()
        producer.pauseProducing()
        producer.stopProducing()
        producer.resumeProducing()
        run(self.clock)
        self.assertEqual(self.ends.aborted, [(0, Abort.CONSUMER_GONE)])
        self.assertEqual(self.transport.value(), b"")

    def test_stop_after_done_ignored(self) -> None:
        """stopProducing after the end changes nothing and calls nothing."""
        producer = self.producer(self.body_range())
        producer.start()
        run(self.clock)
        producer.stopProducing()
        self.assertEqual(self.ends.aborted, [])
        self.assertEqual(self.ends.done, [len(self.BODY)])

    def test_consumer_gone_at_registration(self) -> None:
        """A transport already disconnected stops the producer inside registerProducer."""

        class Gone(StringTransport):
            def registerProducer(self, producer: object, streaming: bool) -> None:
                producer.stopProducing()  # type: ignore[attr-defined]

        self.transport = Gone()
        self.producer(self.body_range()).start()
        self.assertEqual(self.ends.aborted, [(0, Abort.CONSUMER_GONE)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_start_twice_ignored(self) -> None:
        """A second start() neither registers again nor doubles the read loop."""
        producer = self.producer(self.body_range())
        producer.start()
        producer.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
