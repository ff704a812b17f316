"""Value parsers for the INI configuration: one small class per value type.

Each parser turns the raw text of one INI value into a frozen Python value or
raises :class:`ValueError` whose message reads ``expected WHAT, got 'RAW'`` and,
where the form alone doesn't say it, ``; allowed: RANGE``.  The loader in
:mod:`gateway.config` prefixes that message with ``FILE:LINE [section] key:``.

Invariants:

- Pure: no reactor, no sockets.  The endpoint check hands Twisted's parser a
  placeholder reactor that is never used; for ``ssl:`` that parser reads the
  key and certificate files, which is wanted: a broken certificate must fail
  the check, not the first handshake.
- Every parser can render a value back (``show``) in a form it accepts again,
  so the documentation's defaults are checked against the code.

Types that belong to a single key (hash keys, header conditions, status codes,
path regexes) live next to their key in :mod:`gateway.configkeys`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString

#: Section names (and every name that refers to one) look like this.
NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")

_KIB = 1024
_SIZE_UNITS = {
    "": 1,
    "k": _KIB, "kb": _KIB, "kib": _KIB,
    "m": _KIB**2, "mb": _KIB**2, "mib": _KIB**2,
    "g": _KIB**3, "gb": _KIB**3, "gib": _KIB**3,
}
_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)\Z", re.IGNORECASE)

_DURATION_UNITS = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\Z", re.IGNORECASE)

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

# RFC 9110 §5.6.2: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" /
# "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §5.5: field-value = *field-content; no CTLs other than HTAB.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
# RFC 1123 §2.1 labels; "_" is tolerated because container service names use it.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_LIST_SEPARATOR = re.compile(r"[,\s]+")
# RFC 3986 §3.3 pchar and "/" (with "%" for pct-encoded); §3.4 query adds "?".
_PCHARS = "!$&'()*+,;=:@%/A-Za-z0-9._~-"
_PATH = re.compile(rf"/[{_PCHARS}]*\Z")
_ORIGIN_FORM = re.compile(rf"/[{_PCHARS}]*(?:\?[?{_PCHARS}]*)?\Z")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


class ValueParser(Protocol):
    """What the key tables need from a value type."""

    @property
    def type_name(self) -> str:
        """Short type name for the documentation (``duration``, ``size``, ...)."""

    def parse(self, raw: str) -> Any:
        """The value that ``raw`` stands for; :class:`ValueError` if none."""

    def show(self, value: Any) -> str:
        """``value`` written back the way a config file would spell it."""


def value_error(expected: str, raw: str, allowed: str = "") -> ValueError:
    """The one shape of every value error: ``expected X, got 'RAW'[; allowed: Y]``."""
    message = f"expected {expected}, got {raw!r}"
    return ValueError(f"{message}; allowed: {allowed}" if allowed else message)


def show_size(value: int) -> str:
    """``65536`` -> ``64k``: the largest binary unit that divides evenly."""
    for suffix, factor in (("g", _KIB**3), ("m", _KIB**2), ("k", _KIB)):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def show_duration(value: float) -> str:
    """``300.0`` -> ``5m``: the largest unit that gives a whole number."""
    for suffix, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = value / factor
        if value and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{suffix}"
    return f"{value:g}s"


@dataclass(frozen=True)
class Boolean:
    """``true/false/yes/no/on/off/1/0``, any case."""

    type_name: str = "bool"

    def parse(self, raw: str) -> bool:
        """True or False; anything else is an error, never a silent False."""
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise value_error("true|false|yes|no|on|off|1|0", raw)

    def show(self, value: bool) -> str:
        """``true`` or ``false``."""
        return "true" if value else "false"


@dataclass(frozen=True)
class Count:
    """A plain non-negative integer within ``low..high``."""

    low: int
    high: int
    type_name: str = "integer"

    def parse(self, raw: str) -> int:
        """The integer; signs, fractions and units are errors."""
        if not re.fullmatch(r"[0-9]+", raw) or not self.low <= int(raw) <= self.high:
            raise value_error(f"an integer {self.low}..{self.high}", raw)
        return int(raw)

    def show(self, value: int) -> str:
        """Decimal digits."""
        return str(value)


@dataclass(frozen=True)
class Size:
    """Bytes: an integer with an optional binary unit (``k``/``kb``/``kib``, ...).

    ``zero`` names what 0 means when 0 is allowed below ``low`` (``no limit``).
    """

    low: int
    high: int
    zero: str = ""
    type_name: str = "size"

    def _allowed(self) -> str:
        span = f"{show_size(self.low) if self.low else 0}..{show_size(self.high)}"
        return f"0 ({self.zero}) or {span}" if self.zero else span

    def parse(self, raw: str) -> int:
        """The number of bytes; units are powers of 1024."""
        match = _SIZE.match(raw)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _SIZE_UNITS:
            raise value_error("a size like 512, 64k or 1m", raw, self._allowed())
        value = int(match.group(1)) * _SIZE_UNITS[unit]
        if not (self.low <= value <= self.high or (self.zero and value == 0)):
            raise value_error(f"a size in {self._allowed()}", raw)
        return value

    def show(self, value: int) -> str:
        """The shortest exact spelling (``8k``, ``100m``)."""
        return show_size(value)


@dataclass(frozen=True)
class Duration:
    """Seconds as a float: a number with an optional unit ``ms|s|m|h``.

    ``zero`` names what 0 means when 0 is allowed below ``low`` (``no cap``).
    """

    low: float
    high: float
    zero: str = ""
    whole_seconds: bool = False
    type_name: str = "duration"

    def _allowed(self) -> str:
        span = f"{show_duration(self.low)}..{show_duration(self.high)}"
        return f"0 ({self.zero}) or {span}" if self.zero else span

    def parse(self, raw: str) -> float:
        """Float seconds; a bare number is seconds."""
        match = _DURATION.match(raw)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _DURATION_UNITS:
            raise value_error("a duration like 500ms, 10s, 2m or 1h", raw, self._allowed())
        value = float(match.group(1)) * _DURATION_UNITS[unit]
        if not (self.low <= value <= self.high or (self.zero and value == 0)):
            raise value_error(f"a duration in {self._allowed()}", raw)
        if self.whole_seconds and abs(value - round(value)) > 1e-9:
            raise value_error("a duration in whole seconds", raw, self._allowed())
        return float(round(value)) if self.whole_seconds else value

    def show(self, value: float) -> str:
        """The largest whole unit (``10s``, ``5m``)."""
        return show_duration(value)


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words, exactly as written (lower case)."""

    options: tuple[str, ...]
    type_name: str = "choice"

    def parse(self, raw: str) -> str:
        """The word itself."""
        if raw not in self.options:
            raise value_error("|".join(self.options), raw)
        return raw

    def show(self, value: str) -> str:
        """The word itself."""
        return value


