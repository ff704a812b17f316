"""Pure byte-range selection (RFC 9110 §14) for answering ``Range`` from a whole stored response.

Invariants:

- Only a single ``bytes`` range is served as 206. Several ranges are ignored
  and the whole response is sent as 200: RFC 9110 §14.2 "A server MAY ignore
  the Range header field", and multipart/byteranges would cost more than it
  saves for the rare clients that ask.
- Results are inclusive ``(first, last)`` byte positions within ``length``.
"""

from __future__ import annotations

import re

from gateway.cache.fields import field_values
from gateway.errors import GatewayError
from gateway.parser import Headers

__all__ = ["RangeNotSatisfiable", "content_range", "requested_range"]

# RFC 9110 §14.1.2: int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length
_RANGE_SPEC = re.compile(rb"([0-9]*)-([0-9]*)")
_BIG = 10**18  # larger than any length; keeps int() away from huge digit runs


class RangeNotSatisfiable(GatewayError):
    """No requested range overlaps the representation: 416 (RFC 9110 §15.5.17).

    "a server generating a 416 (Range Not Satisfiable) response to a
    byte-range request SHOULD send a Content-Range header field with an
    unsatisfied-range value" (§14.4): ``headers`` carries it.
    """

    status = 416

    def __init__(self, length: int) -> None:
        super().__init__(f"range not satisfiable for length {length}")
        self.length = length
        self.headers = ((b"Content-Range", b"bytes */%d" % length),)


def _number(digits: bytes) -> int:
    return _BIG if len(digits) > 18 else int(digits)


def requested_range(method: bytes, headers: Headers, length: int) -> tuple[int, int] | None:
    """The one range to serve as 206, or None to serve the whole 200; raises 416.

    RFC 9110 §14.2: "A server MUST ignore a Range header field received with a
    request method that is unrecognized or for which range handling is not
    defined. For this specification, GET is the only method". A range unit
    other than ``bytes`` (compared case-insensitively, §14.1), an invalid
    ranges-specifier, a field given twice or several ranges: ignored (None).

    §14.1.1: "A range is invalid if the last-pos value is present and less
    than the first-pos" (ignored); an int-range is satisfiable if "the
    first-pos is less than the current length", and its last-pos is clipped to
    ``length - 1``; a suffix-range is satisfiable if its length is non-zero,
    and "If the selected representation is shorter than the specified
    suffix-length, the entire representation is used". An unsatisfiable single
    range raises :class:`RangeNotSatisfiable`. For an empty representation a
    suffix-range selects all of nothing: None (200).
    """
    if method != b"GET":
        return None
    values = field_values(headers, b"range")
    if len(values) != 1:
        return None
    unit, eq, spec = values[0].strip(b" \t").partition(b"=")
    if not eq or unit.strip(b" \t").lower() != b"bytes":
        return None
    members = [m.strip(b" \t") for m in spec.split(b",")]
    members = [m for m in members if m]
    if len(members) != 1:
        return None
    m = _RANGE_SPEC.fullmatch(members[0])
    if m is None:
        return None
    first, last = m.groups()
    if first:
        start = _number(first)
        end = _number(last) if last else _BIG
        if end < start:
            return None
        if start >= length:
            raise RangeNotSatisfiable(length)
        return start, min(end, length - 1)
    if not last:
        return None  # "-" alone is not a range
    suffix = _number(last)
    if suffix == 0:
        raise RangeNotSatisfiable(length)
    if length == 0:
        return None
    return max(0, length - suffix), length - 1


def content_range(first: int, last: int, length: int) -> bytes:
    """RFC 9110 §14.4: ``Content-Range: bytes first-last/complete-length``."""
    return b"bytes %d-%d/%d" % (first, last, length)
