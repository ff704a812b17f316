"""Pure routing: (host, path) of a request -> the first matching route.

Invariants:

- A :class:`RouteTable` belongs to one listener and one configuration; the
  service builds a new one on reload. It keeps the routes that apply to its
  listener (a route with no ``listeners`` applies to every listener), in
  configuration order, and the first route that matches wins.
- Hosts compare case-insensitively, without a ``:port`` suffix and without a
  trailing root dot; a route with an empty host matches any host.
- Paths compare as raw bytes of the request target: no percent-decoding, no
  dot-segment removal, case-sensitive. Routes choose a backend; they are not an
  access-control mechanism (``/api/../admin`` matches ``/api``).
- Nothing here reads a clock, a socket or the reactor.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from gateway.config import RouteConfig

__all__ = ["RouteTable", "normalize_host", "split_target"]

# Characters left alone when a configured path prefix is made into target bytes:
# everything RFC 3986 allows in a path or query, so only non-ASCII, spaces and
# controls are percent-encoded (as a client would send them).
_PATH_SAFE = "!$&'()*+,;=:@/?-._~%"

_Entry = tuple[bytes, int, bool, RouteConfig]


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
    ``/api?x`` but not ``/apix``. A prefix ending in ``/`` (``/api/``, ``/``) is
    a plain byte prefix. An empty prefix matches every target, even ``*``.

    Precomputed: for every host named by a route, the routes for that host and
    the any-host routes merged in configuration order; and the any-host routes
    alone for every other host. A match is one dict lookup and a scan of only
    the routes that could apply.
    """

    __slots__ = ("listener", "routes", "_by_host", "_any")

    def __init__(self, routes: Sequence[RouteConfig], listener: str) -> None:
        self.listener = listener
        self.routes: tuple[RouteConfig, ...] = tuple(
            route for route in routes if not route.listeners or listener in route.listeners
        )
        entries = [(_route_host(route.host), _entry(route)) for route in self.routes]
        self._any: tuple[_Entry, ...] = tuple(entry for host, entry in entries if not host)
        self._by_host: dict[bytes, tuple[_Entry, ...]] = {
            name: tuple(entry for host, entry in entries if host == name or not host)
            for name, _ in entries
            if name
        }

    def match(self, host: bytes, path: bytes) -> RouteConfig | None:
        """The first route for ``host`` (raw Host value) whose prefix fits ``path``."""
        by_host = self._by_host
        candidates = by_host.get(normalize_host(host), self._any) if by_host else self._any
        for prefix, size, segment, route in candidates:
            # path[size:size + 1] is b"" at the end of the path, and b"" in b"/?"
            # is True: an exact match, like a following "/" or "?", ends a segment.
            # One-byte and empty slices are cached by CPython, so this allocates nothing.
            if path.startswith(prefix) and (not segment or path[size : size + 1] in b"/?"):
                return route
        return None

    def __repr__(self) -> str:
        return f"RouteTable({self.listener!r}, {[route.name for route in self.routes]!r})"


def _route_host(host: str) -> bytes:
    """A configured route host as the bytes :func:`normalize_host` produces."""
    host = host.strip()
    if not host:
        return b""
    if host.count(":") > 1 and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address in the config
    try:
        raw = host.encode("ascii")
    except UnicodeEncodeError:
        # RFC 9110 §4.2.3 hosts on the wire are ASCII; clients send IDNs as A-labels.
        raw = host.encode("idna")
    return normalize_host(raw)


def _entry(route: RouteConfig) -> _Entry:
    prefix = quote(route.path_prefix, safe=_PATH_SAFE).encode("ascii")
    segment = bool(prefix) and not prefix.endswith(b"/")
    return prefix, len(prefix), segment, route