@dataclass(frozen=True)
class FieldValue:
    """Text that goes into an HTTP header as is; empty is allowed."""

    type_name: str = "text"

    def parse(self, raw: str) -> str:
        """The text; control characters would let a config inject header lines."""
        if not _FIELD_VALUE.match(raw):
            raise value_error("header-safe text", raw, "printable characters, no CR/LF")
        return raw

    def show(self, value: str) -> str:
        """The text; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class Token:
    """An RFC 9110 token (``1*tchar``), such as a Via pseudonym."""

    type_name: str = "token"

    def parse(self, raw: str) -> str:
        """The token."""
        if not TOKEN.match(raw):
            raise value_error("an RFC 9110 token", raw, "letters, digits and !#$%&'*+-.^_`|~")
        return raw

    def show(self, value: str) -> str:
        """The token."""
        return value


def is_hostname(text: str) -> bool:
    """Whether ``text`` is an IP address or a DNS name (RFC 1123, "_" tolerated)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text.removesuffix(".").split(".")
    # A name whose last label is all digits can only be a (broken) IPv4 address.
    return (
        len(text) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


@dataclass(frozen=True)
class RouteHost:
    """The host a route matches: empty (any), a name, an IP or ``*.NAME``; lower-cased.

    Written as the request's Host header writes it, less the port: routing
    strips the request's port, so a port here could never match and is refused.
    IPv6 literals therefore keep their brackets (``[::1]``).  A wildcard
    ``*.example.com`` stands for names with at least one more label; its
    suffix must be a DNS name, because an IP address has no sub-names.
    """

    type_name: str = "host"

    def parse(self, raw: str) -> str:
        """The host in lower case, because host names compare case-insensitively."""
        wildcard = raw.startswith("*.")
        literal = raw.startswith("[") and raw.endswith("]") and ":" in raw
        inner = raw[2:] if wildcard else raw[1:-1] if literal else raw
        if wildcard and (_is_ip(inner) or not is_hostname(inner)):
            raise value_error("*.NAME", raw, "NAME a DNS name, such as *.example.com")
        if raw and (not is_hostname(inner) or (":" in inner) != literal):
            raise value_error(
                "a host name or IP address without port",
                raw,
                "empty for any host; *.NAME for every name under NAME; IPv6 in brackets ([::1])",
            )
        # RFC 9110 §4.2.3: host names are case-insensitive; the root dot is moot.
        return raw.lower().removesuffix(".")

    def show(self, value: str) -> str:
        """The host; empty shows as ``(empty)``."""
        return value or "(empty)"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostHeader:
    """A Host header value to send upstream (``host`` or ``host:port``); empty allowed."""

    type_name: str = "host"

    def parse(self, raw: str) -> str:
        """The value as written."""
        if not raw:
            return raw
        try:
            parts = urlsplit(f"http://{raw}")
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.netloc != raw or "@" in raw or not parts.hostname:
            raise value_error("host or host:port", raw, "empty to keep the client's Host")
        if not is_hostname(parts.hostname) or port == 0:
            raise value_error("host or host:port", raw, "empty to keep the client's Host")
        return raw

    def show(self, value: str) -> str:
        """The value; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class PathPrefix:
    """A path: starts with "/", no query, fragment, spaces or controls.

    With ``optional``, empty is allowed too and means "no path condition".
    """

    optional: bool = False
    type_name: str = "path"

    def parse(self, raw: str) -> str:
        """The path as written."""
        if not (raw == "" and self.optional) and not _PATH.match(raw):
            extra = "; or empty for none" if self.optional else ""
            raise value_error("a path starting with /", raw, f"no spaces, '?' or '#'{extra}")
        return raw

    def show(self, value: str) -> str:
        """The path; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class Target:
    """An RFC 9112 §3.2.1 origin-form target: ``absolute-path [ "?" query ]``."""

    type_name: str = "target"

    def parse(self, raw: str) -> str:
        """The target as written."""
        if not _ORIGIN_FORM.match(raw):
            expected = "a path starting with /, with an optional ?query"
            raise value_error(expected, raw, "no spaces or '#'")
        return raw

    def show(self, value: str) -> str:
        """The target."""
        return value


@dataclass(frozen=True)
class Name:
    """The name of another section (``backend = app``); empty only if ``optional``."""

    optional: bool = False
    type_name: str = "name"

    def parse(self, raw: str) -> str:
        """The name; whether it exists is checked once all sections are read."""
        if not (raw == "" and self.optional) and not NAME.match(raw):
            extra = ", or empty for none" if self.optional else ""
            raise value_error("a section name", raw, f"[A-Za-z0-9_.-]+{extra}")
        return raw

    def show(self, value: str) -> str:
        """The name; empty shows as ``(empty)``."""
        return value or "(empty)"


@dataclass(frozen=True)
class Ratio:
    """A share written as a decimal fraction within ``low..high`` (``0.2``)."""

    low: float = 0.0
    high: float = 1.0
    type_name: str = "ratio"

    def parse(self, raw: str) -> float:
        """The fraction as a float; percentages and signs are errors."""
        if not _DECIMAL.match(raw) or not self.low <= float(raw) <= self.high:
            raise value_error(f"a decimal {self.low:g}..{self.high:g}", raw)
        return float(raw)

    def show(self, value: float) -> str:
        """The shortest decimal (``0.2``, ``1``)."""
        return f"{value:g}"


@dataclass(frozen=True)
class Methods:
    """RFC 9110 §9.1 method tokens, each at most once; empty means any method.

    Methods are case-sensitive, so ``get`` is not ``GET``; kept as written.
    """

    type_name: str = "methods"

    def parse(self, raw: str) -> tuple[str, ...]:
        """The methods in the order written."""
        methods = split_list(raw)
        for method in methods:
            if not TOKEN.match(method):
                raise value_error("method tokens", method, "such as GET, POST, comma separated")
        if len(set(methods)) != len(methods):
            raise value_error("each method once", raw)
        return tuple(methods)

    def show(self, value: Sequence[str]) -> str:
        """Comma separated; empty shows as ``(empty)``."""
        return ", ".join(value) or "(empty)"


def split_list(raw: str) -> list[str]:
    """Items separated by commas and/or white space (including new lines)."""
    return [item for item in _LIST_SEPARATOR.split(raw) if item]


@dataclass(frozen=True)
class NameList:
    """Names of other sections, each at most once; empty is allowed."""

    type_name: str = "names"

    def parse(self, raw: str) -> tuple[str, ...]:
        """The names in the order written."""
        names = split_list(raw)
        for name in names:
            if not NAME.match(name):
                raise value_error("section names", name, "[A-Za-z0-9_.-]+, comma separated")
        if len(set(names)) != len(names):
            raise value_error("each name once", raw)
        return tuple(names)

    def show(self, value: Sequence[str]) -> str:
        """Comma separated; empty shows as ``(empty)``."""
        return ", ".join(value) or "(empty)"


# RFC 3986 §3.4 query characters, less the separators "&" and "=" of
# name=value pairs (and "#", which ends a query).
_PARAM_NAME = re.compile(r"[!$'()*+,;:@%/?A-Za-z0-9._~-]+\Z")


@dataclass(frozen=True)
class ParamList:
    """Query parameter names, each at most once, kept as written; empty is allowed.

    Names are compared with the raw (still percent-encoded) names in request
    targets, case-sensitively.  Commas and white space separate names, so a
    name can't contain them.
    """

    type_name: str = "params"

    def parse(self, raw: str) -> tuple[str, ...]:
        """The names in the order written."""
        names = split_list(raw)
        for name in names:
            if not _PARAM_NAME.match(name):
                raise value_error(
                    "query parameter names", name, "as written in URLs, without & = #, comma separated"
                )
        if len(set(names)) != len(names):
            raise value_error("each name once", raw)
        return tuple(names)

    def show(self, value: Sequence[str]) -> str:
        """Comma separated; empty shows as ``(empty)``."""
        return ", ".join(value) or "(empty)"


@dataclass(frozen=True)
class NetworkList:
    """IP addresses or CIDR networks; stored normalised (``10.0.0.0/8``)."""

    type_name: str = "networks"

    def parse(self, raw: str) -> tuple[str, ...]:
        """Each item through ``ipaddress.ip_network(strict=False)``."""
        networks: list[str] = []
        for item in split_list(raw):
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise value_error("an IP address or CIDR network", item) from None
        return tuple(networks)

    def show(self, value: Sequence[str]) -> str:
        """Comma separated; empty shows as ``(empty)``."""
        return ", ".join(value) or "(empty)"


_FILE_PATH = re.compile(r"[^\x00-\x1f\x7f]+\Z")


@dataclass(frozen=True)
class FilePath:
    """A file's path: absolute, or relative to the configuration file's directory.

    Only the form is checked here; :mod:`gateway.config` makes the path
    absolute and, for the TLS keys, reads the file at check time, because a
    certificate that can't be used must fail the check, not the first
    handshake.  Empty is allowed only if ``optional`` (then: no file).
    """

    optional: bool = True
    type_name: str = "file"

    def parse(self, raw: str) -> str:
        """The path as written."""
        if raw == "" and self.optional:
            return raw
        if not _FILE_PATH.match(raw):
            extra = "; or empty for none" if self.optional else ""
            raise value_error("a file path", raw, f"no control characters{extra}")
        return raw

    def show(self, value: str) -> str:
        """The path; empty shows as ``(empty)``."""
        return value or "(empty)"


class _NoReactor:
    """Stands in for a reactor while Twisted parses an endpoint; never used."""


@dataclass(frozen=True)
class Endpoint:
    """A Twisted server endpoint string (``tcp:8080:interface=127.0.0.1``).

    Checked by Twisted's own ``serverFromString`` against a placeholder reactor,
    so what passes here is what the service will listen on; nothing listens now.
    """

    type_name: str = "endpoint"

    def parse(self, raw: str) -> str:
        """The string as written, once Twisted accepts it."""
        allowed = "a Twisted server endpoint such as tcp:PORT[:interface=IP], unix:PATH or ssl:PORT:privateKey=KEY:certKey=CERT"
        try:
            endpoint = serverFromString(_NoReactor(), raw)
        except Exception as exc:
            raise value_error("an endpoint Twisted accepts", raw, f"{allowed} (Twisted: {exc})") from None
        # Twisted accepts any integer here and only fails when it listens.
        port = getattr(endpoint, "_port", 0)
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise value_error("a port 0..65535", raw, allowed)
        return raw

    def show(self, value: str) -> str:
        """The string."""
        return value


@dataclass(frozen=True)
class Address:
    """An origin server URL ``http[s]://HOST[:PORT][/]`` -> ``(scheme, host, port)``.

    The port defaults to 80 for ``http`` and 443 for ``https`` (TLS to the
    server, see :mod:`gateway.tlsupstream`).  IPv6 hosts are written in
    brackets in the URL and returned without them.
    """

    type_name: str = "url"

    def parse(self, raw: str) -> tuple[str, str, int]:
        """``(scheme, host, port)``."""
        form = "http://HOST:PORT or https://HOST:PORT"
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise value_error(form, raw, "port 1..65535") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise value_error(form, raw, "scheme http or https")
        host = parts.hostname or ""
        if parts.username is not None or not is_hostname(host):
            raise value_error(form, raw, "HOST is an IP address or host name")
        if port == 0:
            raise value_error(form, raw, "port 1..65535")
        if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in raw:
            raise value_error(form, raw, "no path, query or fragment")
        default_port = 443 if parts.scheme == "https" else 80
        return parts.scheme, host, default_port if port is None else port

    def show(self, value: tuple[str, str, int]) -> str:
        """Back to a URL."""
        scheme, host, port = value
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
