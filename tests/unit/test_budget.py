"""Tests for gateway.budget: the sliding-window retry budget."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.budget import RetryBudget


def spend(budget: RetryBudget, now: float) -> int:
    """Retry at ``now`` for as long as the budget allows; how many it allowed."""
    allowed = 0
    while budget.can_retry(now):
        budget.record_retry(now)
        allowed += 1
    return allowed


def requests(budget: RetryBudget, count: int, now: float) -> None:
    for _ in range(count):
        budget.record_request(now)


class BoundaryTests(SynchronousTestCase):
    def test_minimum_without_requests(self) -> None:
        """With no requests yet, exactly ``minimum`` retries fit."""
        self.assertEqual(spend(RetryBudget(0.2, 10, 10.0), 0.0), 10)

    def test_last_retry_within_budget(self) -> None:
        """With 100 requests, ratio 0.2 and minimum 10, the 30th retry still fits."""
        budget = RetryBudget(0.2, 10, 10.0)
        requests(budget, 100, 0.0)
        for _ in range(29):
            budget.record_retry(0.0)
        self.assertTrue(budget.can_retry(0.0))

    def test_first_retry_over_budget(self) -> None:
        """With 100 requests, ratio 0.2 and minimum 10, a 31st retry does not fit."""
        budget = RetryBudget(0.2, 10, 10.0)
        requests(budget, 100, 0.0)
        for _ in range(30):
            budget.record_retry(0.0)
        self.assertFalse(budget.can_retry(0.0))

    def test_fraction_rounds_down(self) -> None:
        """A fractional allowance rounds down: 0.2 * 9 requests + 0 gives one retry, not two."""
        budget = RetryBudget(0.2, 0, 10.0)
        requests(budget, 9, 0.0)
        self.assertEqual(spend(budget, 0.0), 1)

    def test_ratio_exact_at_boundary(self) -> None:
        """Ratios without an exact binary form still meet their boundary: 0.1 * 30 allows 3."""
        budget = RetryBudget(0.1, 0, 10.0)
        requests(budget, 30, 0.0)
        self.assertEqual(spend(budget, 0.0), 3)

    def test_zero_budget(self) -> None:
        """Ratio 0 and minimum 0 allow no retry at all."""
        budget = RetryBudget(0.0, 0, 10.0)
        requests(budget, 1000, 0.0)
        self.assertFalse(budget.can_retry(0.0))

    def test_record_retry_counts_regardless(self) -> None:
        """record_retry counts even past the budget, so the overspend is paid back first."""
        budget = RetryBudget(0.0, 2, 10.0)
        for _ in range(3):
            budget.record_retry(0.0)
        budget.record_request(0.0)
        self.assertFalse(budget.can_retry(0.0))


class WindowTests(SynchronousTestCase):
    def test_still_counted_before_window_ends(self) -> None:
        """Retries at 0.0 still count at 9.999 (window 10 s, slices of 1 s)."""
        budget = RetryBudget(0.0, 5, 10.0)
        spend(budget, 0.0)
        self.assertFalse(budget.can_retry(9.999))

    def test_forgotten_when_window_ends(self) -> None:
        """Retries at 0.0 are forgotten at 10.0: the full minimum is back."""
        budget = RetryBudget(0.0, 5, 10.0)
        spend(budget, 0.0)
        self.assertEqual(spend(budget, 10.0), 5)

    def test_slides_slice_by_slice(self) -> None:
        """Each slice leaves the window on its own: retries at 0 and 5 free up at 10 and 15."""
        budget = RetryBudget(0.0, 4, 10.0)
        for _ in range(2):
            budget.record_retry(0.0)
        for _ in range(2):
            budget.record_retry(5.0)
        self.assertEqual(spend(budget, 9.5), 0)
        self.assertEqual(spend(budget, 10.0), 2)
        self.assertEqual(spend(budget, 14.9), 0)
        self.assertEqual(spend(budget, 15.0), 2)

    def test_requests_expire_too(self) -> None:
        """Requests older than the window stop earning retries."""
        budget = RetryBudget(0.5, 0, 10.0)
        requests(budget, 10, 0.0)
        self.assertTrue(budget.can_retry(9.0))
        self.assertFalse(budget.can_retry(10.0))

    def test_long_gap_forgets_everything(self) -> None:
        """After more than a whole window of silence nothing is remembered."""
        budget = RetryBudget(0.0, 3, 10.0)
        spend(budget, 1.0)
        self.assertEqual(spend(budget, 1000.0), 3)

    def test_clock_stepping_back(self) -> None:
        """A ``now`` earlier than one seen counts in the latest slice: nothing is rewound."""
        budget = RetryBudget(0.0, 2, 10.0)
        budget.record_retry(20.0)
        budget.record_retry(5.0)
        self.assertFalse(budget.can_retry(20.0))
        self.assertEqual(spend(budget, 30.0), 2)

    def test_bucket_count_parameter(self) -> None:
        """With 2 slices of 5 s, retries at 1.0 are forgotten at 10.0 but not at 9.9."""
        budget = RetryBudget(0.0, 1, 10.0, buckets=2)
        budget.record_retry(1.0)
        self.assertFalse(budget.can_retry(9.9))
        self.assertTrue(budget.can_retry(10.0))

    def test_memory_bounded(self) -> None:
        """A million events keep the same fixed number of counters."""
        budget = RetryBudget(0.2, 10, 10.0)
        for step in range(1_000_000):
            budget.record_request(step * 0.001)
        self.assertEqual((len(budget._requests), len(budget._retries)), (10, 10))


class OutageTests(SynchronousTestCase):
    def test_outage_bounded(self) -> None:
        """When every request fails and asks for a retry, no window ever holds more than the budget.

        100 requests a second for 60 s, each retried while the budget allows.
        Counting exactly over every 10 s window (aligned to slices): retries
        never exceed 10 + 0.2 * requests, and the total stays near 20% extra.
        """
        budget = RetryBudget(0.2, 10, 10.0)
        events: list[tuple[float, str]] = []
        for tick in range(6000):
            now = tick * 0.01
            budget.record_request(now)
            events.append((now, "request"))
            if budget.can_retry(now):
                budget.record_retry(now)
                events.append((now, "retry"))
        for start in range(0, 51):
            inside = [kind for when, kind in events if start <= when < start + 10]
            retries, sent = inside.count("retry"), inside.count("request")
            self.assertLessEqual(retries, 10 + 0.2 * sent, f"window starting at {start}")
        total_retries = sum(kind == "retry" for _, kind in events)
        self.assertLessEqual(total_retries, 0.2 * 6000 + 10 * 6)

    def test_straddling_interval_tolerance(self) -> None:
        """The documented tolerance: a burst at a slice's end, another when it leaves, 9.01 s apart."""
        budget = RetryBudget(0.0, 10, 10.0)
        first = spend(budget, 0.99)
        second = spend(budget, 10.0)
        self.assertEqual((first, second), (10, 10))

    def test_retries_do_not_earn_retries(self) -> None:
        """Retries themselves do not raise the budget: only record_request does."""
        budget = RetryBudget(0.5, 0, 10.0)
        requests(budget, 4, 0.0)
        self.assertEqual(spend(budget, 0.0), 2)


class ValidationTests(SynchronousTestCase):
    def test_negative_ratio(self) -> None:
        """A negative ratio is refused."""
        self.assertRaises(ValueError, RetryBudget, -0.1, 10, 10.0)

    def test_negative_minimum(self) -> None:
        """A negative minimum is refused."""
        self.assertRaises(ValueError, RetryBudget, 0.2, -1, 10.0)

    def test_window_not_positive(self) -> None:
        """A window of 0 seconds is refused."""
        self.assertRaises(ValueError, RetryBudget, 0.2, 10, 0.0)

    def test_nan_ratio(self) -> None:
        """A NaN ratio is refused."""
        self.assertRaises(ValueError, RetryBudget, float("nan"), 10, 10.0)

    def test_no_buckets(self) -> None:
        """Zero slices are refused."""
        self.assertRaises(ValueError, RetryBudget, 0.2, 10, 10.0, buckets=0)
