"""A push producer that streams a byte range of an open file to a consumer with backpressure.

Invariants:

- At most ``chunk_size`` bytes are read per write and at most
  ``chunks_per_turn`` writes happen per reactor turn, so a large body never
  sits in memory and never monopolises the reactor.
- Reading stops as soon as the consumer pauses us (a TCP transport does so
  from inside ``write`` when its buffer fills) and resumes on
  ``resumeProducing``; nothing is scheduled while paused.
- The file is read with ``os.pread`` at explicit offsets and never closed
  here: the owner (a ``store.Entry``) closes it after ``start``'s Deferred
  fires.
"""

from __future__ import annotations

import enum
import os
import zlib
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.cache.entry import CorruptEntry

__all__ = ["BodyFileProducer", "ProducerState", "TransferStopped"]


class TransferStopped(Exception):
    """The consumer called ``stopProducing`` (e.g. the client went away)."""


class ProducerState(enum.Enum):
    """States of a :class:`BodyFileProducer`."""

    #: Built, ``start`` not called yet.
    IDLE = "idle"
    #: Writing chunks, one batch per reactor turn.
    RUNNING = "running"
    #: The consumer asked us to pause; nothing is scheduled.
    PAUSED = "paused"
    #: Every byte written; the Deferred fired with None.
    DONE = "done"
    #: Stopped by the consumer, or failed (short file, CRC mismatch, I/O
    #: error); the Deferred failed.
    STOPPED = "stopped"


@implementer(IPushProducer)
class BodyFileProducer:
    """Writes ``length`` bytes of ``file`` from ``offset`` to a consumer.

    ``reactor`` schedules each batch (``callLater(0, ...)``). ``expected_crc``,
    when given, is checked against the CRC-32 of everything sent (pass the
    entry's ``body_crc`` when sending a whole body): a mismatch fails the
    Deferred with :class:`~gateway.cache.entry.CorruptEntry` after the last
    byte, and the caller must then abort the connection, not finish the
    response, and drop the entry. A file shorter than announced fails the same
    way as soon as it is noticed.
    """

    _log = Logger()

    def __init__(
        self,
        file: IO[bytes],
        offset: int,
        length: int,
        reactor: IReactorTime,
        *,
        chunk_size: int = 64 * 1024,
        chunks_per_turn: int = 16,
        expected_crc: int | None = None,
    ) -> None:
        if chunk_size <= 0 or chunks_per_turn <= 0:
            raise ValueError("chunk_size and chunks_per_turn must be positive")
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        self._fd = file.fileno()
        self._position = offset
        self._remaining = length
        self._reactor = reactor
        self._chunk_size = chunk_size
        self._chunks_per_turn = chunks_per_turn
        self._expected_crc = expected_crc
        self._crc = 0
        self._consumer: Any = None
        self._call: IDelayedCall | None = None
        self._done: Deferred[None] = Deferred()
        self.state = ProducerState.IDLE

    def start(self, consumer: IConsumer) -> Deferred[None]:
        """Register with ``consumer`` as a streaming producer and start; fires when all is sent."""
        if self.state is not ProducerState.IDLE:
            raise RuntimeError(f"already started ({self.state.value})")
        self._consumer = consumer
        self.state = ProducerState.RUNNING
        consumer.registerProducer(self, True)
        self._schedule()
        return self._done

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self._reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        turns = 0
        while self.state is ProducerState.RUNNING and self._remaining > 0 and turns < self._chunks_per_turn:
            try:
                data = os.pread(self._fd, min(self._chunk_size, self._remaining), self._position)
            except OSError as exc:
                self._fail(exc)
                return
            if not data:
                self._fail(CorruptEntry(f"file ended {self._remaining} bytes early"))
                return
            self._position += len(data)
            self._remaining -= len(data)
            if self._expected_crc is not None:
                self._crc = zlib.crc32(data, self._crc)
            turns += 1
            self._consumer.write(data)  # may call pauseProducing or stopProducing
        if self.state is not ProducerState.RUNNING:
            return
        if self._remaining > 0:
            self._schedule()
            return
        if self._expected_crc is not None and self._crc != self._expected_crc:
            self._fail(CorruptEntry("body checksum mismatch"))
            return
        self.state = ProducerState.DONE
        self._consumer.unregisterProducer()
        self._done.callback(None)

    def _fail(self, reason: Exception) -> None:
        self.state = ProducerState.STOPPED
        self._log.warn("cache: body transfer failed: {reason}", reason=reason)
        self._consumer.unregisterProducer()
        self._done.errback(reason)

    # IPushProducer
    def pauseProducing(self) -> None:
        if self.state is ProducerState.RUNNING:
            self.state = ProducerState.PAUSED
            if self._call is not None:
                self._call.cancel()
                self._call = None

    def resumeProducing(self) -> None:
        if self.state is ProducerState.PAUSED:
            self.state = ProducerState.RUNNING
            self._schedule()

    def stopProducing(self) -> None:
        if self.state in (ProducerState.RUNNING, ProducerState.PAUSED):
            self.state = ProducerState.STOPPED
            if self._call is not None:
                self._call.cancel()
                self._call = None
            self._done.errback(TransferStopped("consumer stopped the transfer"))
