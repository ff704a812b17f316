"""The body store's read side: one push producer for every stored body.

A stored body is anything that provides :class:`IBodySource`: a response or
request being spooled (:class:`gateway.spool.Spool`, readable while it is still
being written) or a byte range of an open file (:class:`FileRange`, e.g. the
body of a cache entry that follows its header). :class:`BodyProducer` streams
either kind into an ``IConsumer`` (the client transport, or the upstream
transport for a buffered request body), so a cached body and a spooled body are
read the same way.

Invariants:

- The producer holds no data of its own: each reactor turn it reads one chunk
  (``chunk_size``, 64 KiB by default) at its own offset with positional reads
  (``os.pread``), hands it to the consumer, and schedules the next turn with
  ``callLater(0)``. It never reads ahead of what it handed over, and one fast
  consumer gets one chunk per reactor turn, not the whole reactor.
- Backpressure is the consumer's: ``pauseProducing`` stops reading until
  ``resumeProducing``; nothing is read while paused.
- A reader that catches up with a body still being written waits for the
  source to call it back (:meth:`IBodySource.notify`): no polling, no timer.
- Every producer ends exactly once, in ``on_done(sent)`` or
  ``on_abort(sent, why)``. The producer registers itself with the consumer on
  :meth:`BodyProducer.start` and unregisters on both ends, except when the
  consumer itself stopped it (``stopProducing``: the transport is going away and
  drops its producer on its own).
- The producer never closes its source: the owner does, from its callbacks,
  because a request body may be read again for a retry.
"""

from __future__ import annotations

import enum
import os
from typing import Callable

from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "Abort",
    "BodyProducer",
    "BodyStoreError",
    "CHUNK_SIZE",
    "FileRange",
    "Flow",
    "IBodySource",
]

log = Logger()

#: How much one reactor turn reads and hands to the consumer (as nginx's
#: ``proxy_buffer_size`` sized reads); also the most a producer holds at once.
CHUNK_SIZE = 64 * 1024


class BodyStoreError(Exception):
    """A stored body can't be read as promised (a file shorter than its range)."""


class IBodySource(Interface):
    """A body that a :class:`BodyProducer` can read, possibly while it grows.

    Offsets are relative to the start of the body. ``available`` only grows;
    once ``length`` is known it equals ``available`` and the body is complete.
    """

    available = Attribute("Bytes readable now: every offset below this can be read.")
    length = Attribute("The body's total length once it is complete, else -1.")
    failed = Attribute(
        "True once the body will never be complete (writer failed, source closed): "
        "readers must abort."
    )

    def read(offset: int, size: int) -> bytes:  # type: ignore[misc]
        """Up to ``size`` bytes at ``offset`` (``offset < available``).

        May return fewer than asked (one stored piece at a time) but never
        ``b""`` for a readable offset. May raise ``OSError`` on disk errors.
        """

    def notify(callback: Callable[[], None]) -> None:  # type: ignore[misc]
        """Call ``callback()`` once, the next time data arrives or the body
        completes or fails. Used by a reader that caught up with the writer."""

    def cancel_notify(callback: Callable[[], None]) -> None:  # type: ignore[misc]
        """Forget a pending :meth:`notify` (the reader was paused or stopped)."""

    def consumed(offset: int) -> None:  # type: ignore[misc]
        """The reader handed every byte below ``offset`` to its consumer.

        A source may drop those bytes if it must (a spool over its budget
        does); most ignore this.
        """


@implementer(IBodySource)
class FileRange:
    """Bytes ``[offset, offset + length)`` of an open file, as a complete body.

    For cache entries (a header, then the body at some offset) and anything else
    already on disk. Reads are positional (``os.pread``), so several readers can
    share one descriptor and nobody's file position matters. The descriptor is
    borrowed unless ``owns_fd``, in which case :meth:`close` closes it.
    """

    __slots__ = ("_fd", "_offset", "_owns_fd", "available", "length", "failed")

    def __init__(self, fd: int, offset: int, length: int, *, owns_fd: bool = False) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"bad file range: offset {offset}, length {length}")
        self._fd = fd
        self._offset = offset
        self._owns_fd = owns_fd
        self.available = length
        self.length = length
        self.failed = False

    def read(self, offset: int, size: int) -> bytes:
        if self.failed:
            return b""
        size = min(size, self.length - offset)
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._offset + offset)
        if not data:
            raise BodyStoreError(
                f"file ends at {self._offset + offset}, inside its range "
                f"[{self._offset}, {self._offset + self.length})"
            )
        return data

    def notify(self, callback: Callable[[], None]) -> None:
        # A complete body never makes a reader wait; answer at once rather than
        # leave a caller hanging.
        callback()

    def cancel_notify(self, callback: Callable[[], None]) -> None:
        pass

    def consumed(self, offset: int) -> None:
        pass

    def close(self) -> None:
        """Stop serving reads; close the descriptor if this range owns it."""
        if self.failed:
            return
        self.failed = True
        if self._owns_fd:
            try:
                os.close(self._fd)
            except OSError:
                log.failure("closing a file range's descriptor")


class Flow(enum.Enum):
    """States of :class:`BodyProducer`.

    - NEW: built, not started; not registered with the consumer.
    - READY: registered; the next chunk is scheduled (``callLater(0)``).
    - WAITING: caught up with a body still being written; the source will call
      back (``notify``). Nothing is scheduled.
    - PAUSED: the consumer asked for a pause; nothing is scheduled or awaited.
    - DONE: every byte went to the consumer; unregistered; ``on_done`` called.
    - STOPPED: aborted (consumer gone, source failed or unreadable);
      ``on_abort`` called.
    """

    NEW = "new"
    READY = "ready"
    WAITING = "waiting"
    PAUSED = "paused"
    DONE = "done"
    STOPPED = "stopped"


