"""Deadline: one call at one moment, re-armed without rescheduling timers."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.deadline import Deadline


class DeadlineTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadline = Deadline(self.clock)
        self.calls: list[str] = []

    def _call(self, name: str):  # type: ignore[no-untyped-def]
        return lambda: self.calls.append(name)

    def test_runs_at_deadline(self) -> None:
        """The call runs when its time comes, not a moment before."""
        self.deadline.arm(10, self._call("a"))
        self.clock.advance(9.999)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.001)
        self.assertEqual(self.calls, ["a"])
        self.assertFalse(self.deadline.armed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_later_rearm_keeps_timer(self) -> None:
        """A later deadline schedules nothing new; the early timer catches up."""
        self.deadline.arm(10, self._call("a"))
        timer = self.clock.getDelayedCalls()[0]
        self.clock.advance(5)
        self.deadline.arm(10, self._call("b"))
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.clock.advance(5)
        self.assertEqual(self.calls, [])
        self.clock.advance(4.5)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.5)
        self.assertEqual(self.calls, ["b"])

    def test_sooner_rearm_replaces_timer(self) -> None:
        """A sooner deadline runs on time, not when the old timer would fire."""
        self.deadline.arm(60, self._call("idle"))
        self.deadline.arm(10, self._call("header"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.calls, ["header"])

    def test_disarm_leaves_timer_to_lapse(self) -> None:
        """Disarmed, nothing runs; the timer fires once and is gone."""
        self.deadline.arm(10, self._call("a"))
        self.deadline.disarm()
        self.assertFalse(self.deadline.armed)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearm_after_disarm(self) -> None:
        """Armed again after a disarm, the new call runs at its own time."""
        self.deadline.arm(10, self._call("a"))
        self.deadline.disarm()
        self.clock.advance(3)
        self.deadline.arm(10, self._call("b"))
        self.clock.advance(10)
        self.assertEqual(self.calls, ["b"])

    def test_stop_cancels(self) -> None:
        """Stopped, no timer is left to keep the owner alive."""
        self.deadline.arm(10, self._call("a"))
        self.deadline.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.calls, [])
        self.deadline.stop()  # twice is harmless

    def test_call_may_rearm(self) -> None:
        """A call that arms the deadline again (idle after idle) is scheduled anew."""

        def again() -> None:
            self.calls.append("tick")
            if len(self.calls) < 2:
                self.deadline.arm(5, again)

        self.deadline.arm(5, again)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.calls, ["tick", "tick"])
