"""Tests for gateway.spool: budget, memory-then-disk spool, cleanup, sweep.

Spools are read by the real gateway.bodystore.BodyProducer into StringTransports
on a MemoryReactorClock moved one reactor turn at a time. Spool files are
found through /proc/self/fd, which shows an open-but-unlinked file as
``<dir>/gw-spool-… (deleted)``: that is how a test sees a file exist while the
directory is empty.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Callable, cast

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.bodystore import Abort, BodyProducer, Flow, IBodySource
from gateway.chunked import LAST_CHUNK, encode_chunk
from gateway.spool import (
    SPOOL_PREFIX,
    Room,
    Spool,
    SpoolBudget,
    SpoolDirError,
    SpoolError,
    SpoolLimits,
    SpoolOverflow,
    check_spool_dir,
    open_spool,
    sweep_spool_dir,
)


def turn(clock: MemoryReactorClock) -> int:
    """Run one reactor turn: the calls due now, not the ones they schedule."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return len(due)


def run(clock: MemoryReactorClock, limit: int = 10_000) -> int:
    """Run turns until nothing is due; how many ran (bounded)."""
    for turns in range(limit):
        if not turn(clock):
            return turns
    raise AssertionError("the reactor never went idle")


def spool_fds(directory: str) -> list[tuple[int, str]]:
    """Open descriptors of this process on files in ``directory``, with their targets."""
    prefix = os.path.realpath(directory) + os.sep
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append((int(name), target))
    return found


def read_all(spool: Spool) -> bytes:
    """Everything readable in ``spool`` now, read as a producer would."""
    pieces = []
    pos = 0
    while pos < spool.available:
        piece = spool.read(pos, 65536)
        assert piece, pos
        pieces.append(piece)
        pos += len(piece)
    return b"".join(pieces)


class Ends:
    """Records a producer's end callbacks, and optionally closes the spool on each."""

    def __init__(self, spool: Spool | None = None) -> None:
        self.spool = spool
        self.done: list[int] = []
        self.aborted: list[tuple[int, Abort]] = []

    def on_done(self, sent: int) -> None:
        self.done.append(sent)
        if self.spool is not None:
            self.spool.close()

    def on_abort(self, sent: int, why: Abort) -> None:
        self.aborted.append((sent, why))
        if self.spool is not None:
            self.spool.close()


