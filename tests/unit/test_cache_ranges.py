"""Tests for gateway.cache.ranges: one byte range from a whole stored response (RFC 9110 §14)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.ranges import RangeNotSatisfiable, content_range, requested_range


def pick(value: bytes, length: int = 10, method: bytes = b"GET"):
    return requested_range(method, [(b"Range", value)], length)


class RangeTests(SynchronousTestCase):
    def test_int_range(self) -> None:
        """RFC 9110 §14.1.1: first-pos "-" last-pos, inclusive."""
        self.assertEqual(pick(b"bytes=0-4"), (0, 4))

    def test_open_ended(self) -> None:
        """RFC 9110 §14.1.1: without last-pos the range runs to the end."""
        self.assertEqual(pick(b"bytes=5-"), (5, 9))

    def test_last_clipped(self) -> None:
        """RFC 9110 §14.1.1: a last-pos past the end means the last byte."""
        self.assertEqual(pick(b"bytes=8-1000"), (8, 9))
        self.assertEqual(pick(b"bytes=8-" + b"9" * 40), (8, 9))

    def test_suffix(self) -> None:
        """RFC 9110 §14.1.1: suffix-range selects the last N bytes, or all if shorter."""
        self.assertEqual(pick(b"bytes=-3"), (7, 9))
        self.assertEqual(pick(b"bytes=-100"), (0, 9))

    def test_unit_case_insensitive(self) -> None:
        """RFC 9110 §14.1: range units are compared case-insensitively."""
        self.assertEqual(pick(b"Bytes=1-1"), (1, 1))

    def test_first_past_end_unsatisfiable(self) -> None:
        """RFC 9110 §14.1.1/§15.5.17: first-pos at or past the length -> 416 with bytes */length."""
        error = self.assertRaises(RangeNotSatisfiable, pick, b"bytes=10-")
        self.assertEqual(error.status, 416)
        self.assertEqual(error.headers, ((b"Content-Range", b"bytes */10"),))
        self.assertRaises(RangeNotSatisfiable, pick, b"bytes=" + b"9" * 40 + b"-")

    def test_zero_suffix_unsatisfiable(self) -> None:
        """RFC 9110 §14.1.1: a suffix-range is satisfiable only with a non-zero suffix-length."""
        self.assertRaises(RangeNotSatisfiable, pick, b"bytes=-0")

    def test_empty_representation(self) -> None:
        """RFC 9110 §14.1.1: of a zero-length representation no int-range is satisfiable."""
        self.assertRaises(RangeNotSatisfiable, pick, b"bytes=0-", 0)
        self.assertIsNone(pick(b"bytes=-5", 0))

    def test_invalid_ignored(self) -> None:
        """RFC 9110 §14.1.1/§14.2: an invalid range (last < first, bad syntax) is ignored."""
        for value in (b"bytes=5-2", b"bytes=a-b", b"bytes=-", b"bytes 0-1", b"bytes=0-1-2"):
            self.assertIsNone(pick(value), value)

    def test_other_unit_ignored(self) -> None:
        """RFC 9110 §14.2: a range unit the cache does not understand is ignored."""
        self.assertIsNone(pick(b"items=0-1"))

    def test_multiple_ranges_ignored(self) -> None:
        """RFC 9110 §14.2: a server MAY ignore Range; several ranges get the whole 200 (documented)."""
        self.assertIsNone(pick(b"bytes=0-1, 4-5"))
        self.assertIsNone(pick(b"bytes=20-30, 40-50"))

    def test_empty_members_skipped(self) -> None:
        """RFC 9110 §5.6.1: empty list elements do not count as ranges."""
        self.assertEqual(pick(b"bytes=0-1, "), (0, 1))

    def test_only_get(self) -> None:
        """RFC 9110 §14.2: GET is the only method for which range handling is defined."""
        self.assertIsNone(pick(b"bytes=0-1", method=b"HEAD"))

    def test_no_range_or_repeated(self) -> None:
        """RFC 9110 §14.2: no Range means the whole response; two Range fields are invalid."""
        self.assertIsNone(requested_range(b"GET", [], 10))
        self.assertIsNone(requested_range(b"GET", [(b"Range", b"bytes=0-1"), (b"Range", b"bytes=2-3")], 10))

    def test_content_range(self) -> None:
        """RFC 9110 §14.4: Content-Range = bytes first-last/complete-length."""
        self.assertEqual(content_range(0, 4, 10), b"bytes 0-4/10")
