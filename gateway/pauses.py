"""Reason-counted pausing of a transport's reading.

A Twisted transport's ``pauseProducing``/``resumeProducing`` is a flag, not a
counter, yet a client connection may be paused for several independent reasons
at once (the upstream's write buffer is full, a pipelined request is waiting, no
upstream connection is ready yet). :class:`Pauses` keeps the set of reasons and
touches the transport only when the set goes from empty to non-empty and back.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class Pauses:
    """The set of reasons a transport's reading is paused."""

    __slots__ = ("_reasons", "_pause", "_resume")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._reasons: set[str] = set()
        self._pause = pause
        self._resume = resume

    def add(self, reason: str) -> None:
        """Pause for ``reason``; the transport is paused on the first reason."""
        if not self._reasons:
            self._pause()
        self._reasons.add(reason)

    def discard(self, reason: str) -> None:
        """Drop ``reason``; the transport resumes when no reason is left."""
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._resume()

    def __contains__(self, reason: str) -> bool:
        return reason in self._reasons

    def __bool__(self) -> bool:
        return bool(self._reasons)


@implementer(IPushProducer)
class ReasonProducer:
    """An IPushProducer that a peer transport drives, mapped to one pause reason.

    Registered on the *other* side's transport: when that transport's write
    buffer fills, Twisted calls ``pauseProducing`` here and we stop reading from
    ours. This is how backpressure runs end to end (client <-> upstream).
    """

    __slots__ = ("_pauses", "_reason", "_on_stop", "on_pause", "on_resume")

    def __init__(self, pauses: Pauses, reason: str, on_stop: Callable[[], None]) -> None:
        self._pauses = pauses
        self._reason = reason
        self._on_stop = on_stop
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    def pauseProducing(self) -> None:
        self._pauses.add(self._reason)
        if self.on_pause is not None:
            self.on_pause()

    def resumeProducing(self) -> None:
        self._pauses.discard(self._reason)
        if self.on_resume is not None:
            self.on_resume()

    def stopProducing(self) -> None:
        self._pauses.discard(self._reason)
        self._on_stop()
