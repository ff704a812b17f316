"""Tests for gateway.cache.journal: the records and the append-only file the processes on one cache directory share."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache import journal as journal_module
from gateway.cache.journal import (
    MAX_RECORD,
    Change,
    Journal,
    Op,
    Purge,
    Scope,
    decode,
    encode,
)

NAME = "0123456789abcdef" * 2
OTHER = "f" * 32
WRITER = "a" * 16
#: Bytes in the header line, and in one Change record line.
HEADER = 40
CHANGE = len(encode(Change(Op.ADDED, NAME, 1), WRITER))


def journal_path(case: SynchronousTestCase) -> str:
    """A journal path in a fresh directory removed after the test."""
    directory = tempfile.mkdtemp(prefix="gateway-journal-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "journal")


def added(n: int) -> Change:
    return Change(Op.ADDED, NAME, n)


class RecordTests(SynchronousTestCase):
    """The line format: every record survives a round trip; anything else is malformed."""

    def test_round_trip(self) -> None:
        """Each kind of record, encoded by a writer, decodes to the same writer and record."""
        records = [
            Change(Op.ADDED, NAME, 2**64 - 1),
            Change(Op.UPDATED, NAME, 7),
            Change(Op.REMOVED, OTHER, 0),
            Purge(Scope.KEY, b"http://h/a b\n\xff", 1_700_000_000.25),
            Purge(Scope.PREFIX, b"", 0.0),
            Purge(Scope.SURROGATE, b"tag", 12.5),
        ]
        for record in records:
            line = encode(record, WRITER)
            self.assertTrue(line.endswith(b"\n"))
            self.assertEqual(line.count(b"\n"), 1, "a key with a newline can't split a record")
            self.assertEqual(decode(line[:-1]), (WRITER, record))

    def test_change_line_size(self) -> None:
        """A change is one short line (the journal limit is counted in these)."""
        self.assertEqual(CHANGE, 69)

    def test_malformed(self) -> None:
        """Lines that are not exactly a record decode to None."""
        good = encode(added(1), WRITER)[:-1]
        for line in [b"", b"X", good[:-1], good + b" ", good.upper(), b"A " + good[2:].replace(b"a", b"g", 1),
                     b"P aaaaaaaaaaaaaaaa x 1.0 00", b"P aaaaaaaaaaaaaaaa k nan 00", b"P aaaaaaaaaaaaaaaa k 1.0 0"]:
            self.assertIsNone(decode(line), line)

    def test_values_check_themselves(self) -> None:
        """A change names an entry file and a 64-bit id; a purge time is a real time."""
        self.assertRaises(ValueError, Change, Op.ADDED, "../etc/passwd", 1)
        self.assertRaises(ValueError, Change, Op.ADDED, NAME, -1)
        self.assertRaises(ValueError, Change, Op.ADDED, NAME, 2**64)
        self.assertRaises(ValueError, Purge, Scope.KEY, b"k", float("nan"))
        self.assertRaises(ValueError, Purge, Scope.KEY, b"k", -1.0)

    def test_purge_covers(self) -> None:
        """A purge covers one key, a key prefix, or a surrogate key."""
        self.assertTrue(Purge(Scope.KEY, b"http://h/a", 0).covers(b"http://h/a", ()))
        self.assertFalse(Purge(Scope.KEY, b"http://h/a", 0).covers(b"http://h/ab", ()))
        self.assertTrue(Purge(Scope.PREFIX, b"http://h/a", 0).covers(b"http://h/ab", ()))
        self.assertFalse(Purge(Scope.PREFIX, b"http://h/a", 0).covers(b"http://h/b", ()))
        self.assertTrue(Purge(Scope.SURROGATE, b"t", 0).covers(b"k", (b"s", b"t")))
        self.assertFalse(Purge(Scope.SURROGATE, b"t", 0).covers(b"t", ()))


class ReadAppendTests(SynchronousTestCase):
    """Two instances on one file: each reads what the other appended, in order, and never its own."""

    def setUp(self) -> None:
        self.path = journal_path(self)
        self.one = Journal(self.path)
        self.two = Journal(self.path)
        self.one.open()
        self.two.open()

    def test_nothing_before_open(self) -> None:
        """Reading before open gives nothing and touches no file."""
        fresh = Journal(journal_path(self))
        self.assertEqual(fresh.read().records, ())
        self.assertFalse(os.path.exists(fresh.path))

    def test_other_writers_records_in_order(self) -> None:
        """Records appended by one instance reach the other, in order, exactly once."""
        self.one.append([added(1), added(2)])
        self.one.append([Purge(Scope.KEY, b"k", 5.0)])
        self.assertEqual(self.two.read().records, (added(1), added(2), Purge(Scope.KEY, b"k", 5.0)))
        self.assertEqual(self.two.read().records, ())

    def test_own_records_skipped(self) -> None:
        """An instance never reads back what it appended itself."""
        self.one.append([added(1)])
        self.two.append([added(2)])
        self.assertEqual(self.one.read().records, (added(2),))
        self.assertEqual(self.two.read().records, (added(1),))

    def test_open_marks_the_end(self) -> None:
        """An instance opened later reads only what comes after its open."""
        self.one.append([added(1)])
        late = Journal(self.path)
        late.open()
        self.one.append([added(2)])
        self.assertEqual(late.read().records, (added(2),))

    def test_open_inside_a_record_skips_it(self) -> None:
        """Opened while a record is half written, a reader skips that line and reads the next."""
        line = encode(added(1), WRITER)
        with open(self.path, "ab") as file:
            file.write(line[:10])
        late = Journal(self.path)
        late.open()
        with open(self.path, "ab") as file:
            file.write(line[10:])
        self.one.append([added(2)])
        self.assertEqual(late.read().records, (added(2),))

    def test_partial_line_waits(self) -> None:
        """A record still being written is not read until its line is complete."""
        line = encode(added(1), WRITER)
        with open(self.path, "ab") as file:
            file.write(line[:30])
        self.assertEqual(self.two.read().records, ())
        with open(self.path, "ab") as file:
            file.write(line[30:])
        self.assertEqual(self.two.read().records, (added(1),))

    def test_malformed_lines_skipped(self) -> None:
        """Garbage between records is skipped (and logged); the records around it are read."""
        self.one.append([added(1)])
        with open(self.path, "ab") as file:
            file.write(b"garbage\n")
        self.one.append([added(2)])
        self.assertEqual(self.two.read().records, (added(1), added(2)))

    def test_overlong_line_not_buffered(self) -> None:
        """A line past MAX_RECORD is dropped as it streams in, not kept whole; the next record is read."""
        with open(self.path, "ab") as file:
            file.write(b"x" * (MAX_RECORD + 1))
        self.assertEqual(self.two.read().records, ())
        self.assertEqual(self.two._pending, b"")
        with open(self.path, "ab") as file:
            file.write(b"x" * 100 + b"\n")
        self.one.append([added(3)])
        self.assertEqual(self.two.read().records, (added(3),))

    def test_append_creates_a_missing_journal(self) -> None:
        """An append to a deleted journal creates a new one; a reader of the old one rescans (gap)."""
        os.unlink(self.path)
        self.one.append([added(1)])
        news = self.two.read()
        self.assertEqual((news.records, news.gap), ((added(1),), True))

    def test_append_failure_logged_once(self) -> None:
        """Appends that can't be made are logged once until one works again, never raised."""
        shutil.rmtree(os.path.dirname(self.path))
        self.one.append([added(1)])
        self.one.append([added(2)])
        self.assertTrue(self.one._append_failed)
        os.makedirs(os.path.dirname(self.path))
        self.one.append([added(3)])
        self.assertFalse(self.one._append_failed)


