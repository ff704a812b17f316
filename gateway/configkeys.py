"""The key tables' contents: which keys each section kind takes, and how each parses.

:mod:`gateway.config` turns the parser maps here into its key tables
(:data:`gateway.config.SECTION_KEYS`) with :func:`table`, which takes each
default from the section's dataclass so that the two can't drift.  Value types
shared by many keys live in :mod:`gateway.configvalues`; the few that belong to
one key (a hash key, a header condition, status codes, a path regex) live here,
next to it, as do the rules that relate keys to each other
(:func:`cross_key_problems`).

Invariants: pure (no reactor, no I/O); the order of keys here is the order in
which error messages list them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from gateway.configvalues import (
    TOKEN,
    Address,
    Boolean,
    Choice,
    Count,
    Duration,
    Endpoint,
    FieldValue,
    HostHeader,
    Methods,
    Name,
    NameList,
    NetworkList,
    PathPrefix,
    Ratio,
    RouteHost,
    Size,
    Target,
    Token,
    ValueParser,
    show_duration,
    split_list,
    value_error,
)

_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
# RFC 9110 §5.5: field-value without the OWS around it; here ASCII only.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
_STATUS_RANGE = re.compile(r"([0-9]{3})(?:\s*-\s*([0-9]{3}))?\Z")


@dataclass(frozen=True)
class PathRegex:
    """A Python regular expression for the path; empty means "no path condition".

    Printable ASCII only, because it is compiled as a bytes pattern and matched
    against the raw (percent-encoded) path bytes of the request target.
    """

    type_name: str = "regex"

    def parse(self, raw: str) -> str:
        """The expression as written, once ``re`` compiles it."""
        if not _PRINTABLE.match(raw):
            raise value_error("a regular expression", raw, "printable ASCII")
        try:
            re.compile(raw.encode("ascii"))
        except re.error as exc:
            raise value_error("a regular expression Python's re compiles", raw, str(exc)) from None
        return raw

    def show(self, value: str) -> str:
        """The expression; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class HashKey:
    """What ``balance = hash`` hashes: ``client_ip``, ``uri``, ``header:NAME``, ``cookie:NAME``.

    A header name is stored in lower case (RFC 9110 §5.1: field names are
    case-insensitive); a cookie name as written (RFC 6265 compares them exactly).
    """

    type_name: str = "hashkey"

    def parse(self, raw: str) -> str:
        """The key, ``header:`` names lower-cased."""
        kind, colon, name = raw.partition(":")
        if raw in ("client_ip", "uri"):
            return raw
        if colon and kind in ("header", "cookie") and TOKEN.match(name):
            return f"header:{name.lower()}" if kind == "header" else raw
        raise value_error("client_ip|uri|header:NAME|cookie:NAME", raw, "NAME an RFC 9110 token")

    def show(self, value: str) -> str:
        """The key."""
        return value


@dataclass(frozen=True)
class HeaderCondition:
    """``Name`` (the field is present) or ``Name: value`` (a field line has that value).

    Stored as ``name`` or ``name: value`` with the name in lower case (RFC 9110
    §5.1); the value compares exactly, after the OWS around it (§5.5).
    """

    type_name: str = "header"

    def parse(self, raw: str) -> str:
        """The condition, normalised; empty means no condition."""
        if not raw:
            return raw
        name, colon, value = (part.strip() for part in raw.partition(":"))
        if not TOKEN.match(name) or (colon and not _HEADER_VALUE.match(value)):
            allowed = "Name an RFC 9110 token; value printable ASCII, not empty"
            raise value_error("Name or Name: value", raw, allowed)
        return f"{name.lower()}: {value}" if colon else name.lower()

    def show(self, value: str) -> str:
        """The condition; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class StatusRange:
    """Status codes ``LO-HI`` or one code ``N`` -> ``(lo, hi)``, ``100 <= lo <= hi <= 599``."""

    type_name: str = "status"

    def parse(self, raw: str) -> tuple[int, int]:
        """The inclusive range."""
        match = _STATUS_RANGE.match(raw)
        low = int(match.group(1)) if match else 0
        high = int(match.group(2) or low) if match else 0
        if not 100 <= low <= high <= 599:
            expected = "a status range like 200-399, or one status"
            raise value_error(expected, raw, "100..599, low first")
        return low, high

    def show(self, value: tuple[int, int]) -> str:
        """``200-399``, or ``200`` for a single code."""
        low, high = value
        return f"{low}-{high}" if low != high else str(low)


@dataclass(frozen=True)
class StatusList:
    """Status codes within ``low..high``, each at most once; empty is allowed."""

    low: int
    high: int
    type_name: str = "statuses"

    def parse(self, raw: str) -> tuple[int, ...]:
        """The codes in the order written."""
        codes = split_list(raw)
        for code in codes:
            if not re.fullmatch(r"[0-9]{3}", code) or not self.low <= int(code) <= self.high:
                raise value_error(f"status codes {self.low}..{self.high}", code, "comma separated")
        if len(set(codes)) != len(codes):
            raise value_error("each status once", raw)
        return tuple(int(code) for code in codes)

    def show(self, value: Sequence[int]) -> str:
        """Comma separated; empty shows as ``(empty)``."""
        return ", ".join(map(str, value)) or "(empty)"


class _Required:
    """The default of a key that has none: the section must set it."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Key:
    """One legal key: how its value parses (and its range), and its default."""

    parser: ValueParser
    default: Any

    @property
    def required(self) -> bool:
        """Whether every section of this kind must set the key."""
        return self.default is REQUIRED


