"""Answers from a stored entry: the head (200, 206, 304, HEAD) and the feed of its body.

Invariants:

- :func:`plan_answer` is pure: it takes the request, the stored head and the
  current age, and returns the head to send and the byte range of the stored
  body that follows it.
- A stored body is read through :mod:`gateway.bodystore`, the read path
  spooled bodies use: a :class:`~gateway.bodystore.BodyProducer` over a
  :class:`~gateway.bodystore.FileRange`. The first time this process sends
  an entry version's whole body it is a :class:`CheckedRange`, which checks
  the body's CRC-32 before handing over its last bytes, so a body corrupted
  on disk never reaches a client complete: the connection is cut (or, if
  nothing was sent yet, the entry is refetched). Once it checked out
  (``Decoded.body_checked``), and for byte ranges, a body of more than one
  chunk goes with ``sendfile`` as far as the socket takes it (like nginx),
  the rest through the producer.
- At most one chunk of a body is in memory; the client's socket paces the
  reads (backpressure through ``pauseProducing``). A body of at most one
  chunk is read at once and leaves with the head in one write, with no
  producer and no later reactor turn (most hits are small).
- The entry's file is closed exactly once, when the feed ends either way.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from twisted.logger import Logger

from gateway.compat import SLOTS
from gateway.bodystore import CHUNK_SIZE, Abort, BodyProducer, BodyStoreError, FileRange, Flow
from gateway.cache.fields import without
from gateway.cache.policy import with_age
from gateway.cache.ranges import content_range, requested_range
from gateway.cache.status import with_cache_status
from gateway.cache.validation import if_range_matches, not_modified, not_modified_headers
from gateway.headers import response_headers, serialize_head

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IReactorTime

    from gateway.cache.entry import Entry
    from gateway.fastwrite import SendFile
    from gateway.parser import Headers, Request

__all__ = ["Answer", "CheckedRange", "EntryFeed", "Framing", "plan_answer"]

log = Logger()

# Never copied from the stored head: the answer frames its own body, Age is
# recomputed (RFC 9111 §5.1), and X-Accel-Buffering was an instruction to this
# proxy (gateway.spooling), not to clients.
_REFRAMED = (b"content-length", b"content-range", b"age", b"transfer-encoding", b"x-accel-buffering")
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, **SLOTS)
class Framing:
    """What the answer's head needs besides the stored entry: this hop's fields.

    ``via``/``server`` as the Runtime has them, ``date`` the current
    IMF-fixdate (sent only if the stored head has no Date), ``hsts`` the
    listener's Strict-Transport-Security value or None, ``keep_alive`` whether
    the connection stays open after the answer, ``status`` the route's
    ``Cache-Status`` member or None, ``extra_304`` more field names (lower
    case) to keep in a 304 (the route's own targeted field).
    """

    via: bytes
    server: bytes
    date: bytes
    hsts: bytes | None
    keep_alive: bool
    status: bytes | None
    extra_304: tuple[bytes, ...] = ()


@dataclass(frozen=True, **SLOTS)
class Answer:
    """A planned answer: ``head`` to write, then stored body bytes ``[first, first + length)``."""

    status: int
    head: bytes
    first: int
    length: int
    #: The whole stored body goes out (so its CRC-32 can be checked).
    whole: bool


def _finish_head(status: int, reason: bytes, headers: Headers, request: Request, framing: Framing) -> bytes:
    headers = response_headers(
        headers, connection=frozenset(), via=framing.via, version=b"1.1", server=framing.server,
        date=framing.date, hsts=framing.hsts,
    )  # fmt: skip
    if framing.status is not None:
        headers = with_cache_status(headers, framing.status)
    if not framing.keep_alive:
        headers.append((b"Connection", b"close"))
    elif request.version == b"HTTP/1.0":
        headers.append((b"Connection", b"keep-alive"))
    return serialize_head(b"HTTP/1.1 %d %s" % (status, reason), headers)


def plan_answer(
    request: Request,
    status: int,
    reason: bytes,
    stored: Headers,
    body_length: int,
    response_time: float,
    age: float,
    framing: Framing,
) -> Answer:
    """The answer to ``request`` from a stored response (``status``, ``reason``, head ``stored``).

    In order:

    - A conditional GET or HEAD that the stored response satisfies gets 304
      with the fields RFC 9110 §15.4.5 lists (:func:`~gateway.cache.validation.not_modified`).
      Only for a stored 2xx: RFC 9110 §13.2.1, preconditions are ignored when
      the response "would have been a status code other than a 2xx".
    - A single satisfiable byte range of a stored 200, whose If-Range (if any)
      matches, gets 206 with Content-Range (RFC 9110 §14.2, §15.3.7); an
      unsatisfiable one raises :class:`~gateway.cache.ranges.RangeNotSatisfiable`.
    - Otherwise the stored response, with Content-Length for its body.

    HEAD gets the head GET would get, without body (RFC 9110 §9.3.2). Every
    answer carries the current ``Age`` (RFC 9111 §5.1), our ``Via`` and
    ``Server``, and the route's ``Cache-Status``.
    """
    method = request.method
    headers = request.headers
    if 200 <= status < 300 and not_modified(method, headers, stored, response_time):
        kept = with_age(not_modified_headers(stored, framing.extra_304), age)
        return Answer(304, _finish_head(304, b"Not Modified", kept, request, framing), 0, 0, False)
    fields = with_age(without(stored, _REFRAMED), age)
    if status == 200 and if_range_matches(headers, stored):
        chosen = requested_range(method, headers, body_length)
        if chosen is not None:
            first, last = chosen
            length = last - first + 1
            fields.append((b"Content-Range", content_range(first, last, body_length)))
            fields.append((b"Content-Length", b"%d" % length))
            head = _finish_head(206, b"Partial Content", fields, request, framing)
            return Answer(206, head, first, length, length == body_length)
    if status not in _NO_BODY_STATUSES:
        fields.append((b"Content-Length", b"%d" % body_length))
    head = _finish_head(status, reason, fields, request, framing)
    if method == b"HEAD" or status in _NO_BODY_STATUSES:
        return Answer(status, head, 0, 0, False)
    return Answer(status, head, 0, body_length, True)


class CheckedRange(FileRange):
    """A whole stored body whose CRC-32 is checked as it is read, front to back.

    The read that reaches the end compares the running CRC-32 with
    ``expected_crc`` and raises :class:`~gateway.bodystore.BodyStoreError`
    instead of returning the last bytes when they differ, so a reader never
    hands over a complete corrupted body. Reads must be sequential (as
    :class:`~gateway.bodystore.BodyProducer` makes them); any other read
    raises, since it could not be checked.
    """

    __slots__ = ("_crc", "_expected", "_next")

    def __init__(self, fd: int, offset: int, length: int, expected_crc: int) -> None:
        super().__init__(fd, offset, length)
        self._crc = 0
        self._expected = expected_crc
        self._next = 0

    def read(self, offset: int, size: int) -> bytes:
        if offset != self._next:
            raise BodyStoreError(f"checked body read out of order at {offset}, expected {self._next}")
        data = super().read(offset, size)
        crc = zlib.crc32(data, self._crc)
        end = offset + len(data)
        if end >= self.length and crc != self._expected:
            raise BodyStoreError("stored body fails its checksum")
        self._crc = crc
        self._next = end
        return data


class EntryFeed:
    """Writes one answer's head and stored body bytes to a client, then reports.

    ``write``/``write_sequence``/``send_file`` are the client's send
    functions (:mod:`gateway.fastwrite`; ``send_file`` None where the
    transport can't take one, as on TLS); the head leaves with the first body
    chunk in one vectored write, or alone before a ``sendfile``. ``done()`` runs
    after the last byte; ``failed(started)`` when the body could not be read
    (``started``: whether any byte of the answer went out); ``gone()`` when
    the client went away. The entry is closed before any of them runs.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        entry: Entry,
        answer: Answer,
        consumer: IConsumer,
        *,
        write: Callable[[bytes], None],
        write_sequence: Callable[[list[bytes]], None],
        send_file: SendFile | None,
        blocked: Callable[[], None],
        unblocked: Callable[[], None],
        done: Callable[[], None],
        failed: Callable[[bool], None],
        gone: Callable[[], None],
    ) -> None:
        self._reactor = reactor
        self._entry = entry
        self._answer = answer
        self._consumer = consumer
        self._write = write
        self._write_sequence = write_sequence
        self._send_file = send_file
        self._blocked = blocked
        self._unblocked = unblocked
        self._done = done
        self._failed = failed
        self._gone = gone
        self._head: bytes | None = answer.head
        self._producer: BodyProducer | None = None
        self._closed = False
        self._sent = 0
        self._checking = False
        #: Whether the head has been written.
        self.started = False

    @property
    def sent(self) -> int:
        """Body bytes handed to the client so far."""
        producer = self._producer
        return self._sent + (producer.sent if producer is not None else 0)

    def start(self) -> None:
        """Write the head with the body's first chunk (or all of a small body); stream the rest."""
        consumer = self._consumer
        if getattr(consumer, "producer", None) is not None:
            # An exchange that failed after its response head registered a
            # producer with the client transport and never took it back; a
            # transport takes one producer at a time, and it must not pause
            # or resume a finished exchange while this answer is written.
            consumer.unregisterProducer()
        answer = self._answer
        length = answer.length
        if length == 0:
            self._send(b"")
            self._finish()
            return
        entry = self._entry
        fd = entry.fd
        offset = entry.body_offset + answer.first
        self._checking = answer.whole and not entry.decoded.body_checked
        if self._checking:
            source: FileRange = CheckedRange(fd, offset, length, entry.meta.body_crc)
        else:
            source = FileRange(fd, offset, length)
        if length <= CHUNK_SIZE:
            self._send_whole(source, length)
            return
        send_file = self._send_file
        if not self._checking and send_file is not None:
            self._send(b"")
            sent = self._sent = send_file(fd, offset, length)
            if sent == length:
                self._finish()
                return
            source = FileRange(fd, offset + sent, length - sent)
        self._producer = BodyProducer(
            self._reactor, source, self._consumer, on_done=self._fed, on_abort=self._cut,
            write=self._send, on_pause=self._blocked, on_resume=self._unblocked,
        )  # fmt: skip
        self._producer.start()

    def _send_whole(self, source: FileRange, length: int) -> None:
        """A body of one chunk: read it now, send it with the head, finish."""
        try:
            data = source.read(0, length)
            if len(data) != length:
                raise BodyStoreError(f"stored body ends after {len(data)} of {length} bytes")
        except (OSError, BodyStoreError) as exc:
            log.warn("stored body read failed: {error}", error=exc)
            self._close()
            self._failed(False)
            return
        self._sent = length
        self._send(data)
        self._finish()

    def _finish(self) -> None:
        if self._checking:
            self._entry.decoded.body_checked = True
        self._close()
        self._done()

    def stop(self) -> None:
        """The answer is abandoned (client gone, timeout): stop reading, close the entry."""
        producer = self._producer
        self._done = self._gone = _nothing
        self._failed = _nothing_failed
        if producer is not None and producer.flow not in (Flow.DONE, Flow.STOPPED):
            # stopProducing is what a consumer calls; here the owner stops, so
            # the producer must also be taken off the consumer.
            producer.stopProducing()
            if getattr(self._consumer, "producer", None) is producer:
                self._consumer.unregisterProducer()
        self._close()

    def _send(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._write(data)
            return
        self._head = None
        self.started = True
        if data:
            self._write_sequence([head, data])
        else:
            self._write(head)

    def _fed(self, _sent: int) -> None:
        self._finish()

    def _cut(self, _sent: int, why: Abort) -> None:
        self._close()
        if why is Abort.CONSUMER_GONE:
            self._gone()
        else:
            self._failed(self.started)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._entry.close()


def _nothing() -> None:
    pass


def _nothing_failed(_started: bool) -> None:
    pass
