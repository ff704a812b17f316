"""Cache directives from ``Cache-Control`` (RFC 9111 §5.2) and targeted fields (RFC 9213).

Invariants:

- A :class:`CacheControl` maps lower-case directive names to their argument
  (``bytes``, unquoted) or None for a directive without one. It is built once
  per message and read many times.
- A directive that appears twice with different arguments keeps a marker that
  no reader accepts as delta-seconds, so ``max-age=5, max-age=50`` reads as
  invalid freshness, i.e. stale. RFC 9111 §4.2.1: "When there is more than one
  value present for a given directive [...] either the first occurrence should
  be used or the response should be considered stale."
- Targeted fields are Structured Field Dictionaries (RFC 8941 §3.2); one that
  fails to parse or is empty counts as absent (RFC 9213 §2.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.cache.fields import delta_seconds, field_values, list_members
from gateway.parser import Headers

__all__ = [
    "CDN_CACHE_CONTROL",
    "CacheControl",
    "INVALID",
    "parse_cache_control",
    "parse_targeted",
    "response_directives",
]

#: RFC 9213 §3: the targeted field for all CDNs.
CDN_CACHE_CONTROL = b"cdn-cache-control"

#: What :meth:`CacheControl.seconds` returns for a present but invalid argument.
INVALID = -1

_CONFLICT = b"\x00conflict"
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class CacheControl:
    """The directives of one message, by lower-case name."""

    __slots__ = ("_directives",)

    def __init__(self, directives: Mapping[bytes, bytes | None] | None = None) -> None:
        self._directives: dict[bytes, bytes | None] = dict(directives or {})

    def __contains__(self, name: bytes) -> bool:
        return name in self._directives

    def __bool__(self) -> bool:
        return bool(self._directives)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheControl) and other._directives == self._directives

    def __hash__(self) -> int:
        return hash(frozenset(self._directives.items()))

    def get(self, name: bytes) -> bytes | None:
        """The argument of ``name``, or None when absent or given without one."""
        return self._directives.get(name)

    def seconds(self, name: bytes) -> int | None:
        """``name``'s delta-seconds argument: None if absent, :data:`INVALID` if not a number."""
        if name not in self._directives:
            return None
        value = delta_seconds(self._directives[name])
        return INVALID if value is None else value

    def names(self) -> frozenset[bytes]:
        """Every directive name present."""
        return frozenset(self._directives)

    def __repr__(self) -> str:
        return f"<CacheControl {self._directives!r}>"


def _add(directives: dict[bytes, bytes | None], name: bytes, value: bytes | None) -> None:
    if name in directives and directives[name] != value:
        directives[name] = _CONFLICT
    else:
        directives.setdefault(name, value)


def parse_cache_control(values: Sequence[bytes]) -> CacheControl:
    """The directives in the ``Cache-Control`` field lines ``values``.

    RFC 9111 §5.2: Cache-Control = #cache-directive; cache-directive = token
    [ "=" ( token / quoted-string ) ]; "Cache directives are identified by a
    token, to be compared case-insensitively". Members whose name is not a
    token are ignored; a quoted argument is unquoted.
    """
    directives: dict[bytes, bytes | None] = {}
    for member in list_members(values):
        name, eq, value = member.partition(b"=")
        name = name.rstrip(b" \t").lower()
        if not name or not _TCHAR.issuperset(name):
            continue
        if not eq:
            _add(directives, name, None)
            continue
        value = value.lstrip(b" \t")
        if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
            value = _unescape(value[1:-1])
        _add(directives, name, value)
    return CacheControl(directives)


def _unescape(text: bytes) -> bytes:
    """RFC 9110 §5.6.4: quoted-pair = "\\" ( HTAB / SP / VCHAR / obs-text )."""
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == 0x5C and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return bytes(out)


# --- RFC 8941 Dictionary, for targeted fields -------------------------------------
class _SFError(ValueError):
    pass


_LCALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_KEY_FIRST = _LCALPHA | frozenset(b"*")
_KEY_REST = _LCALPHA | frozenset(b"0123456789_-.*")
_DIGITS = frozenset(b"0123456789")
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") | _LCALPHA
_TOKEN_REST = _TCHAR | frozenset(b":/")
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_TRUE = object()
_FALSE = object()
_OTHER = object()  # decimals, byte sequences, inner lists: no cache directive takes them