def table(
    cls: type, parsers: Mapping[str, ValueParser], required: Iterable[str] = ()
) -> Mapping[str, Key]:
    """A key table whose defaults are the dataclass defaults, so they can't drift."""
    defaults = {f.name: f.default for f in fields(cls)}
    needed = frozenset(required)
    return MappingProxyType(
        {
            key: Key(parser, REQUIRED if key in needed else defaults[key])
            for key, parser in parsers.items()
        }
    )


_DAY = 86400.0
_HOUR = 3600.0
_TIMEOUT = Duration(0.001, _DAY)
_GIB = 1024**3

GATEWAY: Mapping[str, ValueParser] = {
    "access_log": Boolean(),
    "server_header": FieldValue(),
    "via_pseudonym": Token(),
    "trusted_proxies": NetworkList(),
}
LISTENER: Mapping[str, ValueParser] = {
    "bind": Endpoint(),
    "max_request_line": Size(256, 1024**2),
    "max_header_size": Size(1024, 1024**2),
    "max_header_count": Count(1, 10000),
    "max_body_size": Size(1, 1024 * _GIB, zero="no limit"),
    "max_connections": Count(1, 1_000_000),
    "timeout_header": _TIMEOUT,
    "timeout_idle": _TIMEOUT,
    "timeout_client": _TIMEOUT,
    "timeout_request": Duration(0.001, _DAY, zero="no cap"),
    "default_backend": Name(optional=True),
}
ROUTE: Mapping[str, ValueParser] = {
    "backend": Name(),
    "host": RouteHost(),
    "path_prefix": PathPrefix(),
    "path_exact": PathPrefix(optional=True),
    "path_regex": PathRegex(),
    "methods": Methods(),
    "header": HeaderCondition(),
    "listeners": NameList(),
}
#: The keys of a route that say which paths it matches; at most one may be set.
PATH_KEYS = ("path_prefix", "path_exact", "path_regex")

