"""Taking one origin response into the store: a new entry written as it streams, or a 304 freshening one.

An :class:`Intake` watches the response to one forwarded GET (a miss) or
conditional GET/HEAD (a revalidation of a stored entry) and decides, from its
head, what the store makes of it (:class:`Took`). It also finishes the
request's :class:`~gateway.cache.collapse.Fill`, if it leads one, the moment
the outcome is known: waiters for a response that can't be shared are
released at the head, not after the body.

Invariants:

- The body goes to disk chunk by chunk as it arrives (an
  :class:`~gateway.cache.writer.EntryWriter`); nothing is kept in memory. A
  write that fails or passes ``cache_max_object`` only stops the storing
  (the writer removes its temporary file); the client's response goes on.
- An entry becomes visible only on :meth:`Intake.end` (commit: rename into
  place), so a response cut short is never stored.
- The Fill is finished exactly once: at the head when nothing will be stored,
  at a write failure, at the end, or at :meth:`Intake.abort`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.compat import SLOTS
from gateway.cache.collapse import Outcome
from gateway.cache.entry import EntryMeta
from gateway.cache.fields import has_field
from gateway.cache.keys import surrogate_keys, vary_names, vary_values
from gateway.cache.policy import (
    ERROR_STATUSES,
    Freshness,
    freshness,
    headers_to_store,
    retention,
    store_refusal,
)
from gateway.cache.validation import freshen, head_matches, select_for_update
from gateway.cache.writer import WriterState
from gateway.httpdate import http_date
from gateway.parser import Request

if TYPE_CHECKING:
    from gateway.cache.collapse import Fill
    from gateway.cache.entry import EntryInfo
    from gateway.cache.route import RoutePolicy
    from gateway.cache.shared import SharedCache
    from gateway.cache.writer import EntryWriter
    from gateway.parser import Headers, Response

__all__ = ["Intake", "Stored", "Took", "rebuilt_request"]


class Took(enum.Enum):
    """What :meth:`Intake.head` made of a response.

    - STORING: a new entry is being written as the body streams.
    - REFUSED: not stored (``Intake.reason`` says why); an entry it would
      have replaced is dropped, since the origin no longer lets it be reused.
    - FRESHENED: a 304 updated the stored entry (``Intake.info``): serve it.
    - LOST: a 304 that can't be used: it doesn't select the stored entry
      (RFC 9111 §4.3.4), or the entry vanished meanwhile. Ask again without
      conditions.
    - ERROR: a 5xx (RFC 5861 §4's errors) to a revalidation: the stored
      entry may stand in (``policy.stale_if_error``).
    - CHECKED: a 200 to a HEAD revalidation; the stored entry was freshened
      if the validators match, else dropped (RFC 9111 §4.3.5).
    """

    STORING = "storing"
    REFUSED = "refused"
    FRESHENED = "freshened"
    LOST = "lost"
    ERROR = "error"
    CHECKED = "checked"


@dataclass(frozen=True, **SLOTS)
class Stored:
    """The stored entry a revalidation is for: its index info, its head and its freshness."""

    info: EntryInfo
    meta: EntryMeta
    fresh: Freshness


class Intake:
    """What the store makes of the response to one forwarded request for ``key``."""

    def __init__(
        self,
        cache: SharedCache,
        policy: RoutePolicy,
        key: bytes,
        request: Request,
        request_time: float,
        *,
        stored: Stored | None = None,
        fill: Fill | None = None,
    ) -> None:
        self._cache = cache
        self._policy = policy
        self._key = key
        self._request = request
        self._request_time = request_time
        self._stored = stored
        self._fill = fill
        self._writer: EntryWriter | None = None
        self.took: Took | None = None
        #: Why the response was not stored (a Cache-Status detail), or None.
        self.reason: str | None = None
        #: The freshened entry (FRESHENED).
        self.info: EntryInfo | None = None
        #: The new response's freshness (STORING, FRESHENED), for Cache-Status ttl.
        self.fresh: Freshness | None = None

    @property
    def storing(self) -> bool:
        """Whether the body is still being written to the store."""
        writer = self._writer
        return writer is not None and writer.state is WriterState.OPEN

    def head(self, response: Response, now: float) -> Took:
        """Decide from the response head; ``now`` is its arrival (response_time)."""
        took = self.took = self._decide(response, now)
        if took is Took.FRESHENED:
            self._finish(Outcome.STORED)
        elif took is Took.ERROR:
            self._finish(Outcome.FAILED)
        elif took is not Took.STORING:
            self._finish(Outcome.UNSTORED)
        return took

    def _decide(self, response: Response, now: float) -> Took:
        store = self._cache.store
        rules = self._policy.rules
        request = self._request
        stored = self._stored
        status = response.status
        if stored is not None:
            if status == 304:
                return self._freshen(response, now)
            if status in ERROR_STATUSES:
                return Took.ERROR
            if request.method == b"HEAD":
                return self._check_head(response, now)
        refusal = store_refusal(request.method, status, request.headers, response.headers, rules)
        if refusal is not None:
            self.reason = refusal
            if stored is not None:
                store.remove(stored.info)
            return Took.REFUSED
        names = vary_names(response.headers) or ()
        values = vary_values(names, request.headers)
        headers = headers_to_store(response.headers, response.connection)
        if not has_field(headers, b"date"):
            # RFC 9110 §6.6.1: a recipient with a clock that receives a
            # response without Date MUST add one; stored, so that every answer
            # from the store carries the same Date.
            headers.append((b"Date", http_date(now)))
        fresh = self.fresh = freshness(status, headers, self._request_time, now, rules)
        meta = EntryMeta(
            key=self._key, status=status, reason=response.reason, headers=headers,
            request_time=self._request_time, response_time=now, vary_names=names, vary_values=values,
            keep_until=retention(fresh, headers, rules), surrogate_keys=surrogate_keys(headers),
        )  # fmt: skip
        expected = response.content_length if response.content_length >= 0 else None
        writer = store.writer(meta, expected)
        if writer.state is not WriterState.OPEN:
            self.reason = writer.reason.replace(" ", "-")
            return Took.REFUSED
        self._writer = writer
        if self._fill is not None:
            self._fill.vary(names, values)
        return Took.STORING

    def _freshen(self, response: Response, now: float) -> Took:
        stored = self._stored
        assert stored is not None
        store = self._cache.store
        rules = self._policy.rules
        # RFC 9111 §4.3.4: a 304 updates only the stored responses it selects.
        if select_for_update(response.headers, [(stored.meta.headers, stored.meta.response_time)]) != [0]:
            self.reason = "304-mismatch"
            return Took.LOST
        headers = freshen(stored.meta.headers, response.headers, now)
        fresh = freshness(stored.meta.status, headers, self._request_time, now, rules)
        info = store.update(stored.info, headers, self._request_time, now, retention(fresh, headers, rules))
        if info is None:
            self.reason = "entry-gone"
            return Took.LOST
        self.info = info
        self.fresh = fresh
        return Took.FRESHENED

    def _check_head(self, response: Response, now: float) -> Took:
        stored = self._stored
        assert stored is not None
        store = self._cache.store
        rules = self._policy.rules
        if response.status == 200 and head_matches(stored.meta.headers, response.headers):
            headers = freshen(stored.meta.headers, response.headers, now)
            fresh = freshness(stored.meta.status, headers, self._request_time, now, rules)
            keep = retention(fresh, headers, rules)
            store.update(stored.info, headers, self._request_time, now, keep)
        else:
            store.remove(stored.info)
        self.reason = "method"
        return Took.CHECKED

    def data(self, data: bytes) -> None:
        """A piece of the body, on its way to the client too."""
        writer = self._writer
        if writer is not None and not writer.write(data):
            self._writer = None
            self.reason = writer.reason.replace(" ", "-")
            self._finish(Outcome.UNSTORED)

    def end(self) -> EntryInfo | None:
        """The body is complete: commit the entry; its info, or None if nothing was stored."""
        writer, self._writer = self._writer, None
        info = writer.commit() if writer is not None else None
        if writer is not None and info is None:
            self.reason = writer.reason.replace(" ", "-")
        self._finish(Outcome.STORED if info is not None else Outcome.UNSTORED)
        return info

    def abort(self, outcome: Outcome) -> None:
        """The response will not complete (origin failed: FAILED; client gone: UNSTORED)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill.finish(outcome)


def rebuilt_request(request: Request, headers: Headers, method: bytes | None = None) -> Request:
    """``request`` with other header fields (and method): what goes upstream for a fill or revalidation.

    The body framing stays (the cache only rebuilds body-less GET and HEAD
    requests); Connection tokens stay, so fields they name are still dropped
    on the way up.
    """
    return Request(
        request.method if method is None else method, request.target, request.version, headers,
        request.content_length, request.chunked, request.keep_alive, request.expect_continue,
        request.host, request.connection,
    )  # fmt: skip