class RotationTests(SynchronousTestCase):
    """The journal's bound: a new file past ``limit`` bytes, which readers follow without losing records."""

    def setUp(self) -> None:
        self.path = journal_path(self)
        self.limit = HEADER + 2 * CHANGE
        self.one = Journal(self.path, limit=self.limit)
        self.two = Journal(self.path, limit=self.limit)
        self.one.open()
        self.two.open()

    def size(self) -> int:
        return os.path.getsize(self.path)

    def test_at_the_limit_no_rotation(self) -> None:
        """A journal exactly ``limit`` bytes long is kept."""
        self.one.append([added(1), added(2)])
        self.assertEqual(self.size(), self.limit)
        self.assertFalse(self.one.rotate())
        self.assertEqual(self.size(), self.limit)

    def test_past_the_limit_rotated(self) -> None:
        """One byte past ``limit``, rotate starts a new file holding only its header."""
        self.one.append([added(1), added(2)])
        with open(self.path, "ab") as file:
            file.write(b"\n")
        self.assertEqual(self.size(), self.limit + 1)
        self.assertTrue(self.one.rotate())
        self.assertEqual(self.size(), HEADER)

    def test_limit_checked(self) -> None:
        """A limit smaller than a header is refused."""
        self.assertRaises(ValueError, Journal, self.path, limit=HEADER - 1)

    def test_reader_follows_a_rotation(self) -> None:
        """Records before and after a rotation both reach a reader that held the old file, without a gap."""
        self.one.append([added(1), added(2), added(3)])
        self.assertTrue(self.one.rotate())
        self.one.append([added(4)])
        news = self.two.read()
        self.assertEqual(news.records, (added(1), added(2), added(3), added(4)))
        self.assertFalse(news.gap)
        self.one.append([added(5)])
        self.assertEqual(self.two.read().records, (added(5),))

    def test_append_racing_a_rotation_is_not_lost(self) -> None:
        """An appender whose file is rotated away between its open and its write writes again to the new file."""
        self.one.append([added(1), added(2), added(3)])
        self.two.read()
        rotator = Journal(self.path, limit=self.limit)
        real_write = os.write
        raced: list[int] = []

        def write(fd: int, data: bytes) -> int:
            if not raced:
                raced.append(fd)
                self.assertTrue(rotator.rotate())  # lands after the appender opened the old file
            return real_write(fd, data)

        self.patch(journal_module.os, "write", write)
        self.one.append([added(9)])
        self.patch(journal_module.os, "write", real_write)
        # The reader drained the old file before the late append: the new file has it.
        news = self.two.read()
        self.assertIn(added(9), news.records)
        self.assertFalse(news.gap)

    def test_two_rotations_between_reads_is_a_gap(self) -> None:
        """A reader that missed a whole file is told to rescan."""
        self.one.append([added(1), added(2), added(3)])
        self.assertTrue(self.one.rotate())
        self.one.append([added(4), added(5), added(6)])
        self.assertTrue(self.one.rotate())
        self.one.append([added(7)])
        news = self.two.read()
        self.assertTrue(news.gap)
        self.assertEqual(news.records[-1], added(7))
        self.assertFalse(self.two.read().gap)