class _Reader:
    """RFC 8941 §4.2 parsing over one combined field value."""

    __slots__ = ("text", "pos")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> int:
        return self.text[self.pos] if self.pos < len(self.text) else -1

    def skip(self, chars: bytes) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def key(self) -> bytes:
        # RFC 8941 §4.2.3.3: key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
        start = self.pos
        if self.peek() not in _KEY_FIRST:
            raise _SFError("key")
        self.pos += 1
        while self.peek() in _KEY_REST:
            self.pos += 1
        return self.text[start : self.pos]

    def bare_item(self) -> object:
        c = self.peek()
        if c == 0x2D or c in _DIGITS:  # "-" / DIGIT: integer or decimal (§4.2.4)
            start = self.pos
            self.pos += 1 if c == 0x2D else 0
            digits = self.pos
            while self.peek() in _DIGITS:
                self.pos += 1
            if self.pos == digits:
                raise _SFError("number")
            if self.peek() == 0x2E:  # ".": decimal
                if self.pos - digits > 12:
                    raise _SFError("decimal")
                self.pos += 1
                fraction = self.pos
                while self.peek() in _DIGITS:
                    self.pos += 1
                if not 1 <= self.pos - fraction <= 3:
                    raise _SFError("decimal")
                return _OTHER
            if self.pos - digits > 15:
                raise _SFError("integer")
            return self.text[start : self.pos]
        if c == 0x22:  # sf-string (§4.2.5)
            self.pos += 1
            out = bytearray()
            while True:
                c = self.peek()
                if c == -1:
                    raise _SFError("string")
                self.pos += 1
                if c == 0x22:
                    return bytes(out)
                if c == 0x5C:
                    c = self.peek()
                    if c not in (0x22, 0x5C):
                        raise _SFError("escape")
                    self.pos += 1
                elif not 0x20 <= c <= 0x7E:
                    raise _SFError("string")
                out.append(c)
        if c == 0x2A or c in _ALPHA:  # sf-token (§4.2.6)
            start = self.pos
            self.pos += 1
            while self.peek() in _TOKEN_REST:
                self.pos += 1
            return self.text[start : self.pos]
        if c == 0x3A:  # sf-binary (§4.2.7)
            self.pos += 1
            while self.peek() in _BASE64:
                self.pos += 1
            if self.peek() != 0x3A:
                raise _SFError("binary")
            self.pos += 1
            return _OTHER
        if c == 0x3F:  # sf-boolean (§4.2.8)
            self.pos += 1
            c = self.peek()
            if c not in (0x30, 0x31):
                raise _SFError("boolean")
            self.pos += 1
            return _TRUE if c == 0x31 else _FALSE
        raise _SFError("item")

    def parameters(self) -> None:
        # RFC 8941 §4.2.3.2; RFC 9213 §2.1: parameters on members are ignored.
        while self.peek() == 0x3B:
            self.pos += 1
            self.skip(b" ")
            self.key()
            if self.peek() == 0x3D:
                self.pos += 1
                self.bare_item()

    def member_value(self) -> object:
        if self.peek() == 0x28:  # inner list (§4.2.1.2)
            self.pos += 1
            while True:
                self.skip(b" ")
                if self.peek() == 0x29:
                    self.pos += 1
                    break
                self.bare_item()
                self.parameters()
                if self.peek() not in (0x20, 0x29):
                    raise _SFError("inner list")
            self.parameters()
            return _OTHER
        item = self.bare_item()
        self.parameters()
        return item


def parse_targeted(values: Sequence[bytes]) -> CacheControl | None:
    """The directives of a targeted field (RFC 9213 §2.1), or None to ignore the field.

    "Targeted fields are Dictionary Structured Fields"; the field lines are
    combined with commas (RFC 8941 §4.2). Values map onto directive arguments:
    Integer -> its digits, Boolean true (or a bare key) -> no argument,
    Boolean false -> directive absent, String or Token -> its text; any other
    type gives an argument no directive accepts. A repeated key keeps its last
    value (RFC 8941 §4.2.2). "If a targeted field in a given response is empty,
    or a parsing error is encountered, that field SHOULD be ignored by the
    cache": None.
    """
    if not values:
        return None
    reader = _Reader(b",".join(values).strip(b" "))
    if not reader.text:
        return None
    members: dict[bytes, object] = {}
    try:
        while True:
            key = reader.key()
            if reader.peek() == 0x3D:
                reader.pos += 1
                value = reader.member_value()
            else:
                value = _TRUE
                reader.parameters()
            members[key] = value
            reader.skip(b" \t")
            if reader.peek() == -1:
                break
            if reader.peek() != 0x2C:
                raise _SFError("separator")
            reader.pos += 1
            reader.skip(b" \t")
            if reader.peek() == -1:
                raise _SFError("trailing comma")
    except _SFError:
        return None
    directives: dict[bytes, bytes | None] = {}
    for key, value in members.items():
        if value is _FALSE:
            continue
        if value is _TRUE:
            directives[key] = None
        elif isinstance(value, bytes):
            directives[key] = value
        else:
            directives[key] = _CONFLICT
    return CacheControl(directives)


def response_directives(
    headers: Headers, targets: Sequence[bytes] = (CDN_CACHE_CONTROL,)
) -> tuple[CacheControl, bool]:
    """The directives this cache obeys for a response, and whether a targeted field supplied them.

    RFC 9213 §2.2: "the cache MUST select the first (in target list order)
    field with a valid, non-empty value and use its value to determine the
    caching policy for the response, and it MUST ignore the Cache-Control and
    Expires header fields in that response, unless no valid, non-empty value is
    available from the listed header fields." ``targets`` is the target list,
    most specific first, lower-case. When the second value is True the caller
    must also ignore Expires.
    """
    for target in targets:
        values = field_values(headers, target)
        if values:
            parsed = parse_targeted(values)
            if parsed is not None:
                return parsed, True
    return parse_cache_control(field_values(headers, b"cache-control")), False
