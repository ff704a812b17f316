"""Pure cache keys: the primary key of a request, Vary secondary keys, invalidation targets.

Invariants:

- A primary key is ``scheme://host[:port]path[?query]`` as bytes: scheme and
  host lower-cased, the scheme's default port dropped, an empty path read as
  ``/`` (RFC 9110 §4.2.3), path and query otherwise exactly as received
  (percent-encodings are not decoded: two spellings the origin might treat
  differently never share an entry). A key is never a filesystem path; the
  store hashes it.
- Host values reaching here were validated by the parser (no ``/``, ``?``,
  whitespace or controls), so the key is unambiguous.
- A secondary key is built only from request header values and the stored
  response's Vary names; ``Vary: *`` has none (it never matches, RFC 9111 §4.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from gateway.compat import SLOTS
from gateway.cache.fields import field_values, list_members
from gateway.parser import Headers

__all__ = [
    "SAFE_METHODS",
    "KeyRules",
    "cache_key",
    "invalidation_targets",
    "secondary_key",
    "split_target",
    "surrogate_keys",
    "vary_matches",
    "vary_names",
    "vary_values",
]

#: RFC 9110 §9.2.1: "Of the request methods defined by this specification, the
#: GET, HEAD, OPTIONS, and TRACE methods are defined to be safe."
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}
_ABSOLUTE = re.compile(rb"(?i:https?)://[^/?#]*(.*)", re.DOTALL)


def split_target(target: bytes) -> bytes:
    """The path and query of a request-target (origin-form or absolute-form).

    RFC 9112 §3.2.2 absolute-form: the authority is dropped (the caller passes
    the host separately). An empty path becomes ``/``.
    """
    if target[:1] != b"/":
        m = _ABSOLUTE.fullmatch(target)
        if m is not None:
            target = m.group(1)
    if not target or target[:1] == b"?":
        target = b"/" + target
    return target


def _host(scheme: bytes, host: bytes) -> bytes:
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    elif host.endswith(b":"):  # RFC 3986 §3.2.3: an empty port is the default one
        host = host[:-1]
    return host


@dataclass(frozen=True, **SLOTS)
class KeyRules:
    """How one route turns requests into primary keys.

    - ``sort_query``: reorder query parameters (stable sort on the raw
      ``name=value`` bytes), so ``?b=2&a=1`` and ``?a=1&b=2`` share an entry.
      Only for origins where parameter order means nothing.
    - ``drop_params``: parameter names (raw bytes, case-sensitive) left out of
      the key, e.g. tracking parameters. The origin still receives them.

    With either set, empty parameters are dropped and a query left empty loses
    its ``?``.
    """

    sort_query: bool = False
    drop_params: frozenset[bytes] = frozenset()

    def key(self, scheme: bytes, host: bytes, target: bytes) -> bytes:
        """The primary key for a request to ``scheme://host`` with ``target``."""
        return cache_key(scheme, host, target, sort_query=self.sort_query, drop_params=self.drop_params)


def cache_key(
    scheme: bytes, host: bytes, target: bytes, *, sort_query: bool = False, drop_params: Iterable[bytes] = ()
) -> bytes:
    """``scheme://host/path?query`` for a request (see the module invariants and :class:`KeyRules`)."""
    scheme = scheme.lower()
    path = split_target(target)
    drop = frozenset(drop_params)
    if (sort_query or drop) and b"?" in path:
        path, _, query = path.partition(b"?")
        params = [p for p in query.split(b"&") if p and p.partition(b"=")[0] not in drop]
        if sort_query:
            params.sort()
        if params:
            path = path + b"?" + b"&".join(params)
    return scheme + b"://" + _host(scheme, host) + path


# --- Vary (RFC 9111 §4.1) -------------------------------------------------------------


def vary_names(headers: Headers) -> tuple[bytes, ...] | None:
    """The request fields a response varies on: sorted, unique, lower-case; None for ``*``.

    RFC 9110 §12.5.5: Vary = #( "*" / field-name ); field names are
    case-insensitive. RFC 9111 §4.1: "A stored response with a Vary header
    field value containing a member "*" always fails to match."
    """
    values = field_values(headers, b"vary")
    if not values:
        return ()
    names = {member.lower() for member in list_members(values)}
    if b"*" in names:
        return None
    return tuple(sorted(names))


