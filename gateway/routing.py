"""Pure routing: a request's host, path, method and fields -> the route that serves it.

Precedence (also in docs/configuration.md, "How a route is chosen"):

1. The request's host picks an ordered group of candidate routes: the routes
   whose ``host`` equals it, then the wildcard routes (``*.example.com``)
   that cover it, longest suffix first, then the routes without a host.
2. Within that order, routes are tried in the order they are written.  A route
   matches when its path condition (prefix, exact or regex), its ``methods``
   and its ``header`` condition all hold.
3. The first match wins.  With none, the listener's ``default_backend``
   answers (as a synthetic route called ``default``); without one, nothing
   does (the front end answers 404).

Invariants:

- A :class:`RouteTable` belongs to one listener and one configuration; the
  service builds a new one on reload.  It keeps the routes that apply to its
  listener (a route with no ``listeners`` applies to every listener).
- Hosts compare case-insensitively, without a ``:port`` suffix and without a
  trailing root dot.  A wildcard ``*.example.com`` matches names with at least
  one more label (``a.example.com``, ``a.b.example.com``), never
  ``example.com`` itself, and never an IP address.
- Path conditions see the path only: everything from the first ``?`` on is
  ignored, for prefixes, exact paths and regexes alike.  Paths compare as raw
  bytes of the request target: no percent-decoding, no dot-segment removal,
  case-sensitive.  Routes choose a backend; they are not an access-control
  mechanism (``/api/../admin`` matches ``/api``).
- Methods compare case-sensitively (RFC 9110 §9.1); header names
  case-insensitively (RFC 9110 §5.1), values exactly.
- :meth:`RouteTable.match` allocates nothing per route tried; the candidate
  groups, byte patterns and regexes are computed once, when the table is built.
- Nothing here reads a clock, a socket or the reactor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple
from urllib.parse import quote

from gateway.config import RouteConfig

__all__ = ["RouteTable", "normalize_host", "shadowed", "split_target"]

# Characters left alone when a configured path is made into target bytes:
# everything RFC 3986 allows in a path or query, so only non-ASCII, spaces and
# controls are percent-encoded (as a client would send them).
_PATH_SAFE = "!$&'()*+,;=:@/?-._~%"

# How a rule's ``text`` is compared with the path (when it has no regex).
_PLAIN_PREFIX, _SEGMENT_PREFIX, _EXACT = 0, 1, 2


class _Rule(NamedTuple):
    """A route made ready for :meth:`RouteTable.match`; unpacked there like a tuple."""

    text: bytes  # the prefix or exact path as target bytes; b"" for a regex
    size: int  # len(text)
    mode: int  # _PLAIN_PREFIX, _SEGMENT_PREFIX or _EXACT
    regex: re.Pattern[bytes] | None  # overrides text and mode when set
    methods: frozenset[bytes] | None  # None: any method
    field: bytes | None  # a lower-case header name; None: no header condition
    value: bytes | None  # the exact value that field must have; None: present
    route: RouteConfig


def normalize_host(host: bytes) -> bytes:
    """``host`` lower-cased, without ``:port`` and without a trailing root dot.

    RFC 9110 §4.2.3: the host is case-insensitive; the port is matched by the
    listener, not here. An IPv6 literal keeps its brackets (``[::1]:8080`` ->
    ``[::1]``); the address inside is not re-canonicalised, so ``[::01]`` and
    ``[::1]`` differ.
    """
    if host[:1] == b"[":
        end = host.find(b"]")
        if end > 0:
            return host[: end + 1].lower()
        return host.lower()
    colon = host.find(b":")
    if colon >= 0:
        host = host[:colon]
    if host[-1:] == b".":
        host = host[:-1]
    return host.lower()


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (authority host, path) for routing.

    RFC 9112 §3.2.2 absolute-form (``http://Host:8080/p?q``) gives
    ``(b"Host:8080", b"/p?q")``: the authority without userinfo, and the path
    with its query; an empty path becomes ``/`` (``http://h?q`` -> ``/?q``).
    Origin-form (``/p?q``), authority-form (``h:443``, for CONNECT) and
    asterisk-form (``*``) come back unchanged with an empty host; the caller
    decides what those mean.
    """
    if target[:1] == b"/":
        return b"", target
    sep = target.find(b"://")
    if sep <= 0 or b"/" in target[:sep]:
        return b"", target
    rest = target[sep + 3 :]
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end].rpartition(b"@")[2]
    path = rest[end:]
    if path[:1] != b"/":
        path = b"/" + path
    return authority, path