class Abort(enum.Enum):
    """Why a :class:`BodyProducer` stopped before the end of its body."""

    #: ``stopProducing``: the consumer (client or upstream connection) is gone.
    CONSUMER_GONE = "consumer_gone"
    #: The source failed, was closed, or a read failed: the body is truncated,
    #: so the owner must close the consumer's connection.
    SOURCE_FAILED = "source_failed"


@implementer(IPushProducer)
class BodyProducer:
    """Streams one :class:`IBodySource` into one consumer at the consumer's pace.

    ``write`` puts one piece on the consumer; it defaults to ``consumer.write``
    and is where the owner frames the body (``writeSequence(encode_chunk(d))``
    for a re-chunked response). ``on_done(sent)`` runs after the last byte, with
    the producer already unregistered, so the owner may write a chunked
    terminator there. ``on_abort(sent, why)`` runs on any early end.
    ``on_pause``/``on_resume`` tell the owner when the consumer stops and starts
    taking bytes (a client connection runs its ``timeout_client`` meanwhile).
    """

    __slots__ = (
        "_reactor",
        "_source",
        "_consumer",
        "_write",
        "_on_done",
        "_on_abort",
        "_chunk_size",
        "_pos",
        "_call",
        "_on_pause",
        "_on_resume",
        "flow",
        "sent",
    )

    def __init__(
        self,
        reactor: IReactorTime,
        source: IBodySource,
        consumer: IConsumer,
        *,
        on_done: Callable[[int], None],
        on_abort: Callable[[int, Abort], None],
        write: Callable[[bytes], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._reactor = reactor
        self._source = source
        self._consumer = consumer
        self._write = write if write is not None else consumer.write
        self._on_done = on_done
        self._on_abort = on_abort
        self._chunk_size = chunk_size
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._pos = 0
        self._call: IDelayedCall | None = None
        self.flow = Flow.NEW
        #: Body bytes handed to ``write`` so far (before any framing).
        self.sent = 0

    def start(self) -> None:
        """Register with the consumer as a streaming producer and start reading."""
        if self.flow is not Flow.NEW:
            log.error("body producer started twice (flow {flow})", flow=self.flow.value)
            return
        self.flow = Flow.READY
        # A transport that is already disconnected calls stopProducing right
        # here, so only schedule if registration left us ready.
        self._consumer.registerProducer(self, True)
        if self.flow is Flow.READY:
            self._schedule()

    # -- IPushProducer (called by the consumer) -----------------------------------

    def pauseProducing(self) -> None:
        flow = self.flow
        if flow is Flow.READY:
            self._cancel_call()
        elif flow is Flow.WAITING:
            self._source.cancel_notify(self._wake)
        else:
            return
        self.flow = Flow.PAUSED
        if self._on_pause is not None:
            self._on_pause()

    def resumeProducing(self) -> None:
        if self.flow is Flow.PAUSED:
            self.flow = Flow.READY
            self._schedule()
            if self._on_resume is not None:
                self._on_resume()

    def stopProducing(self) -> None:
        """The consumer is gone: stop reading and report the abort."""
        flow = self.flow
        if flow is Flow.DONE or flow is Flow.STOPPED:
            return
        self._cancel_call()
        if flow is Flow.WAITING:
            self._source.cancel_notify(self._wake)
        self.flow = Flow.STOPPED
        self._on_abort(self.sent, Abort.CONSUMER_GONE)

    # -- the read loop ---------------------------------------------------------

    def _schedule(self) -> None:
        self._call = self._reactor.callLater(0, self._step)

    def _cancel_call(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _wake(self) -> None:
        """The source changed while we waited: read again on the next turn.

        Scheduled, not run here, because the source calls back from inside its
        writer (an upstream's ``dataReceived``), which must not re-enter the
        consumer.
        """
        if self.flow is Flow.WAITING:
            self.flow = Flow.READY
            self._schedule()

    def _step(self) -> None:
        self._call = None
        if self.flow is not Flow.READY:
            return
        source = self._source
        pos = self._pos
        try:
            if source.failed:
                self._abort("source failed or closed")
                return
            available = source.available
            if pos >= available:
                length = source.length
                if 0 <= length <= pos:
                    self._done()
                else:
                    self.flow = Flow.WAITING
                    source.notify(self._wake)
                return
            data = source.read(pos, min(self._chunk_size, available - pos))
            if not data:
                raise BodyStoreError(f"source returned nothing at readable offset {pos}")
        except (OSError, BodyStoreError) as exc:
            log.warn("body read failed at offset {offset}: {error}", offset=pos, error=exc)
            self._abort("read failed")
            return
        except Exception:
            log.failure("unexpected error reading a stored body")
            self._abort("unexpected error")
            return
        pos += len(data)
        self._pos = pos
        self.sent += len(data)
        # The consumer may pause or stop us synchronously from inside write.
        try:
            self._write(data)
            source.consumed(pos)
        except Exception:
            log.failure("unexpected error passing on a stored body")
            if self.flow is Flow.READY or self.flow is Flow.PAUSED:
                self._abort("unexpected error")
            return
        if self.flow is not Flow.READY:
            return
        length = source.length
        if 0 <= length <= pos:
            self._done()
        else:
            self._schedule()

    def _done(self) -> None:
        self.flow = Flow.DONE
        self._consumer.unregisterProducer()
        self._on_done(self.sent)

    def _abort(self, why: str) -> None:
        log.debug("body producer aborting: {why}", why=why)
        self.flow = Flow.STOPPED
        self._consumer.unregisterProducer()
        self._on_abort(self.sent, Abort.SOURCE_FAILED)
