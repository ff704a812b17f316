"""Tests for gateway.chunked: the chunked transfer coding (RFC 9112 §7.1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.chunked import LAST_CHUNK, ChunkedDecoder, encode_chunk
from gateway.errors import ParseError

MESSAGE = b"5\r\nhello\r\nA;name=value\r\n0123456789\r\n0\r\nChecksum: abc\r\n\r\nNEXT"
PAYLOAD = b"hello0123456789"


def decode(*reads: bytes, **kwargs: int) -> tuple[bytes, bytes | None]:
    """Feed ``reads`` to a fresh decoder; return (payload, leftover).

    Reads after the message ended are appended to the leftover, as a caller
    would hand them to whatever comes next.
    """
    decoder = ChunkedDecoder(**kwargs)
    payload = []
    leftover = None
    for i, data in enumerate(reads):
        pieces, leftover = decoder.feed(data)
        payload.extend(pieces)
        if leftover is not None:
            return b"".join(payload), leftover + b"".join(reads[i + 1 :])
    return b"".join(payload), leftover


def encode(payload_chunks: list[bytes]) -> bytes:
    return b"".join(b"".join(encode_chunk(c)) for c in payload_chunks) + LAST_CHUNK


class DecodeTests(SynchronousTestCase):
    def test_message(self) -> None:
        """RFC 9112 §7.1: chunks, then last-chunk, trailer section and CRLF."""
        self.assertEqual(decode(MESSAGE), (PAYLOAD, b"NEXT"))

    def test_empty_body(self) -> None:
        """RFC 9112 §7.1: a body may be just the last-chunk and the final CRLF."""
        self.assertEqual(decode(b"0\r\n\r\n"), (b"", b""))

    def test_leftover_is_next_message(self) -> None:
        """Bytes after the final CRLF belong to the next message and come back as leftover."""
        self.assertEqual(decode(b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), (b"a", b"GET / HTTP/1.1\r\n"))

    def test_unfinished(self) -> None:
        """Leftover is None while the last-chunk or the final CRLF is still due."""
        for data in (b"1\r\na\r\n", b"1\r\na\r\n0\r\n", b"1\r\na\r\n0\r\nX: y\r\n"):
            with self.subTest(data=data):
                self.assertIsNone(decode(data)[1])

    def test_hex_case(self) -> None:
        """RFC 9112 §7.1: chunk-size = 1*HEXDIG; HEXDIG is case-insensitive (RFC 5234)."""
        self.assertEqual(decode(b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n")[0], b"0123456789" * 2)

    def test_leading_zeros(self) -> None:
        """Leading zeros in chunk-size are digits like any other (RFC 9112 §7.1)."""
        self.assertEqual(decode(b"0003\r\nabc\r\n0000\r\n\r\n"), (b"abc", b""))

    def test_sixteen_hex_digits(self) -> None:
        """A 16-hex-digit size is accepted; its data then streams out as it arrives."""
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(b"000000000000000a\r\nabc"), ([b"abc"], None))

    def test_extensions_ignored(self) -> None:
        """RFC 9112 §7.1.1: "A recipient MUST ignore unrecognized chunk extensions"."""
        data = b'3;a=1;b="quoted; \\"x\\"" ; c\r\nabc\r\n0;last\r\n\r\n'
        self.assertEqual(decode(data), (b"abc", b""))

    def test_bws_before_extension(self) -> None:
        """RFC 9112 §7.1.1: chunk-ext = *( BWS ";" ... ); whitespace before ";" is allowed."""
        self.assertEqual(decode(b"3 \t;x\r\nabc\r\n0\r\n\r\n"), (b"abc", b""))

    def test_trailer_discarded(self) -> None:
        """RFC 9112 §7.1.2: trailer fields are parsed and, here, discarded."""
        self.assertEqual(decode(b"0\r\nA: 1\r\nB:2\r\n\r\nZ"), (b"", b"Z"))

    def test_payload_not_copied(self) -> None:
        """A read that is all payload comes back as the same object: no copy (invariant)."""
        decoder = ChunkedDecoder()
        decoder.feed(b"10\r\n")
        data = b"x" * 16
        pieces, _ = decoder.feed(data)
        self.assertIs(pieces[0], data)

    def test_streams_large_chunk(self) -> None:
        """Payload is returned as it arrives, not held until the chunk is complete."""
        decoder = ChunkedDecoder()
        self.assertEqual(decoder.feed(b"100000\r\n" + b"a" * 10), ([b"a" * 10], None))
        self.assertEqual(decoder.feed(b"b" * 10), ([b"b" * 10], None))

    def test_done(self) -> None:
        """``done`` turns true once the message is complete."""
        decoder = ChunkedDecoder()
        decoder.feed(b"0\r\n\r")
        self.assertFalse(decoder.done)
        decoder.feed(b"\n")
        self.assertTrue(decoder.done)

    def test_feed_after_done(self) -> None:
        """Feeding a finished decoder hands all the data back as leftover."""
        decoder = ChunkedDecoder()
        decoder.feed(LAST_CHUNK)
        self.assertEqual(decoder.feed(b"more"), ([], b"more"))


class RejectTests(SynchronousTestCase):
    def assert_rejected(self, data: bytes, **kwargs: int) -> ParseError:
        exc = self.assertRaises(ParseError, decode, data, **kwargs)
        self.assertEqual(exc.status, 400)
        return exc

    def test_non_hex_size(self) -> None:
        """RFC 9112 §7.1: chunk-size = 1*HEXDIG; "g" is not one."""
        self.assert_rejected(b"g\r\n")

    def test_prefixed_size(self) -> None:
        """Signs, 0x prefixes and underscores (which int() would take) are not HEXDIG."""
        for size in (b"0x5", b"+5", b"-5", b"5_0", b" 5"):
            with self.subTest(size=size):
                self.assert_rejected(size + b"\r\nhello\r\n0\r\n\r\n")

    def test_empty_size(self) -> None:
        """RFC 9112 §7.1: chunk-size needs at least one digit."""
        exc = self.assert_rejected(b"\r\n")
        self.assertIn("empty", exc.reason)

    def test_size_too_large(self) -> None:
        """More than 16 hex digits overflows 64 bits: rejected."""
        exc = self.assert_rejected(b"1" + b"0" * 16 + b"\r\n")
        self.assertIn("too large", exc.reason)

    def test_trailing_whitespace_without_extension(self) -> None:
        """RFC 9112 §7.1.1: BWS is only allowed before ";"; "5 " alone is rejected."""
        self.assert_rejected(b"5 \r\nhello\r\n0\r\n\r\n")

    def test_missing_crlf_after_data(self) -> None:
        """RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF."""
        exc = self.assert_rejected(b"5\r\nhelloXX0\r\n\r\n")
        self.assertIn("CRLF", exc.reason)

    def test_data_longer_than_size(self) -> None:
        """Data running past its declared size is rejected, not resynchronised."""
        self.assert_rejected(b"3\r\nhello\r\n0\r\n\r\n")

    def test_bare_lf_after_size(self) -> None:
        """RFC 9112 §2.2: lines end in CRLF; a bare LF after the size is rejected."""
        self.assert_rejected(b"5\nhello\r\n0\r\n\r\n")

    def test_bare_lf_after_data(self) -> None:
        """A bare LF closing chunk data is rejected (RFC 9112 §7.1)."""
        self.assert_rejected(b"5\r\nhello\n0\r\n\r\n")

    def test_bare_cr_in_size_line(self) -> None:
        """RFC 9112 §2.2: a bare CR is invalid."""
        self.assert_rejected(b"5\r;x\r\nhello\r\n0\r\n\r\n")

    def test_ctl_in_extension(self) -> None:
        """Chunk extensions may hold no control bytes (RFC 9112 §7.1.1 grammar)."""
        self.assert_rejected(b"5;a=\x00\r\nhello\r\n0\r\n\r\n")

    def test_bare_lf_final(self) -> None:
        """The CRLF that ends the trailer section must be CRLF (RFC 9112 §7.1)."""
        self.assert_rejected(b"0\r\n\n")

    def test_trailer_obs_fold(self) -> None:
        """RFC 9112 §7.1.2: trailer fields follow field-line syntax; obs-fold is rejected."""
        self.assert_rejected(b"0\r\nA: 1\r\n b\r\n\r\n")

    def test_trailer_no_colon(self) -> None:
        """RFC 9112 §7.1.2: a trailer line without a colon is rejected."""
        self.assert_rejected(b"0\r\ngarbage\r\n\r\n")

    def test_trailer_space_before_colon(self) -> None:
        """RFC 9112 §5.1 applies to trailer fields too: no whitespace before the colon."""
        self.assert_rejected(b"0\r\nA : 1\r\n\r\n")


class LimitTests(SynchronousTestCase):
    def _size_line(self, length: int) -> bytes:
        """A chunk-size line of ``length`` bytes (without CRLF), padded by an extension."""
        return b"3;" + b"x" * (length - 2)

    def test_size_line_at_limit(self) -> None:
        """A chunk-size line of exactly max_line bytes is accepted."""
        data = self._size_line(64) + b"\r\nabc\r\n0\r\n\r\n"
        self.assertEqual(decode(data, max_line=64), (b"abc", b""))

    def test_size_line_at_limit_bytewise(self) -> None:
        """The bound holds the same when the line arrives one byte at a time."""
        data = self._size_line(64) + b"\r\nabc\r\n0\r\n\r\n"
        reads = [data[i : i + 1] for i in range(len(data))]
        self.assertEqual(decode(*reads, max_line=64), (b"abc", b""))

    def test_size_line_over_limit(self) -> None:
        """A chunk-size line over max_line is rejected."""
        data = self._size_line(65) + b"\r\nabc\r\n0\r\n\r\n"
        self.assertRaises(ParseError, decode, data, max_line=64)

    def test_size_line_over_limit_unfinished(self) -> None:
        """An unfinished line is rejected as soon as it passes max_line: nothing unbounded is kept."""
        decoder = ChunkedDecoder(max_line=64)
        decoder.feed(self._size_line(65))
        self.assertRaises(ParseError, decoder.feed, b"x")

    def test_size_line_over_limit_bytewise(self) -> None:
        """Fed one byte at a time, an over-long line is rejected too."""
        data = self._size_line(65) + b"\r\n"
        self.assertRaises(ParseError, decode, *[data[i : i + 1] for i in range(len(data))], max_line=64)

    def _trailer(self, size: int) -> bytes:
        """A trailer section of ``size`` bytes (field lines with CRLFs, final CRLF excluded)."""
        return b"X: " + b"v" * (size - 5) + b"\r\n"

    def test_trailer_at_limit(self) -> None:
        """A trailer section of exactly max_trailer bytes is accepted."""
        data = b"0\r\n" + self._trailer(100) + b"\r\n"
        self.assertEqual(decode(data, max_trailer=100), (b"", b""))

    def test_trailer_at_limit_bytewise(self) -> None:
        """The trailer bound holds the same for byte-at-a-time reads."""
        data = b"0\r\n" + self._trailer(60) + self._trailer(40) + b"\r\n"
        self.assertEqual(decode(*[data[i : i + 1] for i in range(len(data))], max_trailer=100), (b"", b""))

    def test_trailer_over_limit(self) -> None:
        """A trailer section over max_trailer is rejected."""
        data = b"0\r\n" + self._trailer(60) + self._trailer(41) + b"\r\n"
        self.assertRaises(ParseError, decode, data, max_trailer=100)

    def test_trailer_over_limit_bytewise(self) -> None:
        """Fed one byte at a time, an over-large trailer is rejected too."""
        data = b"0\r\n" + self._trailer(101) + b"\r\n"
        self.assertRaises(ParseError, decode, *[data[i : i + 1] for i in range(len(data))], max_trailer=100)


class SplitTests(SynchronousTestCase):
    def test_every_split_point(self) -> None:
        """Any split of the input into two reads decodes the same as one read."""
        for i in range(len(MESSAGE) + 1):
            with self.subTest(split=i):
                self.assertEqual(decode(MESSAGE[:i], MESSAGE[i:]), (PAYLOAD, b"NEXT"))

    def test_every_pair_of_split_points(self) -> None:
        """Any split into three reads decodes the same as one read."""
        for i in range(len(MESSAGE) + 1):
            for j in range(i, len(MESSAGE) + 1):
                with self.subTest(i=i, j=j):
                    self.assertEqual(decode(MESSAGE[:i], MESSAGE[i:j], MESSAGE[j:]), (PAYLOAD, b"NEXT"))

    def test_byte_at_a_time(self) -> None:
        """One byte per read decodes the same as one read."""
        self.assertEqual(decode(*[MESSAGE[i : i + 1] for i in range(len(MESSAGE))]), (PAYLOAD, b"NEXT"))

    @settings(max_examples=300, deadline=None)
    @given(
        chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
        after=st.binary(max_size=10),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    )
    def test_random_splits(self, chunks: list[bytes], after: bytes, cuts: list[int]) -> None:
        """Encoded payload split at random points decodes to the payload and the same leftover."""
        wire = encode(chunks) + after
        points = sorted({min(c, len(wire)) for c in cuts})
        reads = [wire[a:b] for a, b in zip([0] + points, points + [len(wire)])]
        self.assertEqual(decode(*reads), (b"".join(chunks), after))

    @settings(max_examples=500, deadline=None)
    @given(
        wire=st.lists(
            st.sampled_from([b"0", b"3", b"a", b"F", b"\r", b"\n", b"\r\n", b";", b" ", b"x", b":", b"abc"]),
            max_size=30,
        ).map(b"".join),
        cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
    )
    def test_random_input_split_invariant(self, wire: bytes, cuts: list[int]) -> None:
        """For arbitrary input, split reads give the same result (or the same refusal) as one read."""
        points = sorted({min(c, len(wire)) for c in cuts})
        reads = [wire[a:b] for a, b in zip([0] + points, points + [len(wire)])]

        def outcome(*parts: bytes) -> object:
            try:
                return decode(*parts, max_line=8, max_trailer=12)
            except ParseError:
                return "rejected"

        self.assertEqual(outcome(*reads), outcome(wire))


class EncodeTests(SynchronousTestCase):
    def test_encode_chunk(self) -> None:
        """RFC 9112 §7.1: chunk = chunk-size CRLF chunk-data CRLF, size in hex."""
        data = b"x" * 26
        pieces = encode_chunk(data)
        self.assertEqual(pieces, [b"1a\r\n", data, b"\r\n"])
        self.assertIs(pieces[1], data)

    def test_encode_empty(self) -> None:
        """An empty chunk would be the last-chunk (RFC 9112 §7.1), so it encodes to nothing."""
        self.assertEqual(encode_chunk(b""), [])

    def test_last_chunk(self) -> None:
        """RFC 9112 §7.1: last-chunk = 1*("0") [ chunk-ext ] CRLF, then the final CRLF."""
        self.assertEqual(LAST_CHUNK, b"0\r\n\r\n")

    def test_round_trip(self) -> None:
        """What encode_chunk writes, ChunkedDecoder reads back."""
        self.assertEqual(decode(encode([b"abc", b"\r\n", b"0\r\n\r\n"])), (b"abc\r\n0\r\n\r\n", b""))
