"""Retry budget: retries may not outgrow a share of recent requests.

Invariants:

- Over the window the budget sees (the current slice and the ``buckets - 1``
  before it, see below), retries may not exceed ``minimum + ratio *
  requests``; ``can_retry`` answers whether one more would still fit. The
  ``minimum`` keeps a quiet backend retryable, the ratio caps the extra load
  retries add when everything fails (an outage costs at most ``ratio`` more
  requests, plus ``minimum`` per window), which is why a budget, not a
  per-request count, is what stops retry storms.
- Memory is bounded: counts live in ``buckets`` equal slices of the window (10
  by default), not per event. A count recorded at ``now`` belongs to slice
  ``floor(now * buckets / window)`` and is forgotten once ``now`` reaches the
  slice ``buckets`` later, so it is remembered for between ``window * (1 - 1 /
  buckets)`` and ``window`` seconds; it never counts for longer than the
  window. So an arbitrary interval of ``window`` seconds that straddles two
  slices can hold at most one slice's allowance more than the budget (a
  burst at the end of the oldest slice, another once it has left); finer
  slices shrink that tolerance.
- The ratio is compared exactly: it is read as the nearest fraction with a
  denominator of at most 10**6 (0.2 is 1/5), and retries are compared with
  requests in integers, so ``ratio * requests`` has no rounding surprises at
  the boundary.
- Time is passed in (``now``, seconds as from ``IReactorTime.seconds``);
  nothing here reads a clock. A ``now`` earlier than one already seen counts
  in the latest slice: a clock stepping back neither rewinds nor expires
  anything.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["RetryBudget"]


class RetryBudget:
    """Sliding-window retry budget for one backend.

    Call ``record_request(now)`` for every request sent to the backend (first
    attempts), ``can_retry(now)`` before retrying one, and
    ``record_retry(now)`` when the retry is sent.
    """

    __slots__ = (
        "ratio",
        "minimum",
        "window",
        "buckets",
        "_numerator",
        "_denominator",
        "_requests",
        "_retries",
        "_request_total",
        "_retry_total",
        "_latest",
    )

    def __init__(self, ratio: float, minimum: int, window: float, *, buckets: int = 10) -> None:
        if not ratio >= 0 or math.isinf(ratio):
            raise ValueError(f"ratio must be a finite number of at least 0, got {ratio!r}")
        if minimum < 0:
            raise ValueError(f"minimum must be at least 0, got {minimum!r}")
        if not window > 0 or math.isinf(window):
            raise ValueError(f"window must be a finite number of seconds above 0, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        self.ratio = ratio
        self.minimum = minimum
        self.window = window
        self.buckets = buckets
        exact = Fraction(ratio).limit_denominator(10**6)
        self._numerator = exact.numerator
        self._denominator = exact.denominator
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._request_total = 0
        self._retry_total = 0
        self._latest: int | None = None  # the slice counted in last

    def _advance(self, now: float) -> int:
        """Forget slices that left the window by ``now``; the slot to count in."""
        current = math.floor(now * self.buckets / self.window)
        latest = self._latest
        if latest is not None and current <= latest:
            return latest % self.buckets
        if latest is None or current - latest >= self.buckets:
            self._requests = [0] * self.buckets
            self._retries = [0] * self.buckets
            self._request_total = self._retry_total = 0
        else:
            for passed in range(latest + 1, current + 1):
                slot = passed % self.buckets
                self._request_total -= self._requests[slot]
                self._retry_total -= self._retries[slot]
                self._requests[slot] = self._retries[slot] = 0
        self._latest = current
        return current % self.buckets

    def record_request(self, now: float) -> None:
        """Count one request (a first attempt) at ``now``."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._request_total += 1

    def record_retry(self, now: float) -> None:
        """Count one retry sent at ``now``, whether or not the budget allowed it."""
        slot = self._advance(now)
        self._retries[slot] += 1
        self._retry_total += 1

    def can_retry(self, now: float) -> bool:
        """Whether one more retry at ``now`` stays within ``minimum + ratio * requests``."""
        self._advance(now)
        # retries + 1 <= minimum + n/d * requests, multiplied through by d
        spare = self._retry_total + 1 - self.minimum
        return spare * self._denominator <= self._numerator * self._request_total

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self._retry_total} retries / {self._request_total} requests"
            f" (allowed {self.minimum} + {self.ratio} * requests per {self.window}s)>"
        )
