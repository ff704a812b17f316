"""IMF-fixdate values for the Date header (RFC 9110 §5.6.7), cached per second.

Formatting a date costs more than the rest of a response head; the text only
changes once a second, so it is computed once a second.
"""

from __future__ import annotations

from email.utils import formatdate

_second = -1
_text = b""


def http_date(now: float) -> bytes:
    """``Sun, 22 Nov 2026 18:01:57 GMT`` for the time ``now`` (seconds since the epoch)."""
    global _second, _text
    second = int(now)
    if second != _second:
        _text = formatdate(second, usegmt=True).encode("ascii")
        _second = second
    return _text
