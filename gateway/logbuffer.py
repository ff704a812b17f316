"""A text log observer that batches access lines: one write per few dozen requests.

twistd's own file observer formats every event through the generic format
machinery (``string.Formatter``, a ``datetime`` with time zone per event) and
flushes the stream after each one: at 1 KiB responses that doubled the CPU a
request costs. :class:`BatchedLogObserver` writes the same classic text lines
(``TIME [system] text``), but:

- an access line (namespace ``gateway.access``, already formatted by
  :mod:`gateway.accesslog`) is used as it is, with the time text cached per
  second, and held in a batch;
- a batch is written out when the next line would take it past
  :data:`BATCH_BYTES`, when :data:`FLUSH_INTERVAL` has passed since its first
  line (one timer per batch, not per line), before any other event (so order
  holds and warnings are never late), and when the reactor shuts down;
- every other event goes through Twisted's :func:`formatEventAsClassicLogText`
  and is written at once.

Invariants: at most :data:`BATCH_BYTES` (or one longer line) is held, for at
most :data:`FLUSH_INTERVAL`; each write is whole lines and, held to
``PIPE_BUF``, atomic on a pipe, so workers sharing one stdout never interleave
mid-line. This is nginx's ``access_log ... buffer=4k flush=0.5s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TextIO

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText, formatTime
from zope.interface import implementer

__all__ = ["ACCESS_NAMESPACE", "BATCH_BYTES", "FLUSH_INTERVAL", "BatchedLogObserver"]

#: Most bytes held before a write; PIPE_BUF, so each write is atomic on a pipe.
BATCH_BYTES = 4096
#: Longest time (seconds) an access line waits for its batch to be written.
FLUSH_INTERVAL = 0.5
#: The namespace whose ``{line}`` events are batched (see gateway.accesslog).
ACCESS_NAMESPACE = "gateway.access"


class _Reactor(Protocol):
    """What the observer needs of the reactor: a timer and a shutdown trigger."""

    def callLater(self, delay: float, call: Callable[[], None]) -> IDelayedCall: ...
    def addSystemEventTrigger(self, phase: str, event: str, call: Callable[[], None]) -> object: ...


@implementer(ILogObserver)
class BatchedLogObserver:
    """Writes classic log text to ``stream``, batching access lines (module docstring)."""

    def __init__(
        self,
        stream: TextIO,
        reactor: _Reactor,
        *,
        batch_bytes: int = BATCH_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._stream = stream
        self._reactor = reactor
        self._batch_bytes = batch_bytes
        self._flush_interval = flush_interval
        self._batch: list[str] = []
        self._held = 0
        self._timer: IDelayedCall | None = None
        self._second = -1
        self._stamp = ""
        reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE and "line" in event:
            self._hold(self._access_text(event))
            return
        text = formatEventAsClassicLogText(event, formatTime=self._time_text)
        if text is None:
            return
        self.flush()
        self._stream.write(text)
        self._stream.flush()

    def flush(self) -> None:
        """Write out the batch now (also the shutdown trigger and the timer)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if not self._batch:
            return
        batch, self._batch, self._held = self._batch, [], 0
        self._stream.write("".join(batch))
        self._stream.flush()

    def _hold(self, text: str) -> None:
        if self._held + len(text) > self._batch_bytes:
            self.flush()
        self._batch.append(text)
        self._held += len(text)
        if self._timer is None:
            self._timer = self._reactor.callLater(self._flush_interval, self.flush)

    def _access_text(self, event: LogEvent) -> str:
        """The classic line for an access event, as formatEventAsClassicLogText makes it."""
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{ACCESS_NAMESPACE}#{level.name if level else '-'}"
        line = str(event["line"]).replace("\n", "\n\t")
        return f"{self._time_text(event.get('log_time'))} [{system}] {line}\n"

    def _time_text(self, when: float | None) -> str:
        """Twisted's ``formatTime``, cached per whole second (its format has no fraction)."""
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = formatTime(second)
        return self._stamp
