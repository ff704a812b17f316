"""Answers from a stored entry (gateway.cache.answer): the planned head and the checked body source."""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from dataclasses import replace

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.bodystore import CHUNK_SIZE, BodyStoreError, IBodySource
from gateway.cache.answer import Answer, CheckedRange, EntryFeed, Framing, plan_answer
from gateway.cache.entry import HEADER_SIZE, EntryMeta
from gateway.cache.store import DiskStore
from gateway.cache.ranges import RangeNotSatisfiable
from gateway.parser import Request

STORED = [
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"10"),
    (b"ETag", b'"e1"'),
    (b"Age", b"99"),
    (b"Date", b"Thu, 01 Jan 1970 00:00:00 GMT"),
    (b"Last-Modified", b"Thu, 01 Jan 1970 00:00:00 GMT"),
]
FRAMING = Framing(
    via=b"gateway", server=b"gateway", date=b"Thu, 01 Jan 1970 00:01:00 GMT", hsts=None,
    keep_alive=True, status=b"gateway; hit",
)  # fmt: skip


def request(method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None,
            version: bytes = b"HTTP/1.1") -> Request:
    return Request(method, b"/x", version, headers or [], 0, False, True, False, b"a", frozenset())


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:-2]
    return [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]


class PlanTests(SynchronousTestCase):
    """plan_answer: status, fields and body range."""

    def test_full_answer(self) -> None:
        """The stored response with our Content-Length, the current Age, Via and Cache-Status."""
        answer = plan_answer(request(), 200, b"OK", STORED, 10, 0.0, 12.7, FRAMING)
        self.assertEqual((answer.status, answer.first, answer.length, answer.whole), (200, 0, 10, True))
        got = dict(fields(answer.head))
        self.assertEqual(got[b"Age"], b"12")
        self.assertEqual(got[b"Content-Length"], b"10")
        self.assertEqual(got[b"Via"], b"1.1 gateway")
        self.assertEqual(got[b"Cache-Status"], b"gateway; hit")
        self.assertEqual(got[b"Date"], b"Thu, 01 Jan 1970 00:00:00 GMT")
        self.assertEqual([n for n, _ in fields(answer.head)].count(b"Age"), 1)

    def test_head_has_no_body(self) -> None:
        """RFC 9110 §9.3.2: HEAD gets GET's head and no body."""
        answer = plan_answer(request(b"HEAD"), 200, b"OK", STORED, 10, 0.0, 0.0, FRAMING)
        self.assertEqual(answer.length, 0)
        self.assertIn(b"Content-Length: 10\r\n", answer.head)

    def test_not_modified_only_for_2xx(self) -> None:
        """RFC 9110 §13.2.1: preconditions are ignored for a stored non-2xx."""
        conditional = request(headers=[(b"If-None-Match", b'"e1"')])
        self.assertEqual(plan_answer(conditional, 200, b"OK", STORED, 10, 0.0, 0.0, FRAMING).status, 304)
        self.assertEqual(plan_answer(conditional, 404, b"Not Found", STORED, 10, 0.0, 0.0, FRAMING).status, 404)

    def test_304_fields(self) -> None:
        """RFC 9110 §15.4.5: a 304 carries ETag and Date, not Content-Type or Content-Length."""
        answer = plan_answer(request(headers=[(b"If-None-Match", b"*")]), 200, b"OK", STORED, 10, 0.0, 0.0, FRAMING)
        got = dict(fields(answer.head))
        self.assertEqual(got[b"ETag"], b'"e1"')
        self.assertNotIn(b"Content-Type", got)
        self.assertNotIn(b"Content-Length", got)

    def test_range(self) -> None:
        """RFC 9110 §14.2: a suffix range of a stored 200."""
        answer = plan_answer(request(headers=[(b"Range", b"bytes=-4")]), 200, b"OK", STORED, 10, 0.0, 0.0, FRAMING)
        self.assertEqual((answer.status, answer.first, answer.length, answer.whole), (206, 6, 4, False))
        self.assertIn(b"Content-Range: bytes 6-9/10\r\n", answer.head)

    def test_range_on_non_200_ignored(self) -> None:
        """Ranges are served from stored 200s only; another status goes out whole."""
        answer = plan_answer(request(headers=[(b"Range", b"bytes=0-1")]), 404, b"Not Found", STORED, 10, 0.0, 0.0, FRAMING)
        self.assertEqual((answer.status, answer.length), (404, 10))

    def test_unsatisfiable(self) -> None:
        """RFC 9110 §15.5.17: a range past the end raises 416."""
        self.assertRaises(
            RangeNotSatisfiable, plan_answer, request(headers=[(b"Range", b"bytes=10-")]), 200, b"OK",
            STORED, 10, 0.0, 0.0, FRAMING,
        )  # fmt: skip

    def test_connection_fields(self) -> None:
        """Connection: close when the connection ends; keep-alive for an HTTP/1.0 client."""
        closing = replace(FRAMING, keep_alive=False)
        self.assertIn(b"Connection: close\r\n", plan_answer(request(), 200, b"OK", STORED, 10, 0.0, 0.0, closing).head)
        answer = plan_answer(request(version=b"HTTP/1.0"), 200, b"OK", STORED, 10, 0.0, 0.0, FRAMING)
        self.assertIn(b"Connection: keep-alive\r\n", answer.head)

    def test_hsts_replaces_stored(self) -> None:
        """The listener's HSTS value replaces whatever was stored."""
        framing = Framing(via=b"g", server=b"", date=FRAMING.date, hsts=b"max-age=1", keep_alive=True, status=None)
        stored = STORED + [(b"Strict-Transport-Security", b"max-age=999")]
        head = plan_answer(request(), 200, b"OK", stored, 10, 0.0, 0.0, framing).head
        self.assertIn(b"Strict-Transport-Security: max-age=1\r\n", head)
        self.assertNotIn(b"max-age=999", head)


