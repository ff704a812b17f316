"""The batched text log observer: access lines in batches, everything else at once."""

from __future__ import annotations

import io

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime
from twisted.trial.unittest import TestCase

from gateway.logbuffer import ACCESS_NAMESPACE, BATCH_BYTES, FLUSH_INTERVAL, BatchedLogObserver
from gateway.tap import Options


class _Reactor(Clock):
    """A Clock that also records shutdown triggers."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, object]] = []

    def addSystemEventTrigger(self, phase: str, event: str, call: object) -> None:
        self.triggers.append((phase, event, call))


class _Stream(io.StringIO):
    """A StringIO that counts flushes, one per write the observer makes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def _access(line: str, when: float = 1_700_000_000.25, **extra: object) -> dict[str, object]:
    return {
        "log_namespace": ACCESS_NAMESPACE,
        "log_level": LogLevel.info,
        "log_format": "{line}",
        "log_time": when,
        "line": line,
        **extra,
    }


class BatchedLogObserverTests(TestCase):
    def setUp(self) -> None:
        self.reactor = _Reactor()
        self.stream = _Stream()
        self.observer = BatchedLogObserver(self.stream, self.reactor)

    def test_access_line_matches_classic_text(self) -> None:
        """An access line reads exactly as twistd's own observer would write it."""
        event = _access('127.0.0.1 - - "GET / HTTP/1.1" 200 5')
        self.observer(event)
        self.observer.flush()
        self.assertEqual(self.stream.getvalue(), formatEventAsClassicLogText(event))

    def test_worker_label_kept(self) -> None:
        """A log_system set by the worker label is the line's system."""
        self.observer(_access("x", log_system="worker=2 gateway.access#info"))
        self.observer.flush()
        self.assertIn("[worker=2 gateway.access#info] x\n", self.stream.getvalue())

    def test_access_lines_held_until_interval(self) -> None:
        """Access lines wait for the flush interval, then leave in one write."""
        for n in range(3):
            self.observer(_access(f"line {n}"))
        self.assertEqual(self.stream.getvalue(), "")
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(FLUSH_INTERVAL)
        self.assertEqual(self.stream.getvalue().count("\n"), 3)
        self.assertEqual(self.stream.flushes, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_batch_bound(self) -> None:
        """A batch up to BATCH_BYTES is held; one line more writes it out first."""
        line = "x" * 100
        size = len(self.observer._access_text(_access(line)))
        fits = BATCH_BYTES // size
        for _ in range(fits):
            self.observer(_access(line))
        self.assertEqual(self.stream.getvalue(), "")
        self.observer(_access(line))
        written = self.stream.getvalue()
        self.assertEqual(written.count("\n"), fits)
        self.assertLessEqual(len(written), BATCH_BYTES)

    def test_other_events_flush_first(self) -> None:
        """A warning is written at once, after the access lines held before it."""
        self.observer(_access("first"))
        warning = {
            "log_namespace": "gateway.upstream",
            "log_level": LogLevel.warn,
            "log_format": "server {name} down",
            "log_time": 1_700_000_001.0,
            "name": "app1",
        }
        self.observer(warning)
        text = self.stream.getvalue()
        self.assertLess(text.index("first"), text.index("server app1 down"))
        self.assertIn("[gateway.upstream#warn] server app1 down\n", text)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_shutdown_flushes(self) -> None:
        """The reactor's shutdown trigger writes what is held."""
        self.assertEqual(self.reactor.triggers, [("after", "shutdown", self.observer.flush)])
        self.observer(_access("last"))
        _, _, trigger = self.reactor.triggers[0]
        trigger()  # type: ignore[operator]
        self.assertIn("last", self.stream.getvalue())

    def test_time_cached_per_second(self) -> None:
        """The time text is Twisted's formatTime, whatever the fraction of a second."""
        self.assertEqual(self.observer._time_text(1_700_000_000.9), formatTime(1_700_000_000.9))
        self.assertEqual(self.observer._time_text(1_700_000_001.1), formatTime(1_700_000_001.1))
        self.assertEqual(self.observer._time_text(None), "-")


class StdoutLoggerChoiceTests(TestCase):
    def _parse(self, twistd: dict[str, object]) -> Options:
        options = Options()
        options.parent = twistd  # type: ignore[attr-defined]
        options.parseOptions([])
        return options

    def test_foreground_stdout_gets_batched_observer(self) -> None:
        """``twistd -n gateway`` logs through the batched observer."""
        from gateway.tap import stdout_log_observer

        twistd: dict[str, object] = {"nodaemon": True, "logfile": None}
        options = self._parse(twistd)
        self.assertTrue(options["log_to_stdout"])
        self.assertEqual(twistd["logger"], "gateway.tap.stdout_log_observer")
        self.assertIsInstance(stdout_log_observer(), BatchedLogObserver)

    def test_logfile_left_to_twistd(self) -> None:
        """With --logfile, twistd's own observer (and its rotation) stays."""
        twistd: dict[str, object] = {"nodaemon": True, "logfile": "gw.log"}
        options = self._parse(twistd)
        self.assertFalse(options["log_to_stdout"])
        self.assertNotIn("logger", twistd)