BACKEND: Mapping[str, ValueParser] = {
    "balance": Choice(("roundrobin", "leastconn", "hash", "random2")),
    "hash_key": HashKey(),
    "host_header": HostHeader(),
    "timeout_connect": _TIMEOUT,
    "timeout_response": _TIMEOUT,
    "timeout_read": _TIMEOUT,
    "pool_max_idle": Count(0, 100_000),
    "pool_idle_timeout": _TIMEOUT,
    "pool_max_conns": Count(1, 100_000),
    "queue_size": Count(0, 1_000_000),
    "timeout_queue": _TIMEOUT,
    "retries": Count(0, 10),
    "retry_budget": Ratio(),
    "retry_budget_min": Count(0, 10_000),
    "retry_window": Duration(1.0, _HOUR),
    # RFC 9110 §10.2.3: Retry-After is delay-seconds, a whole number.
    "retry_after": Duration(1.0, _HOUR, whole_seconds=True),
    "check": Choice(("none", "http", "tcp")),
    "check_interval": Duration(0.1, _HOUR),
    "check_timeout": Duration(0.001, _HOUR),
    "check_rise": Count(1, 100),
    "check_fall": Count(1, 100),
    # RFC 9110 §9.1: method = token.
    "check_method": Token(),
    "check_path": Target(),
    "check_host": HostHeader(),
    "check_status": StatusRange(),
    "check_body": FieldValue(),
    "eject_consecutive": Count(0, 1000),
    "eject_statuses": StatusList(500, 599),
    "eject_time": Duration(1.0, _HOUR),
    "eject_time_max": Duration(1.0, _DAY),
    "eject_max_share": Ratio(),
    "slow_start": Duration(1.0, _HOUR, zero="off"),
}
SERVER: Mapping[str, ValueParser] = {
    "backend": Name(),
    "address": Address(),
    "weight": Count(1, 1000),
    "max_conns": Count(0, 100_000),
    "backup": Boolean(),
    "drain": Boolean(),
}
DEMO: Mapping[str, ValueParser] = {"bind": Endpoint()}

#: kind -> keys that every section of that kind must set.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "listener": ("bind",),
    "route": ("backend",),
    "server": ("backend", "address"),
    "demo": ("bind",),
}


Found = Mapping[str, Mapping[str, Mapping[str, Any]]]


def cross_key_problems(found: Found, builtin: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(section, key, message)`` for each rule between keys that ``found`` breaks.

    ``found`` maps kind -> NAME -> the keys a section sets (``""`` names
    [defaults]); ``builtin`` holds every backend key's built-in default.

    - A route sets at most one of :data:`PATH_KEYS`; the later ones in that
      order are reported.
    - A backend's values (its own, else [defaults], else built in) pass
      :func:`backend_conflicts`.  A clash is reported at the backend's key if
      it sets one of those involved, else at [defaults] (the same message for
      every backend that inherits it, so it is reported once).
    - A backend has a server that is not a backup (key ``servers``: the
      problem is the backend's, reported at its header).
    """
    problems: list[tuple[str, str, str]] = []
    for name, values in found["route"].items():
        written = [key for key in PATH_KEYS if values.get(key)]
        for key in written[1:]:
            message = f"conflicts with {written[0]}; allowed: one of {', '.join(PATH_KEYS)}"
            problems.append((f"route:{name}", key, message))
    defaults = found["defaults"].get("", {})
    inherited = {key: value for key, value in defaults.items() if key in builtin}
    for name, own in found["backend"].items():
        for key, other, message in backend_conflicts({**builtin, **inherited, **own}):
            section = f"backend:{name}"
            places = [(section, own, key), (section, own, other)]
            places += [("defaults", defaults, key), ("defaults", defaults, other)]
            where, _, blamed = next(place for place in places if place[2] in place[1])
            problems.append((where, blamed, message))
    backup: dict[str, list[bool]] = {}
    for values in found["server"].values():
        backup.setdefault(values.get("backend", ""), []).append(values.get("backup", False))
    for name in found["backend"]:
        if all(backup.get(name, [False])):
            message = (
                "every server of this backend has backup = true, so none serves while "
                "all are up; allowed: at least one server with backup = false"
            )
            problems.append((f"backend:{name}", "servers", message))
    return problems


def backend_conflicts(values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(key, other key, message)`` for each rule a backend's values break.

    ``values`` holds every backend key (the backend's own, else [defaults],
    else built in).  The message names both keys, so it reads right whichever
    of the two it is reported at.
    """
    found: list[tuple[str, str, str]] = []
    timeout, interval = values["check_timeout"], values["check_interval"]
    if not timeout < interval:
        # A check still running when the next one is due would overlap it.
        message = (
            f"check_timeout {show_duration(timeout)} is not shorter than check_interval "
            f"{show_duration(interval)}; allowed: check_timeout < check_interval"
        )
        found.append(("check_timeout", "check_interval", message))
    shortest, longest = values["eject_time"], values["eject_time_max"]
    if longest < shortest:
        message = (
            f"eject_time_max {show_duration(longest)} is shorter than eject_time "
            f"{show_duration(shortest)}; allowed: eject_time_max >= eject_time"
        )
        found.append(("eject_time_max", "eject_time", message))
    return found