class CheckedRangeTests(SynchronousTestCase):
    """CheckedRange: a FileRange that checks the body's CRC-32 before its last bytes."""

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="gateway-cache-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "entry")
        self.body = bytes(range(256)) * 4
        with open(path, "wb") as file:
            file.write(b"HEAD" + self.body + b"TAIL")
        self.fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    def test_provides_body_source(self) -> None:
        """CheckedRange provides IBodySource (the body store's plug point)."""
        self.assertTrue(verifyObject(IBodySource, CheckedRange(self.fd, 4, len(self.body), 0)))

    def test_good_body_reads_through(self) -> None:
        """Sequential reads of an intact body return every byte."""
        source = CheckedRange(self.fd, 4, len(self.body), zlib.crc32(self.body))
        got = b"".join(source.read(offset, 100) for offset in range(0, len(self.body), 100))
        self.assertEqual(got, self.body)

    def test_bad_checksum_withholds_last_read(self) -> None:
        """A mismatch raises on the read that reaches the end, instead of returning it."""
        source = CheckedRange(self.fd, 4, len(self.body), zlib.crc32(self.body) ^ 1)
        self.assertEqual(source.read(0, 1000), self.body[:1000])
        self.assertRaises(BodyStoreError, source.read, 1000, 100)

    def test_single_read_body_never_returned(self) -> None:
        """A body read in one piece is never handed over when its checksum fails."""
        source = CheckedRange(self.fd, 4, len(self.body), 12345)
        self.assertRaises(BodyStoreError, source.read, 0, 65536)

    def test_out_of_order_read_refused(self) -> None:
        """A read that skips bytes can't be checked: refused."""
        source = CheckedRange(self.fd, 4, len(self.body), zlib.crc32(self.body))
        self.assertRaises(BodyStoreError, source.read, 10, 10)


