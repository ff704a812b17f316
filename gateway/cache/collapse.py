"""Request collapsing: one origin request per key, the other requests for it wait.

The first request that must go to the origin for a primary key leads a
:class:`Fill`; requests for the same key that arrive meanwhile wait on it
instead of going to the origin too (nginx's ``proxy_cache_lock``, Varnish's
waiting list). Each waiter learns the :class:`Outcome` once:

- ``STORED``: the response is in the store (new, or freshened by a 304):
  look it up again.
- ``UNSTORED``: the response can't be shared (not storable: private,
  Set-Cookie, ...; its Vary selects other requests than this one; the store
  write failed; the leader gave up): make your own request, at once.
- ``FAILED``: the origin failed: serve stale if allowed, else make your own
  request.
- ``TIMEOUT``: ``cache_collapse_timeout`` passed: make your own request.

Invariants:

- A table holds at most one Fill per key; a Fill leaves the table when it
  finishes, before any waiter is woken, so a woken waiter never waits on it.
- Every waiter is woken exactly once, or cancelled (its client went away);
  its timer is cancelled either way.
- A waiter whose callback raises is logged and forgotten; the others are
  still woken.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

from twisted.logger import Logger

from gateway.cache.keys import vary_values

if TYPE_CHECKING:
    from collections.abc import Sequence

    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from gateway.parser import Headers

__all__ = ["Fill", "FillTable", "Outcome", "Waiter"]

log = Logger()


class Outcome(enum.Enum):
    """How a Fill ended for one waiter (see the module docstring)."""

    STORED = "stored"
    UNSTORED = "unstored"
    FAILED = "failed"
    TIMEOUT = "timeout"


class Waiter:
    """One request waiting on a :class:`Fill`; ``cancel()`` when its client goes away."""

    __slots__ = ("_fill", "_wake", "headers", "_timer")

    def __init__(self, fill: Fill, wake: Callable[[Outcome], None], headers: Headers) -> None:
        self._fill: Fill | None = fill
        self._wake: Callable[[Outcome], None] | None = wake
        #: The waiting request's header fields (its Vary'd values are read from them).
        self.headers = headers
        self._timer: IDelayedCall | None = None

    def cancel(self) -> None:
        """Stop waiting; the waiter is never woken after this."""
        self._wake = None
        self._leave()

    def _leave(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill._waiters.pop(self, None)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._woken(Outcome.TIMEOUT)

    def _woken(self, outcome: Outcome) -> None:
        self._leave()
        wake, self._wake = self._wake, None
        if wake is not None:
            _call(wake, outcome)


def _call(wake: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        wake(outcome)
    except Exception:
        log.failure("cache: a collapsed request failed on waking ({outcome})", outcome=outcome.value)


class Fill:
    """One origin request for ``key`` that other requests may wait on."""

    __slots__ = ("key", "_table", "_waiters", "done")

    def __init__(self, table: FillTable, key: bytes) -> None:
        self.key = key
        self._table = table
        # A dict as an ordered set: waiters are woken in arrival order and
        # leave in O(1).
        self._waiters: dict[Waiter, None] = {}
        #: True once finished; a finished Fill takes no waiters.
        self.done = False

    def __len__(self) -> int:
        """How many requests wait on this fill."""
        return len(self._waiters)

    def wait(self, wake: Callable[[Outcome], None], headers: Headers, timeout: float) -> Waiter:
        """Wait for the outcome, at most ``timeout`` seconds; ``wake(outcome)`` is called once."""
        waiter = Waiter(self, wake, headers)
        waiter._timer = self._table.clock.callLater(timeout, waiter._timed_out)
        self._waiters[waiter] = None
        return waiter

    def vary(self, names: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """The response will be stored with this Vary: release the waiters it doesn't select.

        RFC 9111 §4.1: a stored response is used only for requests whose
        varied fields match the original request's; the others would miss
        anyway, so they make their own request now (``UNSTORED``).
        """
        if not names:
            return
        wanted = tuple(values)
        others = [w for w in self._waiters if vary_values(names, w.headers) != wanted]
        for waiter in others:
            waiter._woken(Outcome.UNSTORED)

    def finish(self, outcome: Outcome) -> None:
        """The fill is over: leave the table, then wake every waiter with ``outcome``."""
        if self.done:
            return
        self.done = True
        self._table._forget(self)
        for waiter in list(self._waiters):
            waiter._woken(outcome)


class FillTable:
    """The Fills in progress, by primary key; one per cache (process-wide)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._fills: dict[bytes, Fill] = {}

    def __len__(self) -> int:
        return len(self._fills)

    def get(self, key: bytes) -> Fill | None:
        """The Fill in progress for ``key``, if any."""
        return self._fills.get(key)

    def lead(self, key: bytes) -> Fill | None:
        """A new Fill for ``key``, led by the caller; None if one is already in progress."""
        if key in self._fills:
            return None
        fill = self._fills[key] = Fill(self, key)
        return fill

    def _forget(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