class SpoolCase(SynchronousTestCase):
    """A temporary spool directory, a budget, small limits and a clock."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.budget = SpoolBudget(1024 * 1024, 10 * 1024 * 1024)
        self.limits = SpoolLimits(memory=1000, max_size=100_000)
        self.clock = MemoryReactorClock()
        self.transport = StringTransport()

    def open(self, expected: int = -1) -> Spool:
        spool = open_spool(self.budget, self.limits, self.directory, expected=expected)
        assert spool is not None
        self.addCleanup(spool.close)
        return spool

    def reader(self, spool: Spool, ends: Ends, **kw: object) -> BodyProducer:
        producer = BodyProducer(
            self.clock,
            spool,
            self.transport,
            on_done=ends.on_done,
            on_abort=ends.on_abort,
            **kw,  # type: ignore[arg-type]
        )
        producer.start()
        return producer

    def assertClean(self) -> None:
        """Nothing left: empty directory, no open spool file, budget at zero."""
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(spool_fds(self.directory), [])
        self.assertEqual(
            (self.budget.memory_used, self.budget.disk_used, self.budget.spools), (0, 0, 0)
        )


class BudgetTests(SynchronousTestCase):
    def test_memory_reserve_up_to_limit(self) -> None:
        """Memory can be reserved up to the limit exactly."""
        budget = SpoolBudget(100, 0)
        self.assertTrue(budget.try_reserve_memory(60))
        self.assertTrue(budget.try_reserve_memory(40))
        self.assertEqual(budget.memory_used, 100)

    def test_memory_reserve_past_limit(self) -> None:
        """One byte past the memory limit is refused and nothing is counted."""
        budget = SpoolBudget(100, 0)
        self.assertTrue(budget.try_reserve_memory(100))
        self.assertFalse(budget.try_reserve_memory(1))
        self.assertEqual(budget.memory_used, 100)

    def test_disk_reserve_up_to_limit(self) -> None:
        """Disk can be reserved up to the limit exactly."""
        budget = SpoolBudget(0, 100)
        self.assertTrue(budget.try_reserve_disk(100))
        self.assertEqual(budget.disk_used, 100)

    def test_disk_reserve_past_limit(self) -> None:
        """One byte past the disk limit is refused and nothing is counted."""
        budget = SpoolBudget(0, 100)
        self.assertFalse(budget.try_reserve_disk(101))
        self.assertEqual(budget.disk_used, 0)

    def test_release_makes_room(self) -> None:
        """Released bytes can be reserved again."""
        budget = SpoolBudget(100, 100)
        budget.try_reserve_memory(100)
        budget.try_reserve_disk(100)
        budget.release_memory(100)
        budget.release_disk(100)
        self.assertTrue(budget.try_reserve_memory(100))
        self.assertTrue(budget.try_reserve_disk(100))

    def test_charge_counts_past_limit(self) -> None:
        """A charge (a full spool's overdraft) counts even past the limit."""
        budget = SpoolBudget(100, 100)
        budget.charge_memory(150)
        budget.charge_disk(150)
        self.assertEqual((budget.memory_used, budget.disk_used), (150, 150))
        self.assertFalse(budget.try_reserve_memory(0 + 1))

    def test_limit_lowered_live(self) -> None:
        """Lowering a limit (reload) keeps what is counted and refuses more."""
        budget = SpoolBudget(100, 100)
        budget.try_reserve_memory(80)
        budget.memory_limit = 50
        self.assertEqual(budget.memory_used, 80)
        self.assertFalse(budget.try_reserve_memory(1))

    def test_negative_limits_rejected(self) -> None:
        """Negative budget limits are refused."""
        self.assertRaises(ValueError, SpoolBudget, -1, 0)
        self.assertRaises(ValueError, SpoolBudget, 0, -1)

    def test_limits_defaults(self) -> None:
        """Per-body limits default to 64 KiB in memory and 1 GiB in total."""
        self.assertEqual(SpoolLimits(), SpoolLimits(memory=65536, max_size=1 << 30))

    def test_negative_spool_limits_rejected(self) -> None:
        """Negative per-body limits are refused."""
        self.assertRaises(ValueError, SpoolLimits, memory=-1)
        self.assertRaises(ValueError, SpoolLimits, max_size=-1)


class AdmissionTests(SpoolCase):
    def test_spool_provides_body_source(self) -> None:
        """Spool provides IBodySource, like the cache's file ranges."""
        self.assertTrue(verifyObject(IBodySource, self.open()))

    def test_unknown_length_reserves_memory_limit(self) -> None:
        """A body of unknown length reserves the per-body memory limit up front."""
        self.open()
        self.assertEqual((self.budget.memory_used, self.budget.spools), (1000, 1))

    def test_unknown_length_admitted_at_exact_fit(self) -> None:
        """With exactly the per-body memory left, a new body is admitted."""
        self.budget.memory_limit = 1000
        self.assertIsNotNone(self.open())

    def test_unknown_length_refused_one_byte_short(self) -> None:
        """With one byte less than the per-body memory left, open_spool says stream instead."""
        self.budget.memory_limit = 999
        self.assertIsNone(open_spool(self.budget, self.limits, self.directory))
        self.assertEqual((self.budget.memory_used, self.budget.spools), (0, 0))

    def test_small_known_length_reserves_exactly(self) -> None:
        """A Content-Length that fits in memory reserves just that."""
        self.open(expected=300)
        self.assertEqual((self.budget.memory_used, self.budget.disk_used), (300, 0))

    def test_large_known_length_reserves_disk(self) -> None:
        """A Content-Length past the memory limit reserves disk for all of it."""
        self.open(expected=5000)
        self.assertEqual((self.budget.memory_used, self.budget.disk_used), (0, 5000))

    def test_large_known_length_exact_disk_fit(self) -> None:
        """A large body is admitted when the disk budget left is exactly its length."""
        self.budget.disk_limit = 5000
        self.assertIsNotNone(self.open(expected=5000))

    def test_large_known_length_refused_one_byte_short(self) -> None:
        """A large body is refused when the disk budget is one byte short."""
        self.budget.disk_limit = 4999
        self.assertIsNone(open_spool(self.budget, self.limits, self.directory, expected=5000))
        self.assertEqual((self.budget.disk_used, self.budget.spools), (0, 0))

    def test_known_length_at_max_size_admitted(self) -> None:
        """A Content-Length of exactly max_size is spooled."""
        self.assertIsNotNone(self.open(expected=100_000))

    def test_known_length_past_max_size_refused(self) -> None:
        """A Content-Length past max_size is never spooled."""
        self.assertIsNone(open_spool(self.budget, self.limits, self.directory, expected=100_001))


class MemoryTests(SpoolCase):
    def test_memory_only_body(self) -> None:
        """A body within the memory limit stays in memory: no file, nothing on disk."""
        spool = self.open()
        self.assertIs(spool.write(b"a" * 600), Room.OPEN)
        self.assertIs(spool.write(b"b" * 400), Room.OPEN)
        spool.finish()
        self.assertFalse(spool.spilled)
        self.assertEqual(read_all(spool), b"a" * 600 + b"b" * 400)
        self.assertEqual(spool_fds(self.directory), [])
        self.assertEqual((self.budget.memory_used, self.budget.disk_used), (1000, 0))

    def test_large_pieces_not_joined(self) -> None:
        """Pieces are kept as written: reading one back returns the same object."""
        self.limits = SpoolLimits(memory=65536)
        spool = self.open()
        first, second = b"x" * 20000, b"y" * 20000
        spool.write(first)
        spool.write(second)
        self.assertIs(spool.read(0, 65536), first)
        self.assertIs(spool.read(20000, 65536), second)

    def test_small_writes_gathered(self) -> None:
        """Tiny writes (one-byte chunks) are gathered, not kept one object each."""
        spool = self.open()
        for i in range(500):
            spool.write(bytes([i % 256]))
        self.assertEqual(spool.read(0, 1000), bytes(i % 256 for i in range(500)))

    def test_finish_returns_unused_reservation(self) -> None:
        """finish() gives back the part of the up-front reservation not used."""
        spool = self.open()
        spool.write(b"abc")
        spool.finish()
        self.assertEqual(self.budget.memory_used, 3)
        self.assertEqual(spool.length, 3)

    def test_length_unknown_until_finish(self) -> None:
        """length is -1 while the body is written, its size once finished."""
        spool = self.open()
        spool.write(b"abc")
        self.assertEqual((spool.length, spool.available), (-1, 3))

    def test_empty_write_changes_nothing(self) -> None:
        """Writing b'' stores nothing and answers the current room."""
        spool = self.open()
        self.assertIs(spool.write(b""), Room.OPEN)
        self.assertEqual(spool.available, 0)

    def test_write_after_finish_dropped(self) -> None:
        """A write after finish() is dropped and answered CLOSED."""
        spool = self.open()
        spool.finish()
        self.assertIs(spool.write(b"late"), Room.CLOSED)
        self.assertEqual(spool.available, 0)

    def test_write_after_close_dropped(self) -> None:
        """A write after close() (client gone) is dropped and answered CLOSED."""
        spool = self.open()
        spool.close()
        self.assertIs(spool.write(b"late"), Room.CLOSED)
        self.assertClean()


class SpillTests(SpoolCase):
    def test_exactly_memory_limit_stays_in_memory(self) -> None:
        """A body of exactly the memory limit does not spill."""
        spool = self.open()
        spool.write(b"x" * 1000)
        self.assertFalse(spool.spilled)

    def test_one_byte_past_limit_spills(self) -> None:
        """One byte past the memory limit moves the body to a file."""
        spool = self.open()
        spool.write(b"x" * 1000)
        spool.write(b"y")
        self.assertTrue(spool.spilled)

    def test_spill_file_is_unlinked(self) -> None:
        """The spool file is open but already unlinked: the directory stays empty."""
        spool = self.open()
        spool.write(b"x" * 1500)
        self.assertEqual(os.listdir(self.directory), [])
        [(fd, target)] = spool_fds(self.directory)
        self.assertTrue(os.path.basename(target).startswith(SPOOL_PREFIX))
        self.assertTrue(target.endswith(" (deleted)"))
        self.assertEqual(os.fstat(fd).st_nlink, 0)

    def test_spill_moves_accounting_to_disk(self) -> None:
        """After a spill the bytes count on disk, none in memory."""
        spool = self.open()
        spool.write(b"x" * 700)
        spool.write(b"y" * 700)
        self.assertEqual((self.budget.memory_used, self.budget.disk_used), (0, 1400))

    def test_body_intact_across_spill(self) -> None:
        """Bytes written before and after the spill read back in order."""
        spool = self.open()
        body = bytes(range(256)) * 200
        for i in range(0, len(body), 333):
            spool.write(body[i : i + 333])
        spool.finish()
        self.assertTrue(spool.spilled)
        self.assertEqual(read_all(spool), body)

    def test_large_pieces_written_through(self) -> None:
        """Large writes on disk go to the file at once, and read back intact."""
        spool = self.open()
        body = os.urandom(50_000)
        spool.write(body[:20_000])
        spool.write(body[20_000:])
        [(fd, _)] = spool_fds(self.directory)
        self.assertEqual(os.fstat(fd).st_size, 50_000)
        self.assertEqual(read_all(spool), body)

    def test_large_known_length_goes_straight_to_disk(self) -> None:
        """A body announced larger than the memory limit is on disk from its first byte."""
        spool = self.open(expected=5000)
        spool.write(b"x" * 10)
        self.assertTrue(spool.spilled)
        self.assertEqual(self.budget.memory_used, 0)

    def test_finish_on_disk_trims_reservation(self) -> None:
        """A body shorter than announced gives back the disk it didn't use."""
        spool = self.open(expected=5000)
        spool.write(b"x" * 2000)
        spool.finish()
        self.assertEqual(self.budget.disk_used, 2000)


class OverflowTests(SpoolCase):
    def test_exactly_max_size_accepted(self) -> None:
        """A body of exactly max_size is stored."""
        spool = self.open()
        spool.write(b"x" * 60_000)
        self.assertIs(spool.write(b"y" * 40_000), Room.OPEN)
        self.assertEqual(spool.available, 100_000)

    def test_one_byte_past_max_size_raises(self) -> None:
        """One byte past max_size raises SpoolOverflow (413) and stores nothing."""
        spool = self.open()
        spool.write(b"x" * 100_000)
        exc = self.assertRaises(SpoolOverflow, spool.write, b"y")
        self.assertEqual(exc.status, 413)
        self.assertEqual(spool.available, 100_000)
        self.assertFalse(spool.failed)

    def test_overflow_then_close_is_clean(self) -> None:
        """The caller's abort after an overflow leaves nothing behind."""
        spool = self.open()
        spool.write(b"x" * 99_000)
        self.assertRaises(SpoolOverflow, spool.write, b"y" * 2000)
        spool.close()
        self.assertClean()


class FullTests(SpoolCase):
    """Outgrowing the budget midway: the body is accepted and becomes a stream."""

    def test_no_disk_budget_goes_full_in_memory(self) -> None:
        """Past the memory limit with no disk budget, write answers FULL and keeps the bytes."""
        self.budget.disk_limit = 0
        spool = self.open()
        spool.write(b"x" * 800)
        self.assertIs(spool.write(b"y" * 400), Room.FULL)
        self.assertFalse(spool.spilled)
        self.assertEqual(read_all(spool), b"x" * 800 + b"y" * 400)
        self.assertEqual(self.budget.memory_used, 1200)

    def test_no_file_goes_full_in_memory(self) -> None:
        """If no spool file can be made (directory gone), the spool goes FULL, not failed."""
        spool = self.open()
        shutil.rmtree(self.directory)
        self.assertIs(spool.write(b"x" * 1200), Room.FULL)
        self.assertFalse(spool.failed)
        self.assertEqual(self.budget.disk_used, 0)
        self.assertEqual(read_all(spool), b"x" * 1200)

    def test_full_on_disk(self) -> None:
        """Past the disk budget midway, write answers FULL and keeps the bytes in memory.

        The disk cap holds exactly: what the budget can't cover waits in memory
        (one read per full spool) until the reader has passed it on.
        """
        self.budget.disk_limit = 50_000
        spool = self.open()
        spool.write(b"a" * 1000)
        self.assertIs(spool.write(b"b" * 20_000), Room.OPEN)
        self.assertIs(spool.write(b"c" * 40_000), Room.FULL)
        self.assertLessEqual(self.budget.disk_used, 50_000)
        self.assertEqual(read_all(spool), b"a" * 1000 + b"b" * 20_000 + b"c" * 40_000)

    def test_reader_catching_up_gives_room(self) -> None:
        """When the reader has passed on every byte, a full spool drops them and calls on_room."""
        self.budget.disk_limit = 0
        spool = self.open()
        rooms = []
        spool.on_room = lambda: rooms.append(spool.room)
        spool.write(b"x" * 1200)
        self.reader(spool, Ends())
        run(self.clock)
        self.assertEqual(rooms, [Room.OPEN])
        self.assertEqual(self.budget.memory_used, 0)
        self.assertIs(spool.write(b"more"), Room.OPEN)

    def test_room_not_given_before_reader_caught_up(self) -> None:
        """A full spool stays full while its reader is behind."""
        self.budget.disk_limit = 0
        spool = self.open()
        rooms: list[Room] = []
        spool.on_room = lambda: rooms.append(spool.room)
        spool.write(b"x" * 1200)
        self.reader(spool, Ends(), chunk_size=500)
        turn(self.clock)
        turn(self.clock)
        self.assertEqual(rooms, [])
        self.assertIs(spool.room, Room.FULL)

    def test_rewind_truncates_file(self) -> None:
        """A full spool on disk truncates its file and gives the disk back once read."""
        self.budget.disk_limit = 50_000
        spool = self.open()
        spool.write(b"a" * 1000)
        spool.write(b"b" * 20_000)
        spool.write(b"c" * 40_000)
        [(fd, _)] = spool_fds(self.directory)
        self.reader(spool, Ends())
        run(self.clock)
        self.assertEqual(os.fstat(fd).st_size, 0)
        self.assertEqual(self.budget.disk_used, 0)
        self.assertEqual(len(self.transport.value()), 61_000)

    def test_full_spool_streams_whole_body(self) -> None:
        """A writer that pauses on FULL and resumes on on_room delivers the body intact
        with the budget never over by more than one write."""
        self.budget = SpoolBudget(1000, 0)
        spool = self.open()
        body = os.urandom(20_000)
        ends = Ends(spool)
        paused = [False]

        def resume() -> None:
            paused[0] = False

        spool.on_room = resume
        self.reader(spool, ends, chunk_size=256)
        pos = 0
        peak = 0
        while pos < len(body):
            if paused[0]:
                self.assertTrue(turn(self.clock), "a paused writer must be woken by the reader")
                continue
            if spool.write(body[pos : pos + 300]) is Room.FULL:
                paused[0] = True
            pos += 300
            peak = max(peak, self.budget.memory_used)
            turn(self.clock)
        spool.finish()
        run(self.clock)
        self.assertEqual(self.transport.value(), body)
        self.assertEqual(ends.done, [len(body)])
        self.assertLessEqual(peak, 1000 + 300)
        self.assertClean()

    def test_dropped_bytes_cannot_be_read_again(self) -> None:
        """Bytes a full spool dropped can't be read again (it is a stream now)."""
        self.budget.disk_limit = 0
        spool = self.open()
        spool.write(b"x" * 1200)
        self.reader(spool, Ends())
        run(self.clock)
        spool.write(b"y")
        self.assertRaises(ValueError, spool.read, 0, 10)
        self.assertEqual(spool.read(1200, 10), b"y")


class ReaderTests(SpoolCase):
    """A BodyProducer reading a spool, also while it is being written."""

    def test_reads_finished_memory_spool(self) -> None:
        """A finished spool in memory is streamed whole, then on_done."""
        spool = self.open()
        spool.write(b"hello ")
        spool.write(b"world")
        spool.finish()
        ends = Ends()
        producer = self.reader(spool, ends)
        run(self.clock)
        self.assertEqual(self.transport.value(), b"hello world")
        self.assertEqual(ends.done, [11])
        self.assertIs(producer.flow, Flow.DONE)
        self.assertIsNone(self.transport.producer)

    def test_reader_waits_without_polling(self) -> None:
        """A reader that caught up waits with nothing scheduled (no busy loop)."""
        spool = self.open()
        spool.write(b"first")
        producer = self.reader(spool, Ends())
        run(self.clock)
        self.assertEqual(self.transport.value(), b"first")
        self.assertIs(producer.flow, Flow.WAITING)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_write_wakes_waiting_reader(self) -> None:
        """A write wakes a waiting reader, which sends it on the next turn, not inside write."""
        spool = self.open()
        spool.write(b"first")
        self.reader(spool, Ends())
        run(self.clock)
        spool.write(b"second")
        self.assertEqual(self.transport.value(), b"first")
        self.assertEqual(turn(self.clock), 1)
        self.assertEqual(self.transport.value(), b"firstsecond")

    def test_finish_ends_waiting_reader(self) -> None:
        """finish() ends a waiting reader with on_done and the bytes sent."""
        spool = self.open()
        ends = Ends()
        self.reader(spool, ends)
        spool.write(b"abc")
        run(self.clock)
        spool.finish()
        run(self.clock)
        self.assertEqual(ends.done, [3])

    def test_reader_follows_writer_across_spill(self) -> None:
        """A reader interleaved with the writer gets the body intact across the spill."""
        spool = self.open()
        body = os.urandom(30_000)
        ends = Ends()
        self.reader(spool, ends, chunk_size=700)
        for i in range(0, len(body), 450):
            spool.write(body[i : i + 450])
            turn(self.clock)
        spool.finish()
        run(self.clock)
        self.assertTrue(spool.spilled)
        self.assertEqual(self.transport.value(), body)
        self.assertEqual(ends.done, [len(body)])

    def test_pause_while_waiting(self) -> None:
        """A paused reader isn't woken by writes; resume sends what arrived."""
        spool = self.open()
        producer = self.reader(spool, Ends())
        run(self.clock)
        producer.pauseProducing()
        spool.write(b"data")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        producer.resumeProducing()
        run(self.clock)
        self.assertEqual(self.transport.value(), b"data")


class Watched:
    """Passes reads to a spool and counts the reader's pending notify callbacks."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.pending = 0
        self._fires: dict[object, object] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.spool, name)

    def notify(self, callback: Callable[[], None]) -> None:
        self.pending += 1

        def fire() -> None:
            self._fires.pop(callback, None)
            self.pending -= 1
            callback()

        self._fires[callback] = fire
        self.spool.notify(fire)

    def cancel_notify(self, callback: Callable[[], None]) -> None:
        fire = self._fires.pop(callback, None)
        if fire is not None:
            self.pending -= 1
            self.spool.cancel_notify(fire)  # type: ignore[arg-type]


class WaiterTests(SpoolCase):
    def test_pause_cancels_wait(self) -> None:
        """Pausing a waiting reader withdraws its callback, so pause/resume cycles
        while the writer is quiet don't pile callbacks up on the spool."""
        spool = self.open()
        watched = Watched(spool)
        ends = Ends()
        producer = BodyProducer(
            self.clock,
            cast(IBodySource, watched),
            self.transport,
            on_done=ends.on_done,
            on_abort=ends.on_abort,
        )
        producer.start()
        for _ in range(50):
            run(self.clock)
            self.assertEqual(watched.pending, 1)
            producer.pauseProducing()
            self.assertEqual(watched.pending, 0)
            producer.resumeProducing()
        spool.write(b"x")
        run(self.clock)
        self.assertEqual(self.transport.value(), b"x")

    def test_stop_cancels_wait(self) -> None:
        """A waiting reader that is stopped withdraws its callback."""
        spool = self.open()
        watched = Watched(spool)
        ends = Ends()
        producer = BodyProducer(
            self.clock,
            cast(IBodySource, watched),
            self.transport,
            on_done=ends.on_done,
            on_abort=ends.on_abort,
        )
        producer.start()
        run(self.clock)
        producer.stopProducing()
        self.assertEqual(watched.pending, 0)


class CleanupTests(SpoolCase):
    """Every way a body can end leaves no file, no descriptor and no budget."""

    def spilled_spool(self) -> Spool:
        spool = self.open()
        spool.write(b"x" * 3000)
        self.assertEqual(len(spool_fds(self.directory)), 1)
        return spool

    def test_completion(self) -> None:
        """Completion: the owner closes the spool from on_done."""
        spool = self.spilled_spool()
        spool.finish()
        ends = Ends(spool)
        self.reader(spool, ends)
        run(self.clock)
        self.assertEqual(ends.done, [3000])
        self.assertClean()

    def test_client_abort(self) -> None:
        """Client gone mid-body: stopProducing, on_abort, the owner closes."""
        spool = self.spilled_spool()
        ends = Ends(spool)
        producer = self.reader(spool, ends, chunk_size=1000)
        turn(self.clock)
        producer.stopProducing()
        self.assertEqual(ends.aborted, [(1000, Abort.CONSUMER_GONE)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertClean()

    def test_upstream_abort(self) -> None:
        """Upstream gone mid-body: closing the spool aborts its waiting reader."""
        spool = self.spilled_spool()
        ends = Ends()
        self.reader(spool, ends)
        run(self.clock)
        spool.close()
        run(self.clock)
        self.assertEqual(ends.aborted, [(3000, Abort.SOURCE_FAILED)])
        self.assertIsNone(self.transport.producer)
        self.assertClean()

    def test_shutdown_with_paused_reader(self) -> None:
        """Shutdown closes a spool whose slow reader is paused: budget back at once."""
        spool = self.spilled_spool()
        ends = Ends()
        producer = self.reader(spool, ends, chunk_size=1000)
        turn(self.clock)
        producer.pauseProducing()
        spool.close()
        self.assertClean()
        producer.resumeProducing()
        run(self.clock)
        self.assertEqual(ends.aborted, [(1000, Abort.SOURCE_FAILED)])

    def test_disk_error(self) -> None:
        """A failed disk write raises SpoolError, fails the reader, and close cleans up."""
        spool = self.spilled_spool()
        ends = Ends(spool)
        self.reader(spool, ends)
        run(self.clock)

        def no_space(fd: int, data: object, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "pwrite", no_space)
        self.assertRaises(SpoolError, spool.write, b"y" * 20_000)
        self.assertTrue(spool.failed)
        run(self.clock)
        self.assertEqual(ends.aborted, [(3000, Abort.SOURCE_FAILED)])
        self.assertClean()

    def test_close_twice(self) -> None:
        """close() twice gives back the budget once."""
        spool = self.spilled_spool()
        spool.close()
        spool.close()
        self.assertClean()

    def test_memory_spool_closed(self) -> None:
        """A spool that never spilled gives back its memory on close."""
        spool = self.open()
        spool.write(b"x" * 10)
        spool.close()
        self.assertClean()


class SweepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def touch(self, name: str) -> None:
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(b"left over")

    def test_sweep_removes_leftovers(self) -> None:
        """Stale spool files are deleted and counted."""
        self.touch(SPOOL_PREFIX + "abc")
        self.touch(SPOOL_PREFIX + "def")
        self.assertEqual(sweep_spool_dir(self.directory), 2)
        self.assertEqual(os.listdir(self.directory), [])

    def test_sweep_spares_other_files(self) -> None:
        """Files not named like spool files, and directories, are left alone."""
        self.touch("operator-notes.txt")
        os.mkdir(os.path.join(self.directory, SPOOL_PREFIX + "dir"))
        self.assertEqual(sweep_spool_dir(self.directory), 0)
        self.assertEqual(
            sorted(os.listdir(self.directory)), [SPOOL_PREFIX + "dir", "operator-notes.txt"]
        )

    def test_sweep_empty_directory(self) -> None:
        """An empty directory sweeps to nothing."""
        self.assertEqual(sweep_spool_dir(self.directory), 0)


class CheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def test_writable_directory_passes(self) -> None:
        """A writable directory passes and is left empty."""
        check_spool_dir(self.directory)
        self.assertEqual(os.listdir(self.directory), [])

    def test_missing_directory(self) -> None:
        """A missing directory is reported with its path."""
        missing = os.path.join(self.directory, "nope")
        exc = self.assertRaises(SpoolDirError, check_spool_dir, missing)
        self.assertIn(missing, str(exc))
        self.assertIn("does not exist", str(exc))

    def test_not_a_directory(self) -> None:
        """A regular file where the directory should be is reported."""
        path = os.path.join(self.directory, "file")
        open(path, "wb").close()
        exc = self.assertRaises(SpoolDirError, check_spool_dir, path)
        self.assertIn("not a directory", str(exc))

    def test_unwritable_directory(self) -> None:
        """A directory where files can't be created is reported, with the OS error as cause."""

        def denied(*args: object, **kw: object) -> tuple[int, str]:
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch(tempfile, "mkstemp", denied)
        exc = self.assertRaises(SpoolDirError, check_spool_dir, self.directory)
        self.assertIn("can't create files: Permission denied", str(exc))
        self.assertIsInstance(exc.__cause__, PermissionError)


class RequestBodyTests(SpoolCase):
    """A request body buffered whole, then sent upstream by the same producer."""

    def buffer(self, body: bytes, expected: int = -1) -> Spool:
        spool = self.open(expected=expected)
        for i in range(0, len(body), 7):  # a client's small chunks
            self.assertIs(spool.write(body[i : i + 7]), Room.OPEN)
        spool.finish()
        return spool

    def send(self, spool: Spool, upstream: StringTransport) -> Ends:
        ends = Ends()

        def request_end(sent: int) -> None:
            upstream.write(LAST_CHUNK)
            ends.on_done(sent)

        BodyProducer(
            self.clock,
            spool,
            upstream,
            on_done=request_end,
            on_abort=ends.on_abort,
            write=lambda d: upstream.writeSequence(encode_chunk(d)),
        ).start()
        run(self.clock)
        return ends

    def test_buffered_body_sent_upstream(self) -> None:
        """The buffered body reaches the upstream transport, re-chunked and terminated."""
        body = b"field=value&" * 50
        spool = self.buffer(body)
        upstream = StringTransport()
        ends = self.send(spool, upstream)
        self.assertEqual(ends.done, [len(body)])
        self.assertTrue(upstream.value().endswith(LAST_CHUNK))
        self.assertIn(body[:100], upstream.value().replace(b"\r\n", b""))

    def test_body_replayed_for_retry(self) -> None:
        """After one upstream failed, the same spool is read again from the start."""
        body = os.urandom(5000)
        spool = self.buffer(body)
        first, second = StringTransport(), StringTransport()
        self.send(spool, first)
        self.send(spool, second)
        self.assertEqual(first.value(), second.value())
        self.assertEqual(self.budget.disk_used, 5000)

    def test_large_request_body_on_disk(self) -> None:
        """A Content-Length past the memory limit is buffered on disk and sent intact."""
        body = os.urandom(40_000)
        spool = self.buffer(body, expected=len(body))
        self.assertTrue(spool.spilled)
        upstream = StringTransport()
        ends = BodyProducer(
            self.clock,
            spool,
            upstream,
            on_done=lambda sent: spool.close(),
            on_abort=lambda sent, why: spool.close(),
        )
        ends.start()
        run(self.clock)
        self.assertEqual(upstream.value(), body)
        self.assertClean()

    def test_request_body_over_max_size(self) -> None:
        """A request body past max_size raises SpoolOverflow with status 413."""
        spool = self.open()
        spool.write(b"x" * 100_000)
        exc = self.assertRaises(SpoolOverflow, spool.write, b"x")
        self.assertEqual(exc.status, 413)