class FeedTests(SynchronousTestCase):
    """EntryFeed: checked once per entry version, then sent by sendfile as far as the socket takes."""

    SIZE = CHUNK_SIZE * 2 + 5

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="gateway-cache-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.clock = Clock()
        self.store = DiskStore(directory, self.clock, max_size=8 * 1024**2, max_object_size=1024**2, hot_entries=8)
        self.store.load()
        self.body = bytes(range(256)) * (self.SIZE // 256) + b"x" * (self.SIZE % 256)
        meta = EntryMeta(key=b"k", status=200, reason=b"OK", headers=[], request_time=0.0, response_time=0.0)
        writer = self.store.writer(meta)
        writer.write(self.body)
        info = writer.commit()
        assert info is not None
        self.info = info

    def feed(self, take: int | None = None) -> tuple[bytes, list[tuple[int, int]], list[str]]:
        """One whole-body answer; ``take``: what the fake sendfile sends (None: no sendfile, as on TLS).

        Returns the bytes in send order, the sendfile calls, and how it ended;
        ``self.sequences`` the vectored writes.
        """
        entry = self.store.open(self.info)
        assert entry is not None
        transport = StringTransport()
        out: list[bytes] = []
        calls: list[tuple[int, int]] = []
        ended: list[str] = []

        def send_file(fd: int, offset: int, count: int) -> int:
            calls.append((offset, count))
            sent = min(take or 0, count)
            out.append(os.pread(fd, sent, offset))
            return sent

        self.sequences: list[list[bytes]] = []

        def write_sequence(pieces: list[bytes]) -> None:
            self.sequences.append(list(pieces))
            out.extend(pieces)

        def write(data: bytes) -> None:
            out.append(data)

        answer = Answer(200, b"HEAD;", 0, self.SIZE, True)
        feed = EntryFeed(
            self.clock, entry, answer, transport, write=write,
            write_sequence=write_sequence, send_file=None if take is None else send_file,
            blocked=lambda: None, unblocked=lambda: None, done=lambda: ended.append("done"),
            failed=lambda started: ended.append(f"failed {started}"), gone=lambda: ended.append("gone"),
        )  # fmt: skip
        feed.start()
        for _ in range(10):
            self.clock.advance(0)
        if ended == ["done"]:
            self.assertEqual(feed.sent, self.SIZE)
        return b"".join(out), calls, ended

    def test_checked_first_then_sent_by_file(self) -> None:
        """The first answer reads (and checks) the body: no sendfile; the next ones use it."""
        data, calls, ended = self.feed(take=10**9)
        self.assertEqual((data, calls, ended), (b"HEAD;" + self.body, [], ["done"]))
        data, calls, ended = self.feed(take=10**9)
        self.assertEqual((data, ended), (b"HEAD;" + self.body, ["done"]))
        self.assertEqual(calls, [(HEADER_SIZE, self.SIZE)])

    def test_partial_take_rest_streamed(self) -> None:
        """A socket that takes part: the rest follows from where sendfile stopped, in order."""
        self.feed()
        data, calls, ended = self.feed(take=1000)
        self.assertEqual((data, ended), (b"HEAD;" + self.body, ["done"]))
        self.assertEqual(calls, [(HEADER_SIZE, self.SIZE)])

    def test_nothing_taken_streamed(self) -> None:
        """A socket that takes nothing by sendfile (a queue): the producer sends it all."""
        self.feed()
        data, _, ended = self.feed(take=0)
        self.assertEqual((data, ended), (b"HEAD;" + self.body, ["done"]))

    def test_no_sendfile_head_with_first_chunk(self) -> None:
        """Without sendfile (TLS) the head still leaves with the first chunk, in one vectored write."""
        self.feed()
        data, calls, ended = self.feed(take=None)
        self.assertEqual((data, calls, ended), (b"HEAD;" + self.body, [], ["done"]))
        self.assertEqual(self.sequences[0], [b"HEAD;", self.body[:CHUNK_SIZE]])

    def test_failed_check_not_remembered(self) -> None:
        """A body that fails its check is never marked checked: it is not sent by sendfile later."""
        path = os.path.join(self.store.directory, self.info.name[:2], self.info.name[2:4], self.info.name)
        with open(path, "r+b") as file:
            file.seek(HEADER_SIZE + 5)
            file.write(b"\xff")
        for _ in range(2):
            _, calls, ended = self.feed(take=10**9)
            self.assertEqual((calls, ended), ([], ["failed True"]))
