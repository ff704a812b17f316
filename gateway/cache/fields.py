"""Pure field-value helpers the cache rules share: lists, dates, delta-seconds, entity tags.

Invariants:

- Field names given to these helpers are lower-case; stored names keep the case
  they arrived with and are compared lower-cased (RFC 9110 §5.1).
- Malformed values never raise: each helper says what it returns for them, and
  the rule that calls it decides what a missing or invalid value means.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Sequence

from gateway.parser import Headers

__all__ = [
    "DELTA_MAX",
    "EntityTag",
    "delta_seconds",
    "entity_tags",
    "field_values",
    "has_field",
    "joined",
    "list_members",
    "parse_entity_tag",
    "parse_http_date",
    "strong_match",
    "weak_match",
    "without",
]

#: RFC 9111 §1.2.2: "If a cache receives a delta-seconds value greater than the
#: greatest integer it can represent, or if any of its subsequent calculations
#: overflows, the cache MUST consider the value to be 2147483648 (2^31)".
DELTA_MAX = 2147483648
_DELTA = re.compile(rb"[0-9]+")


def field_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of the fields called ``name`` (lower-case), in order."""
    return [value for field, value in headers if field.lower() == name]


def has_field(headers: Headers, name: bytes) -> bool:
    """Whether a field called ``name`` (lower-case) is present."""
    return any(field.lower() == name for field, _ in headers)


def joined(headers: Headers, name: bytes) -> bytes | None:
    """The field's lines combined with ``", "`` (RFC 9110 §5.3), or None if absent."""
    values = field_values(headers, name)
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def without(headers: Headers, names: Iterable[bytes]) -> Headers:
    """``headers`` without the fields named in ``names`` (lower-case)."""
    drop = frozenset(names)
    return [pair for pair in headers if pair[0].lower() not in drop]


def list_members(values: Sequence[bytes], escapes: bool = True) -> list[bytes]:
    """The members of a ``#element`` list spread over ``values`` (RFC 9110 §5.6.1).

    Commas inside quoted strings do not split; members are OWS-stripped and
    empty members are dropped, as a recipient MUST accept them and ignore them.
    ``escapes=False`` reads a backslash as an ordinary byte, as inside entity
    tags (RFC 9110 §8.8.3: etagc includes ``\\``, there is no quoted-pair).
    """
    members: list[bytes] = []
    for value in values:
        if b'"' not in value:
            members.extend(m.strip(b" \t") for m in value.split(b","))
            continue
        start = 0
        quoted = False
        escaped = False
        for i, byte in enumerate(value):
            if escaped:
                escaped = False
            elif quoted and escapes and byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # DQUOTE
                quoted = not quoted
            elif byte == 0x2C and not quoted:  # comma
                members.append(value[start:i].strip(b" \t"))
                start = i + 1
        members.append(value[start:].strip(b" \t"))
    return [m for m in members if m]


def delta_seconds(value: bytes | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds as an int, capped at 2^31; None if invalid.

    RFC 9111 §5.2: for directives with arguments "recipients ought to accept
    both forms", so a quoted ``"60"`` reads as 60.
    """
    if value is None:
        return None
    if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
        value = value[1:-1]
    if _DELTA.fullmatch(value) is None:
        return None
    if len(value) > 10:
        return DELTA_MAX
    return min(int(value), DELTA_MAX)


# --- dates ---------------------------------------------------------------------
# RFC 9110 §5.6.7: "Recipients of timestamp values are encouraged to be robust
# in parsing timestamps unless otherwise restricted by the field definition.
# [...] A recipient that parses a timestamp value in an HTTP field MUST accept
# all three HTTP-date formats."
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec")
    )
}
_IMF = re.compile(rb"[A-Za-z]{3}, ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT")
_RFC850 = re.compile(rb"[A-Za-z]{6,9}, ([0-9]{2})-([A-Za-z]{3})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT")
_ASCTIME = re.compile(rb"[A-Za-z]{3} ([A-Za-z]{3}) ([ 0-9][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})")


def parse_http_date(value: bytes | None) -> float | None:
    """An HTTP-date (IMF-fixdate, rfc850-date or asctime-date) as epoch seconds, or None.

    Surrounding whitespace is ignored; anything else that is not one of the
    three formats, or names an impossible time, gives None. RFC 9110 §5.6.7
    wants a two-digit rfc850 year that "appears to be more than 50 years in the
    future" read as the past; without a clock we pivot at 70 (00-69 -> 20xx),
    which agrees with that rule until 2050.
    """
    if value is None:
        return None
    value = value.strip(b" \t")
    m = _IMF.fullmatch(value)
    if m is not None:
        day, month, year, hour, minute, second = m.groups()
    else:
        m = _RFC850.fullmatch(value)
        if m is not None:
            day, month, year, hour, minute, second = m.groups()
            short = int(year)
            year = b"%d" % (2000 + short if short < 70 else 1900 + short)
        else:
            m = _ASCTIME.fullmatch(value)
            if m is None:
                return None
            month, day, hour, minute, second, year = m.groups()
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    d, h, mi, s = int(day), int(hour), int(minute), int(second)
    # RFC 9110 §5.6.7: second = 2DIGIT ; 00-60 (leap second)
    if not (1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        return None
    if d > calendar.monthrange(int(year), month_number)[1]:
        return None
    return float(calendar.timegm((int(year), month_number, d, h, mi, min(s, 59), 0, 0, 0)))


# --- entity tags -----------------------------------------------------------------
# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/";
#   opaque-tag = DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
_ENTITY_TAG = re.compile(rb'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')

EntityTag = tuple[bool, bytes]
"""``(weak, opaque_tag)``; the opaque tag keeps its quotes."""


def parse_entity_tag(value: bytes | None) -> EntityTag | None:
    """One entity tag (an ETag field value), or None if absent or invalid."""
    if value is None:
        return None
    m = _ENTITY_TAG.fullmatch(value.strip(b" \t"))
    if m is None:
        return None
    return (m.group(1) is not None, m.group(2))


def entity_tags(values: Sequence[bytes]) -> list[EntityTag] | None:
    """An ``If-None-Match``/``If-Match`` list: ``[]`` for ``*``, None if invalid.

    RFC 9110 §13.1.2: If-None-Match = "*" / #entity-tag. The empty list stands
    for ``*`` (matches any current representation).
    """
    members = list_members(values, escapes=False)
    if members == [b"*"]:
        return []
    tags: list[EntityTag] = []
    for member in members:
        tag = parse_entity_tag(member)
        if tag is None:
            return None
        tags.append(tag)
    return tags if tags else None


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque tags match, weak or not."""
    return a[1] == b[1]


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: neither is weak and the opaque tags match."""
    return not a[0] and not b[0] and a[1] == b[1]
