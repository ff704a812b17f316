"""The chunked transfer coding (RFC 9112 §7.1): an incremental decoder and an encoder.

Invariants:

- No I/O: :meth:`ChunkedDecoder.feed` takes bytes and returns payload slices.
- The body is never accumulated: payload comes back as slices of the data just
  fed (the whole ``data`` object itself when a read is all payload). Only an
  unfinished chunk-size line or trailer line is kept, bounded by ``max_line``
  and ``max_trailer``; past those bounds the message is rejected.
- The result does not depend on how the input is split into reads.
- Errors are :class:`~gateway.errors.ParseError` with hint 400; the upstream
  side maps them to 502.
"""

from __future__ import annotations

import enum
import re

from gateway.errors import ParseError
from gateway.parser import FIELD_LINE_SYNTAX

__all__ = ["LAST_CHUNK", "ChunkedDecoder", "encode_chunk"]

LAST_CHUNK = b"0\r\n\r\n"

# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF;
# chunk-size = 1*HEXDIG. Sixteen hex digits is 2**64 - 1, the most any peer
# can mean; more is an overflow attempt.
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
# chunk-ext-val ] ); "A recipient MUST ignore unrecognized chunk extensions."
# Extensions are therefore only checked for holding no CTL (so no bare CR/LF);
# their length is bounded by max_line.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class _State(enum.Enum):
    """Where the decoder is within the message.

    SIZE: reading a chunk-size line (``1a;ext\\r\\n``).
    DATA: inside chunk data; ``_remaining`` bytes of it are still due.
    DATA_END: chunk data is done; the CRLF that closes it is due.
    TRAILER: after the last-chunk, reading trailer lines until an empty one.
    DONE: the message is complete; nothing more belongs to it.
    """

    SIZE = "size"
    DATA = "data"
    DATA_END = "data-end"
    TRAILER = "trailer"
    DONE = "done"


_SIZE = _State.SIZE
_DATA = _State.DATA
_DATA_END = _State.DATA_END
_TRAILER = _State.TRAILER
_DONE = _State.DONE


