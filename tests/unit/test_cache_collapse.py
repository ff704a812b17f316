"""Request collapsing (gateway.cache.collapse): fills, waiters and their outcomes."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.collapse import FillTable, Outcome


class FillTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.table = FillTable(self.clock)
        self.woken: list[tuple[str, Outcome]] = []

    def waiter(self, fill, name: str, headers=(), timeout: float = 5.0):
        return fill.wait(lambda outcome: self.woken.append((name, outcome)), list(headers), timeout)

    def test_one_fill_per_key(self) -> None:
        """A key has one leader; a second lead for it gets None."""
        fill = self.table.lead(b"k")
        self.assertIsNotNone(fill)
        self.assertIsNone(self.table.lead(b"k"))
        self.assertIs(self.table.get(b"k"), fill)

    def test_finish_wakes_every_waiter_once(self) -> None:
        """finish() leaves the table first, then wakes each waiter with the outcome."""
        fill = self.table.lead(b"k")
        self.waiter(fill, "a")
        self.waiter(fill, "b")
        fill.finish(Outcome.STORED)
        fill.finish(Outcome.FAILED)
        self.assertEqual(self.woken, [("a", Outcome.STORED), ("b", Outcome.STORED)])
        self.assertIsNone(self.table.get(b"k"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """A waiter is woken with TIMEOUT after its timeout, and not again at finish."""
        fill = self.table.lead(b"k")
        self.waiter(fill, "a", timeout=2.0)
        self.clock.advance(1.99)
        self.assertEqual(self.woken, [])
        self.clock.advance(0.02)
        self.assertEqual(self.woken, [("a", Outcome.TIMEOUT)])
        fill.finish(Outcome.STORED)
        self.assertEqual(len(self.woken), 1)

    def test_cancel(self) -> None:
        """A cancelled waiter is never woken and its timer is gone."""
        fill = self.table.lead(b"k")
        self.waiter(fill, "a").cancel()
        fill.finish(Outcome.STORED)
        self.assertEqual(self.woken, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_vary_releases_non_matching(self) -> None:
        """RFC 9111 §4.1: waiters whose varied field differs are released (UNSTORED); the rest wait."""
        fill = self.table.lead(b"k")
        self.waiter(fill, "en", [(b"Accept-Language", b"en")])
        self.waiter(fill, "fr", [(b"Accept-Language", b"fr")])
        self.waiter(fill, "none")
        fill.vary((b"accept-language",), (b"en",))
        self.assertEqual(self.woken, [("fr", Outcome.UNSTORED), ("none", Outcome.UNSTORED)])
        self.assertEqual(len(fill), 1)

    def test_raising_waiter_does_not_stop_others(self) -> None:
        """A waiter whose callback raises is logged; the next is still woken."""
        fill = self.table.lead(b"k")

        def boom(outcome: Outcome) -> None:
            raise RuntimeError("boom")

        fill.wait(boom, [], 5.0)
        self.waiter(fill, "b")
        fill.finish(Outcome.UNSTORED)
        self.assertEqual(self.woken, [("b", Outcome.UNSTORED)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancel_during_wake(self) -> None:
        """A waiter cancelled while another is being woken is skipped."""
        fill = self.table.lead(b"k")
        holder: list = []

        def first(outcome: Outcome) -> None:
            holder[0].cancel()

        fill.wait(first, [], 5.0)
        holder.append(self.waiter(fill, "b"))
        fill.finish(Outcome.STORED)
        self.assertEqual(self.woken, [])