def _normalise(values: list[bytes]) -> bytes:
    # RFC 9111 §4.1: fields match after "adding or removing whitespace, where
    # allowed in the header field's syntax" and "combining multiple header field
    # lines with the same field name": lines are joined with ", ", and the
    # whitespace around every comma is normalised to one space. (Inside a
    # quoted string this merges spellings the field may tell apart; no varied
    # field in practice depends on that.)
    members = [m.strip(b" \t") for value in values for m in value.split(b",")]
    return b", ".join(members)


def vary_values(names: Sequence[bytes], request_headers: Headers) -> tuple[bytes | None, ...]:
    """The normalised value of each field in ``names`` in a request; None where absent.

    RFC 9111 §4.1: "If (after any normalization that might take place) a header
    field is absent from a request, it can only match another request if it is
    also absent there." Values are compared exactly (case included) after
    normalisation.
    """
    if not names:
        return ()
    found: dict[bytes, list[bytes]] = {}
    wanted = frozenset(names)
    for field, value in request_headers:
        name = field.lower()
        if name in wanted:
            found.setdefault(name, []).append(value)
    return tuple(_normalise(found[name]) if name in found else None for name in names)


def secondary_key(names: Sequence[bytes], values: Sequence[bytes | None]) -> bytes:
    """One bytes value standing for a (names, values) pair, b"" when nothing varies.

    Names are tokens and values hold no CR, LF or NUL (the parser guarantees
    both), so ``name \\0 value \\n`` (``name \\1 \\n`` when absent) cannot be
    read two ways.
    """
    if not names:
        return b""
    parts = []
    for name, value in zip(names, values):
        parts.append(name + (b"\x01" if value is None else b"\x00" + value))
    return b"\n".join(parts)


def vary_matches(
    names: Sequence[bytes] | None, stored_values: Sequence[bytes | None], request_headers: Headers
) -> bool:
    """Whether a request selects the response stored with these Vary names and values.

    RFC 9111 §4.1: the cache "MUST NOT use that stored response without
    revalidation unless all the presented request header fields nominated by
    that Vary field value match those fields in the original request".
    ``names`` None stands for ``Vary: *``, which never matches.
    """
    if names is None:
        return False
    return vary_values(names, request_headers) == tuple(stored_values)


# --- invalidation (RFC 9111 §4.4) ----------------------------------------------------------


def _origin(scheme: bytes, authority: bytes) -> tuple[bytes, bytes]:
    return scheme.lower(), _host(scheme.lower(), authority)


def invalidation_targets(
    method: bytes, status: int, scheme: bytes, host: bytes, target: bytes, response_headers: Headers
) -> list[tuple[bytes, bytes, bytes]]:
    """The ``(scheme, host, target)`` whose stored responses a response invalidates.

    RFC 9111 §4.4: "A cache MUST invalidate the target URI [...] when it
    receives a non-error status code in response to an unsafe request method
    (including methods whose safety is unknown)"; the URIs in Location and
    Content-Location "are candidates for invalidation", but "a cache MUST NOT
    trigger an invalidation [...] if the origin [...] of the URI to be
    invalidated differs from that of the target URI". A "non-error response"
    is 2xx or 3xx. Relative references are resolved against the target URI
    (RFC 9110 §10.2.2, §8.7). Each result goes through the route's
    :class:`KeyRules` and every variant of that key is removed.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    path = split_target(target)
    out = [(scheme.lower(), _host(scheme.lower(), host), path)]
    base = (scheme.lower() + b"://" + host + path).decode("latin-1")
    origin = _origin(scheme, host)
    for name in (b"location", b"content-location"):
        values = field_values(headers=response_headers, name=name)
        if len(values) != 1:
            continue
        try:
            parts = urlsplit(urljoin(base, values[0].strip(b" \t").decode("latin-1")))
        except ValueError:
            continue
        their_scheme = parts.scheme.encode("latin-1")
        authority = parts.netloc.encode("latin-1")
        if b"@" in authority or _origin(their_scheme, authority) != origin:
            continue
        their_path = parts.path.encode("latin-1") or b"/"
        if parts.query:
            their_path += b"?" + parts.query.encode("latin-1")
        candidate = (origin[0], origin[1], their_path)
        if candidate not in out:
            out.append(candidate)
    return out


def surrogate_keys(headers: Headers) -> tuple[bytes, ...]:
    """The space-separated keys of ``Surrogate-Key`` fields, unique, in order.

    Surrogate-Key (Fastly's convention, no RFC) tags a response with purge
    groups; the store indexes them for :meth:`~gateway.cache.store.DiskStore.purge_surrogate`.
    """
    keys: dict[bytes, None] = {}
    for value in field_values(headers, b"surrogate-key"):
        for key in value.split():
            keys[key] = None
    return tuple(keys)
