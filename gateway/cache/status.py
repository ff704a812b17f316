"""Pure RFC 9211 ``Cache-Status`` values: what this cache did with a response.

Invariants:

- A value is one list member: the cache's name, then parameters in the
  RFC's order (hit / fwd, fwd-status, ttl, stored, collapsed, key, detail).
- ``hit`` and ``fwd`` never appear together: RFC 9211 §2.1 ``hit`` says the
  response came from the cache without forwarding, §2.2 ``fwd`` says the
  request was forwarded.
- The output is always a valid Structured Field List member (RFC 8941): the
  name is a token or a quoted string, key and detail are escaped strings.
"""

from __future__ import annotations

import enum
import re

from gateway.cache.fields import field_values
from gateway.parser import Headers

__all__ = ["Forward", "cache_status", "with_cache_status"]


class Forward(enum.Enum):
    """RFC 9211 §2.2 ``fwd`` reasons the gateway reports (paraphrased from the RFC)."""

    #: The cache was configured not to handle this request.
    BYPASS = "bypass"
    #: The request method's semantics require forwarding it.
    METHOD = "method"
    #: Nothing stored matched the request URI.
    URI_MISS = "uri-miss"
    #: Responses for the URI are stored, but none is selected by this
    #: request's fields under the stored Vary.
    VARY_MISS = "vary-miss"
    #: Nothing stored could satisfy the request (when no finer reason is known).
    MISS = "miss"
    #: A fresh response was selected, but the request's directives (e.g.
    #: ``no-cache``, ``max-age``) did not allow its use.
    REQUEST = "request"
    #: A response was selected, but it was stale.
    STALE = "stale"


_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_INTEGER_MAX = 999_999_999_999_999


def _sf_string(value: bytes) -> bytes:
    # RFC 8941 §3.3.3: printable ASCII only, with \ and " escaped; other bytes
    # are percent-encoded so the member stays valid.
    out = bytearray(b'"')
    for byte in value:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes((byte,))
        elif 0x20 <= byte <= 0x7E:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    out += b'"'
    return bytes(out)


def cache_status(
    name: bytes,
    *,
    hit: bool = False,
    fwd: Forward | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool | None = None,
    key: bytes | None = None,
    detail: bytes | None = None,
) -> bytes:
    """One Cache-Status member, e.g. ``gateway; hit; ttl=376`` or ``gateway; fwd=uri-miss; stored``.

    RFC 9211 §2: ``ttl`` is "the response's remaining freshness lifetime" in
    whole seconds, negative when stale (§2.4); ``fwd-status`` the status the
    next hop answered (§2.3); ``stored`` whether the forwarded response was
    stored (§2.5); ``collapsed`` whether it was collapsed with other requests
    (§2.6: True, the response was reused from the other request; False,
    written ``collapsed=?0``, "a new request had to be made"; None leaves it
    out); ``key`` the cache key (§2.7); ``detail`` implementation-specific
    text (§2.8), e.g. why a response was not stored. Raises ValueError for
    ``hit`` with ``fwd``.
    """
    if hit and fwd is not None:
        raise ValueError("Cache-Status: hit and fwd are mutually exclusive")
    parts = [name if _SF_TOKEN.fullmatch(name) else _sf_string(name)]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.value.encode("ascii"))
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        # RFC 8941 §3.3.1: integers have at most 15 digits.
        parts.append(b"ttl=%d" % max(-_SF_INTEGER_MAX, min(_SF_INTEGER_MAX, int(ttl))))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    elif collapsed is not None:
        parts.append(b"collapsed=?0")
    if key is not None:
        parts.append(b"key=" + _sf_string(key))
    if detail is not None:
        parts.append(b"detail=" + (detail if _SF_TOKEN.fullmatch(detail) else _sf_string(detail)))
    return b"; ".join(parts)


def with_cache_status(headers: Headers, value: bytes) -> Headers:
    """``headers`` with ``value`` appended to the Cache-Status list, as one field line.

    RFC 9211 §2: when adding a value, "caches SHOULD preserve the existing
    field value"; the list runs from the cache closest to the origin to the one
    closest to the user, so ours goes last.
    """
    existing = field_values(headers, b"cache-status")
    out = [pair for pair in headers if pair[0].lower() != b"cache-status"]
    out.append((b"Cache-Status", b", ".join(existing + [value])))
    return out
