"""Spoon feeding: when a client falls behind, its response goes to a spool.

A response streams straight from the upstream to the client while the client
keeps up: no copy, no buffer. The moment the client's socket buffer fills (the
transport pauses its producer), a :class:`ResponseSpool` takes over the client
side: everything still to come from the upstream is written to a
:class:`gateway.spool.Spool` (memory, then an unlinked temporary file) as fast
as the upstream sends it, and a :class:`gateway.bodystore.BodyProducer` feeds
the client from the spool at the client's pace. The upstream connection goes
back to its pool as soon as its last byte is in the spool.

When the process-wide spool budget can't cover a new spool, nothing is spooled
and the response keeps streaming with end-to-end backpressure, as it would with
spooling off. A spool that fills mid-response pauses the upstream until the
reader catches up (then behaves as a direct stream).

Streaming responses are never spooled (:func:`spoolable`): ``text/event-stream``,
``X-Accel-Buffering: no`` from the backend, and routes with ``buffering = false``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.logger import Logger

from gateway.bodystore import Abort, BodyProducer
from gateway.spool import Room, Spool, SpoolBudget, SpoolError, SpoolLimits, open_spool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, IReactorTime

    from gateway.parser import Headers

log = Logger()

_EVENT_STREAM = b"text/event-stream"


def spoolable(headers: Headers) -> tuple[bool, Headers]:
    """Whether a response with ``headers`` may be spooled, and the headers to send.

    ``X-Accel-Buffering`` (nginx's convention) is honoured and always removed:
    it is an instruction to the proxy, not to the client.
    """
    allowed = True
    strip = False
    for name, value in headers:
        size = len(name)  # most names can be told apart by length alone
        if size == 12 and name.lower() == b"content-type":
            if value.split(b";", 1)[0].strip().lower() == _EVENT_STREAM:
                allowed = False
        elif size == 17 and name.lower() == b"x-accel-buffering":
            strip = True
            if value.strip().lower() == b"no":
                allowed = False
    if strip:
        headers = [(n, v) for n, v in headers if n.lower() != b"x-accel-buffering"]
    return allowed, headers


class SpoolSettings:
    """The process-wide budget and the per-response limits and directory."""

    __slots__ = ("budget", "limits", "directory")

    def __init__(self, budget: SpoolBudget, limits: SpoolLimits, directory: str) -> None:
        self.budget = budget
        self.limits = limits
        self.directory = directory

    def open(self, expected: int) -> Spool | None:
        """A spool for a body of ``expected`` bytes (-1: unknown), or None: stream."""
        return open_spool(self.budget, self.limits, self.directory, expected=expected)


class ResponseSpool:
    """The client side of one response, once it has been handed to a spool.

    ``pause_upstream``/``resume_upstream`` hold the upstream while the spool is
    full; ``done(sent)`` runs when the client has every byte, ``aborted()`` when
    the feed ends early (client gone, spool failed).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        spool: Spool,
        consumer: IConsumer,
        *,
        write: Callable[[bytes], None],
        pause_upstream: Callable[[], None],
        resume_upstream: Callable[[], None],
        blocked: Callable[[], None],
        unblocked: Callable[[], None],
        done: Callable[[int], None],
        aborted: Callable[[], None],
    ) -> None:
        self.spool = spool
        self._pause_upstream = pause_upstream
        self._resume_upstream = resume_upstream
        self._done = done
        self._aborted = aborted
        spool.on_room = self._room
        self._producer = BodyProducer(
            reactor,
            spool,
            consumer,
            on_done=self._fed,
            on_abort=self._cut,
            write=write,
            on_pause=blocked,
            on_resume=unblocked,
        )

    def start(self) -> None:
        """Register the feeding producer with the client transport."""
        self._producer.start()

    def write(self, data: bytes) -> bool:
        """Store a piece of the body; False if the spool failed (abort the response)."""
        try:
            room = self.spool.write(data)
        except SpoolError as exc:
            log.warn("spool failed: {reason}", reason=exc.reason)
            self.spool.close()
            return False
        if room is Room.FULL:
            self._pause_upstream()
        return room is not Room.CLOSED

    def finish(self) -> None:
        """The upstream's last byte is in the spool."""
        self.spool.finish()

    def close(self) -> None:
        """Drop the spool (abort, shutdown); a reader still reading aborts."""
        self.spool.on_room = None
        self.spool.close()

    def _room(self) -> None:
        self._resume_upstream()

    def _fed(self, sent: int) -> None:
        self.spool.close()
        self._done(sent)

    def _cut(self, sent: int, why: Abort) -> None:
        self.spool.close()
        self._aborted()