class RouteTable:
    """The routes of one listener, arranged so :meth:`match` is cheap.

    Path prefixes are segment-aware: ``/api`` matches ``/api``, ``/api/x`` and
    ``/api?x`` but not ``/apix``.  A prefix ending in ``/`` (``/api/``, ``/``)
    is a plain byte prefix.  An exact path matches that path, with any query.
    A regex is tried with ``re.match`` (anchored at the start only; end it with
    ``$`` or ``\\Z`` to anchor the end) against the path without its query.

    Precomputed, in the order of the module docstring: the candidates for each
    host named by a route, for each wildcard suffix, and for any other host.
    A match is one dict lookup (plus one per dot of the host when there are
    wildcard routes) and a scan of only the routes that could apply.
    """

    __slots__ = ("listener", "routes", "default_route", "_exact", "_wild", "_any", "_hosts")

    def __init__(
        self, routes: Sequence[RouteConfig], listener: str, default_backend: str = ""
    ) -> None:
        self.listener = listener
        self.routes: tuple[RouteConfig, ...] = tuple(
            route for route in routes if not route.listeners or listener in route.listeners
        )
        #: What :meth:`match` returns when no route matches; None for "404".
        self.default_route: RouteConfig | None = (
            RouteConfig(name="default", backend=default_backend) if default_backend else None
        )
        exact: dict[bytes, list[_Rule]] = {}
        wild: dict[bytes, list[_Rule]] = {}  # b".example.com" for *.example.com
        anywhere: list[_Rule] = []
        for route in self.routes:
            host = _route_host(route.host)
            if not host:
                anywhere.append(_rule(route))
            elif host[:2] == b"*.":
                wild.setdefault(host[1:], []).append(_rule(route))
            else:
                exact.setdefault(host, []).append(_rule(route))

        def covering(name: bytes) -> list[_Rule]:
            """The wildcard routes that cover ``name``, longest suffix first."""
            return [entry for suffix in _suffixes(name) for entry in wild.get(suffix, ())]

        self._any: tuple[_Rule, ...] = tuple(anywhere)
        self._exact: dict[bytes, tuple[_Rule, ...]] = {
            name: (*entries, *covering(name), *anywhere) for name, entries in exact.items()
        }
        self._wild: dict[bytes, tuple[_Rule, ...]] = {
            suffix: (*entries, *covering(suffix[1:]), *anywhere) for suffix, entries in wild.items()
        }
        self._hosts = bool(exact or wild)

    def match(
        self, host: bytes, path: bytes, method: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> RouteConfig | None:
        """The route for a request, else the default route, else None.

        ``host`` is the raw Host value (or the absolute-form authority);
        ``path`` the request target's path, with or without its query;
        ``headers`` the request's field lines, only read for routes that have
        a header condition.
        """
        candidates = self._any
        if self._hosts:
            name = normalize_host(host)
            found = self._exact.get(name)
            if found is None and self._wild and name[:1] != b".":
                dot = name.find(b".", 1)
                while dot > 0:
                    found = self._wild.get(name[dot:])
                    if found is not None:
                        break
                    dot = name.find(b".", dot + 1)
            if found is not None:
                candidates = found
        query = path.find(b"?")
        if query >= 0:
            path = path[:query]
        for text, size, mode, regex, methods, field, value, route in candidates:
            if methods is not None and method not in methods:
                continue
            if regex is not None:
                if regex.match(path) is None:
                    continue
            elif mode == _EXACT:
                if path != text:
                    continue
            # path[size:size + 1] is b"" at the end of the path, and b"" in b"/" is
            # True: an exact match, like a following "/", ends a segment.  One-byte
            # and empty slices are cached by CPython, so this allocates nothing.
            elif not path.startswith(text) or (
                mode == _SEGMENT_PREFIX and path[size : size + 1] not in b"/"
            ):
                continue
            if field is not None and not _has_field(headers, field, value):
                continue
            return route
        return self.default_route

    def __repr__(self) -> str:
        names = [route.name for route in self.routes]
        default = self.default_route.backend if self.default_route else ""
        return f"RouteTable({self.listener!r}, {names!r}, default_backend={default!r})"


def _has_field(headers: Sequence[tuple[bytes, bytes]], name: bytes, value: bytes | None) -> bool:
    """Whether a field line is called ``name`` (lower case) and, if given, has ``value``."""
    size = len(name)
    for field, content in headers:
        # The length test first spares a lower() for nearly every field.
        if len(field) == size and field.lower() == name and (value is None or content == value):
            return True
    return False


def _suffixes(name: bytes) -> Iterator[bytes]:
    """The wildcard suffixes that could cover ``name``, longest first.

    ``a.b.example.com`` -> ``.b.example.com``, ``.example.com``, ``.com``: each
    leaves at least one label in front, as ``*.`` demands.
    """
    dot = name.find(b".", 1)
    while dot > 0:
        yield name[dot:]
        dot = name.find(b".", dot + 1)


def _route_host(host: str) -> bytes:
    """A configured route host as the bytes :func:`normalize_host` produces.

    A wildcard keeps its ``*.`` (``*.Example.com.`` -> ``*.example.com``).
    """
    host = host.strip()
    if not host:
        return b""
    if host.count(":") > 1 and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address in the config
    try:
        raw = host.encode("ascii")
    except UnicodeEncodeError:
        # RFC 9110 §4.2.3 hosts on the wire are ASCII; clients send IDNs as A-labels.
        wildcard = host.startswith("*.")
        raw = (b"*." if wildcard else b"") + host.removeprefix("*.").encode("idna")
    return normalize_host(raw)


def _path_bytes(path: str) -> bytes:
    """A configured path as a client sends it: non-ASCII percent-encoded as UTF-8."""
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def _rule(route: RouteConfig) -> _Rule:
    """``route`` made ready for :meth:`RouteTable.match`."""
    regex = re.compile(route.path_regex.encode("ascii")) if route.path_regex else None
    if regex is not None:
        text, mode = b"", _PLAIN_PREFIX
    elif route.path_exact:
        text, mode = _path_bytes(route.path_exact), _EXACT
    else:
        text = _path_bytes(route.path_prefix)
        mode = _SEGMENT_PREFIX if text and not text.endswith(b"/") else _PLAIN_PREFIX
    methods = frozenset(m.encode("ascii") for m in route.methods) or None
    field, value = _header(route)
    return _Rule(text, len(text), mode, regex, methods, field, value, route)


def _header(route: RouteConfig) -> tuple[bytes | None, bytes | None]:
    """The route's header condition as (lower-case name, value or None)."""
    if not route.header:
        return None, None
    name, colon, value = route.header.partition(":")
    field = name.strip().lower().encode("ascii")
    return field, value.strip().encode("latin-1") if colon else None


def shadowed(
    routes: Sequence[RouteConfig], listeners: Sequence[str]
) -> list[tuple[RouteConfig, RouteConfig]]:
    """``(route, earlier)`` for each route that never matches because of ``earlier``.

    ``earlier`` is the first route before ``route`` that is tried before it for
    every request ``route`` could match and matches all of them: the same host
    group (the same ``host``), on at least the same ``listeners`` (of all
    ``listeners`` when empty), a path condition that covers ``route``'s, no
    methods or a superset, and no header condition or the identical one.
    Regexes are opaque: a regex route shadows nothing, and only a prefix ``/``
    without methods or header (a catch-all) shadows one.
    """
    everywhere = frozenset(listeners)
    prepared = [
        (_route_host(route.host), frozenset(route.listeners) or everywhere, _rule(route))
        for route in routes
    ]
    found: list[tuple[RouteConfig, RouteConfig]] = []
    for index, (host, scope, rule) in enumerate(prepared):
        for earlier_host, earlier_scope, earlier in prepared[:index]:
            if earlier_host == host and earlier_scope >= scope and _covers(earlier, rule):
                found.append((rule.route, earlier.route))
                break
    return found


def _covers(earlier: _Rule, later: _Rule) -> bool:
    """Whether every request ``later`` matches is matched by ``earlier`` (same host)."""
    if earlier.methods is not None and (
        later.methods is None or not later.methods <= earlier.methods
    ):
        return False
    if earlier.field is not None and (earlier.field, earlier.value) != (later.field, later.value):
        return False
    if earlier.regex is not None or later.regex is not None:
        unconditioned = earlier.methods is None and earlier.field is None
        catch_all = earlier.mode == _PLAIN_PREFIX and earlier.text == b"/"
        return earlier.regex is None and catch_all and unconditioned
    if earlier.mode == _EXACT:
        return later.mode == _EXACT and later.text == earlier.text
    # A prefix covers the prefixes and exact paths it matches as paths itself:
    # every path that starts with one of those starts with it, at a boundary.
    size = earlier.size
    return later.text.startswith(earlier.text) and (
        earlier.mode == _PLAIN_PREFIX or later.text[size : size + 1] in b"/"
    )
