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

from gateway.compat import SLOTS
from gateway.configvalues import (
    TOKEN,
    Address,
    Boolean,
    Choice,
    Count,
    Duration,
    Endpoint,
    FieldValue,
    FilePath,
    HostHeader,
    Methods,
    Name,
    NameList,
    NetworkList,
    ParamList,
    PathPrefix,
    Ratio,
    RouteHost,
    Size,
    Target,
    Token,
    ValueParser,
    is_hostname,
    show_duration,
    show_size,
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


@dataclass(frozen=True)
class SiteNames:
    """The host names a TLS site serves: DNS names and ``*.NAME`` wildcards, lower-cased.

    SNI carries DNS names only (RFC 6066 §3: "Literal IPv4 and IPv6 addresses
    are not permitted"), so IP addresses are refused: clients that connect by
    address get the listener's default site.  Each name at most once.
    """

    type_name: str = "hosts"

    def parse(self, raw: str) -> tuple[str, ...]:
        """The names in the order written."""
        names: list[str] = []
        for item in split_list(raw):
            try:
                name = RouteHost().parse(item)
            except ValueError:
                name = ""
            if not name or name.startswith("[") or _is_ip_text(name):
                raise value_error(
                    "DNS names or *.NAME wildcards", item, "no IP addresses, comma separated"
                )
            names.append(name)
        if not names:
            raise value_error("at least one host name", raw, "such as www.example.com, *.example.com")
        if len(set(names)) != len(names):
            raise value_error("each name once", raw)
        return tuple(names)

    def show(self, value: Sequence[str]) -> str:
        """Comma separated."""
        return ", ".join(value)


def _is_ip_text(text: str) -> bool:
    parts = text.split(".")
    return ":" in text or (len(parts) == 4 and all(p.isdigit() for p in parts))


# RFC 6797 §6.1: Strict-Transport-Security = directive *( ";" [ directive ] );
# max-age is REQUIRED, includeSubDomains OPTIONAL; "preload" is the HSTS preload
# list's convention.  Unknown directives are refused here, though UAs ignore
# them, because a misspelt includeSubDomains would be silently lost.
_HSTS_DIRECTIVES = {"max-age", "includesubdomains", "preload"}
_HSTS_MAX_AGE = re.compile(r'max-age\s*=\s*(?:"([0-9]+)"|([0-9]+))\Z', re.IGNORECASE)


@dataclass(frozen=True)
class Hsts:
    """A Strict-Transport-Security value: ``max-age=N[; includeSubDomains][; preload]``."""

    type_name: str = "hsts"

    def parse(self, raw: str) -> str:
        """The value as written; empty means no header."""
        if not raw:
            return raw
        allowed = "max-age=SECONDS, then optionally includeSubDomains and preload, separated by ;"
        seen: set[str] = set()
        for directive in (part.strip() for part in raw.split(";")):
            name = directive.partition("=")[0].strip().lower()
            if name not in _HSTS_DIRECTIVES or name in seen:
                raise value_error("a Strict-Transport-Security value", raw, allowed)
            if name == "max-age" and not _HSTS_MAX_AGE.match(directive):
                raise value_error("a Strict-Transport-Security value", raw, allowed)
            if name != "max-age" and directive.lower() != name:
                raise value_error("a Strict-Transport-Security value", raw, allowed)
            seen.add(name)
        if "max-age" not in seen:
            raise value_error("a Strict-Transport-Security value", raw, allowed)
        return raw

    def show(self, value: str) -> str:
        """The value; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class HeaderName:
    """A header field name (an RFC 9110 token) as written; empty means none."""

    type_name: str = "token"

    def parse(self, raw: str) -> str:
        """The name; empty turns the feature off."""
        if raw and not TOKEN.match(raw):
            raise value_error("a header name", raw, "an RFC 9110 token, or empty for none")
        return raw

    def show(self, value: str) -> str:
        """The name; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class ServerName:
    """The name a backend's TLS certificate must carry: a DNS name or an IP address.

    Sent as SNI when it is a DNS name (RFC 6066 §3).  Empty: the host of the
    server's ``address``.
    """

    type_name: str = "host"

    def parse(self, raw: str) -> str:
        """The name, lower-cased (host names compare case-insensitively)."""
        if raw and not is_hostname(raw):
            raise value_error("a DNS name or IP address", raw, "no port; empty for the server's host")
        return raw.lower()

    def show(self, value: str) -> str:
        """The name; empty shows as ``(empty)``."""
        return value or "(empty)"


class _Required:
    """The default of a key that has none: the section must set it."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, **SLOTS)
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
_YEAR = 365 * _DAY
_TIMEOUT = Duration(0.001, _DAY)
_GIB = 1024**3

#: ``tls_min_version`` values; 1.0 and 1.1 are the explicit legacy override.
TLS_VERSIONS = ("1.2", "1.3", "1.0", "1.1")

GATEWAY: Mapping[str, ValueParser] = {
    "access_log": Boolean(),
    "server_header": FieldValue(),
    "via_pseudonym": Token(),
    "trusted_proxies": NetworkList(),
    "workers": Count(0, 64),
    "shutdown_grace": Duration(0.001, _HOUR),
    "spool_dir": FilePath(),
    "spool_memory": Size(1024, 64 * _GIB, zero="spool nothing in memory"),
    "spool_disk": Size(1024, 1024 * _GIB, zero="spool nothing on disk"),
    "spool_buffer": Size(1024, _GIB),
    "spool_max": Size(64 * 1024, 1024 * _GIB),
    "tls_reload_interval": Duration(1.0, _DAY, zero="off"),
    "tls_ticket_rotate": Duration(60.0, _DAY),
    "cache_dir": FilePath(),
    "cache_max_size": Size(1024**2, 1024 * _GIB),
    "cache_max_object": Size(1024, 1024 * _GIB),
    "cache_fsync": Boolean(),
    "cache_hot_entries": Count(0, 1_000_000),
    "cache_purge_from": NetworkList(),
    "cache_status_name": Token(),
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
    "tls": Boolean(),
    "tls_sites": NameList(),
    "tls_default_site": Name(optional=True),
    "tls_min_version": Choice(TLS_VERSIONS),
    "tls_session_tickets": Boolean(),
    "tls_client_auth": Choice(("off", "optional", "required")),
    "tls_client_ca": FilePath(),
    "tls_client_header": HeaderName(),
    "hsts": Hsts(),
    "redirect_https": Boolean(),
    "redirect_https_port": Count(1, 65535),
}
#: Listener keys that only mean something with ``tls = true``.
LISTENER_TLS_KEYS = (
    "tls_sites", "tls_default_site", "tls_min_version", "tls_session_tickets",
    "tls_client_auth", "tls_client_ca", "hsts",
)
ROUTE: Mapping[str, ValueParser] = {
    "backend": Name(),
    "host": RouteHost(),
    "path_prefix": PathPrefix(),
    "path_exact": PathPrefix(optional=True),
    "path_regex": PathRegex(),
    "methods": Methods(),
    "header": HeaderCondition(),
    "listeners": NameList(),
    "buffering": Boolean(),
    "request_buffering": Boolean(),
    "cache": Boolean(),
    "cache_key_sort_query": Boolean(),
    "cache_key_drop_params": ParamList(),
    "cache_store_set_cookie": Boolean(),
    "cache_status": Boolean(),
    "cache_stale_if_error": Duration(1.0, _YEAR, zero="off"),
    "cache_collapse_timeout": Duration(0.001, _HOUR, zero="no collapsing"),
    "cache_target_field": HeaderName(),
    "cache_heuristic_max": Duration(1.0, _YEAR, zero="no heuristic freshness"),
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
    "tls_verify": Boolean(),
    "tls_ca": FilePath(),
    "tls_server_name": ServerName(),
    "tls_client_cert": FilePath(),
    "tls_client_key": FilePath(),
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
SITE: Mapping[str, ValueParser] = {
    "names": SiteNames(),
    "cert": FilePath(optional=False),
    "key": FilePath(optional=False),
    "chain": FilePath(),
    "ocsp": FilePath(),
    "alt_cert": FilePath(),
    "alt_key": FilePath(),
    "alt_chain": FilePath(),
    "alt_ocsp": FilePath(),
}
#: Keys whose value is a file path, per section kind (made absolute on load).
FILE_KEYS: Mapping[str, tuple[str, ...]] = {
    "gateway": ("cache_dir",),
    "listener": ("tls_client_ca",),
    "backend": ("tls_ca", "tls_client_cert", "tls_client_key"),
    "site": ("cert", "key", "chain", "ocsp", "alt_cert", "alt_key", "alt_chain", "alt_ocsp"),
}

#: kind -> keys that every section of that kind must set.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "listener": ("bind",),
    "route": ("backend",),
    "server": ("backend", "address"),
    "demo": ("bind",),
    "site": ("names", "cert", "key"),
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


def cache_problems(found: Found, builtin: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(section, key, message)`` for each cache rule ``found`` breaks.

    ``builtin`` holds every ``[gateway]`` key's built-in default.

    - ``cache = true`` on a route needs a ``[gateway] cache_dir`` to store in.
    - ``cache_max_object <= cache_max_size``: one object can't exceed the store.
    """
    problems: list[tuple[str, str, str]] = []
    settings = {**builtin, **found["gateway"].get("", {})}
    for name, values in found["route"].items():
        if values.get("cache") and not settings["cache_dir"]:
            message = "is true but [gateway] cache_dir is empty; allowed: set cache_dir, or cache = false"
            problems.append((f"route:{name}", "cache", message))
    largest, total = settings["cache_max_object"], settings["cache_max_size"]
    if largest > total:
        own = found["gateway"].get("", {})
        where = "cache_max_object" if "cache_max_object" in own or "cache_max_size" not in own else "cache_max_size"
        message = (
            f"cache_max_object {show_size(largest)} is larger than cache_max_size "
            f"{show_size(total)}; allowed: cache_max_object <= cache_max_size"
        )
        problems.append(("gateway", where, message))
    return problems