class ChunkedDecoder:
    """Decodes one chunked message body, fed in reads of any size.

    ``max_line`` bounds a chunk-size line (with extensions, without CRLF);
    ``max_trailer`` bounds the whole trailer section. Trailer fields are checked
    against the field-line grammar and discarded: the gateway forwards none
    (RFC 9110 §6.5.1 lets a recipient discard them).
    """

    __slots__ = ("_max_line", "_max_trailer", "_state", "_remaining", "_partial", "_trailer_size")

    def __init__(self, max_line: int = 4096, max_trailer: int = 16384) -> None:
        self._max_line = max_line
        self._max_trailer = max_trailer
        self._state = _SIZE
        self._remaining = 0
        self._partial = b""  # an unfinished line, without its end
        self._trailer_size = 0

    @property
    def done(self) -> bool:
        """True once the last-chunk and the trailer section are consumed."""
        return self._state is _DONE

    def feed(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        """Decode as much of ``data`` as possible.

        Returns ``(pieces, leftover)``: ``pieces`` are payload slices in order;
        ``leftover`` is None while the message is unfinished, and the bytes that
        follow the final CRLF (possibly ``b""``) once it is complete. Feeding a
        finished decoder returns ``([], data)``.
        """
        pieces: list[bytes] = []
        state = self._state
        if state is _DONE:
            return pieces, data
        pos = 0
        end = len(data)
        if self._partial:
            pos = self._finish_partial(data)
            if pos < 0:
                return pieces, None
            state = self._state
            if state is _DONE:
                return pieces, data[pos:]
        while pos < end:
            if state is _DATA:
                remaining = self._remaining
                if end - pos <= remaining:
                    pieces.append(data if pos == 0 else data[pos:])
                    self._remaining = remaining - (end - pos)
                    if self._remaining == 0:
                        self._state = _DATA_END
                    return pieces, None
                stop = pos + remaining
                pieces.append(data[pos:stop])
                pos = stop
                state = self._state = _DATA_END
                continue
            # A line: a chunk-size line, the CRLF after chunk data, or a
            # trailer line. Look for its LF no further than its bound allows.
            bound = self._line_bound(state)
            lf = data.find(b"\n", pos, pos + bound + 2)
            if lf < 0:
                if end - pos >= bound + 2:
                    raise self._too_long(state)
                self._partial = data[pos:]
                return pieces, None
            if lf == pos or data[lf - 1] != 0x0D:
                raise ParseError("bare LF in chunked body")
            self._line(data[pos : lf - 1], state)
            pos = lf + 1
            state = self._state
            if state is _DONE:
                return pieces, data[pos:]
        return pieces, None

    def _finish_partial(self, data: bytes) -> int:
        """Complete the buffered line with the start of ``data``.

        Returns the position in ``data`` just past the line, or -1 if the line
        is still unfinished (and is kept, within its bound).
        """
        partial = self._partial
        state = self._state
        bound = self._line_bound(state)
        # Copy at most what the longest legal line still needs, never payload.
        joined = partial + data[: bound + 2 - len(partial)]
        lf = joined.find(b"\n", len(partial))
        if lf < 0:
            if len(joined) >= bound + 2:
                raise self._too_long(state)
            self._partial = joined
            return -1
        if lf == 0 or joined[lf - 1] != 0x0D:
            raise ParseError("bare LF in chunked body")
        self._partial = b""
        self._line(joined[: lf - 1], state)
        return lf + 1 - len(partial)

    def _line_bound(self, state: _State) -> int:
        """Longest line (without CRLF) that ``state`` accepts."""
        if state is _SIZE:
            return self._max_line
        if state is _DATA_END:
            return 0
        # A trailer line and its CRLF must fit in what is left of the section;
        # the empty line that ends the section is not counted.
        return max(0, self._max_trailer - self._trailer_size - 2)

    def _too_long(self, state: _State) -> ParseError:
        if state is _SIZE:
            return ParseError("chunk-size line too long")
        if state is _DATA_END:
            return ParseError("missing CRLF after chunk data")
        return ParseError("trailer section too large")

    def _line(self, line: bytes, state: _State) -> None:
        """Act on one complete line (its CRLF already checked and removed)."""
        if state is _SIZE:
            m = _SIZE_LINE.fullmatch(line)
            if m is None:
                raise self._size_error(line)
            size = int(m.group(1), 16)
            if size:
                self._remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILER
        elif state is _DATA_END:
            if line:
                raise ParseError("missing CRLF after chunk data")
            self._state = _SIZE
        elif not line:
            self._state = _DONE
        else:
            self._trailer_size += len(line) + 2
            if self._trailer_size > self._max_trailer:
                raise ParseError("trailer section too large")
            # RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), with the
            # same syntax (and so the same hardening) as header fields.
            elif FIELD_LINE_SYNTAX.fullmatch(line) is None:
                raise ParseError(f"malformed trailer field {line[:80]!r}")

    @staticmethod
    def _size_error(line: bytes) -> ParseError:
        size = line.split(b";", 1)[0].rstrip(b" \t")
        if not size:
            return ParseError("empty chunk size")
        if _HEX.fullmatch(size) is not None:
            return ParseError("chunk size too large")
        return ParseError(f"invalid chunk-size line {line[:40]!r}")


def encode_chunk(data: bytes) -> list[bytes]:
    """One chunk as pieces for ``transport.writeSequence`` (no copy of ``data``).

    Empty ``data`` gives ``[]``: a zero-size chunk would be the last-chunk and
    end the body early (write :data:`LAST_CHUNK` for that).
    """
    if not data:
        return []
    return [b"%x\r\n" % len(data), data, b"\r\n"]
