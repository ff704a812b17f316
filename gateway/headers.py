"""Pure header rules for the proxy hop: hop-by-hop removal, forwarding fields, Via.

Invariants:

- A header list is ``list[tuple[bytes, bytes]]`` of (name as received, value), in
  order, with repeated fields kept as separate entries. Names compare
  case-insensitively (``name.lower()``); values are already trimmed of OWS and
  free of CR, LF and NUL (the parser guarantees it, and values generated here
  are built only from such values), so :func:`serialize_head` does not check.
- Every function makes one pass over the list and returns a new list; the input
  is never mutated. Fields this module does not rule on pass through in order,
  with their name's case as received.
- Nothing here reads a clock, a socket or the reactor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "TrustedProxies",
    "forwarded_element",
    "is_hop_by_hop",
    "request_headers",
    "response_headers",
    "serialize_head",
]

Headers = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: "Intermediaries SHOULD remove ... Proxy-Connection, Keep-Alive,
# TE, Transfer-Encoding, and Upgrade" and every field the Connection header names,
# plus Connection itself. Trailer is dropped too: the front end re-frames bodies
# and does not promise to forward trailers, so announcing them would be false.
# Every ``proxy-*`` field (Proxy-Authorization, Proxy-Authenticate, Proxy-Status,
# ...) is meant for or comes from the proxy on this hop; see is_hop_by_hop.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

_PROXY_PREFIX = b"proxy-"

# Fields request_headers decides on itself; looked up once per field so the
# common case (an ordinary field) costs one set probe before the hop-by-hop test.
_REQUEST_RULED: frozenset[bytes] = frozenset(
    {
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"via",
        b"content-length",
    }
)

# What response_headers does with a field, by name: ordinary fields pass, the
# ruled ones are handled, hop-by-hop ones dropped. Names as received are
# remembered (a pure memo: the answer depends on the name alone), so the usual
# upstream's few dozen spellings cost one dict probe each; the memo stops
# growing at _KIND_MEMO_LIMIT names, since upstreams choose them.
_PASS, _LENGTH, _SERVER, _DATE, _VIA, _STS, _DROP = range(7)
_RESPONSE_RULED: dict[bytes, int] = {
    b"content-length": _LENGTH,
    b"server": _SERVER,
    b"date": _DATE,
    b"via": _VIA,
    b"strict-transport-security": _STS,
}
_KIND_MEMO_LIMIT = 1024
_response_kinds: dict[bytes, int] = {}


def _response_kind(name: bytes) -> int:
    """How response_headers treats a field named ``name`` (memoized, bounded)."""
    lower = name.lower()
    kind = _RESPONSE_RULED.get(lower)
    if kind is None:
        kind = _DROP if lower in HOP_BY_HOP or lower.startswith(_PROXY_PREFIX) else _PASS
    if len(_response_kinds) < _KIND_MEMO_LIMIT:
        _response_kinds[name] = kind
    return kind


def _one_length(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The single Content-Length field to forward for a received one.

    RFC 9110 §8.6: a recipient of a list of identical values (``3, 3``) may
    treat it as one value; a proxy MUST NOT forward a value that doesn't match
    the ABNF. The parser has already checked that every received value is the
    same number, so the first field's first member is the whole truth, and any
    further Content-Length fields are dropped.
    """
    return name, value.partition(b",")[0].strip()

# RFC 9110 §5.6.2: tchar. bytes.translate(None, _TCHAR) deletes every tchar, so
# an empty result means the value is a token and may go unquoted (RFC 7239 §4).
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# RFC 7239 §6.3: obfnode = "_" 1*( ALPHA / DIGIT / "." / "_" / "-" )
_OBFCHAR = b"._-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOT_OBFCHAR = bytes(c for c in range(256) if c not in _OBFCHAR)
_OBF_FIX = bytes.maketrans(_NOT_OBFCHAR, b"_" * len(_NOT_OBFCHAR))


def is_hop_by_hop(name: bytes) -> bool:
    """Whether the lower-cased field ``name`` is hop-by-hop on every message.

    RFC 9110 §7.6.1: the fixed list in :data:`HOP_BY_HOP`, plus any ``proxy-*``
    field (matched on the prefix). Fields named by a message's own Connection
    header are hop-by-hop too; the functions below take those as ``connection``.
    """
    return name in HOP_BY_HOP or name.startswith(_PROXY_PREFIX)


class TrustedProxies:
    """The set of peers whose forwarding fields (X-Forwarded-*, Forwarded) we believe.

    Built from IP addresses and CIDR networks (``GatewaySettings.trusted_proxies``);
    ``"10.0.0.1/8"`` is read as the network ``10.0.0.0/8``. An IPv4-mapped IPv6
    peer (``::ffff:10.1.2.3``, as a dual-stack listener reports it) is checked as
    the IPv4 address it carries. Anything that isn't an address is not trusted.

    Answers are cached per address string, since the same peers repeat; the cache
    holds at most ``cache_size`` entries and is cleared whole when full, which is
    cheaper than LRU bookkeeping and bounds memory against address scans.
    """

    __slots__ = ("networks", "_v4", "_v6", "_cache", "_cache_size")

    def __init__(self, entries: Iterable[str] = (), *, cache_size: int = 4096) -> None:
        """Parse ``entries``; raise ValueError naming the first malformed one."""
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"trusted proxy {entry!r} is not an IP address or CIDR network") from exc
        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(networks)
        self._v4 = tuple(n for n in networks if n.version == 4)
        self._v6 = tuple(n for n in networks if n.version == 6)
        self._cache: dict[object, bool] = {}
        self._cache_size = cache_size

    def __contains__(self, ip: object) -> bool:
        if not self.networks:
            return False
        cache = self._cache
        known = cache.get(ip)
        if known is not None:
            return known
        result = self._lookup(ip)
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[ip] = result
        return result

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"

    def _lookup(self, ip: object) -> bool:
        # Only str: ip_address(b"....") would read four bytes as a packed address.
        if not isinstance(ip, str):
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is None:
                return any(address in net for net in self._v6)
            address = mapped
        return any(address in net for net in self._v4)


def request_headers(
    headers: Headers,
    *,
    connection: frozenset[bytes],
    peer_ip: str,
    peer_port: int,
    proto: bytes,
    host: bytes,
    via: bytes,
    version: bytes,
    trusted: bool,
    host_override: bytes | None,
    listener: bytes,
    strip: bytes = b"",
    forwarded: bytes = b"",
) -> list[tuple[bytes, bytes]]:
    """The header list to send upstream for a client request with ``headers``.

    ``connection``: lower-cased tokens of the request's Connection header.
    ``peer_ip``/``peer_port``: the client socket's peer (port 0 when unknown).
    ``proto``: ``b"http"`` or ``b"https"`` as the client spoke to us.
    ``host``: the authority the client addressed (Host value, or the authority of
    an absolute-form target), used for X-Forwarded-Host and Forwarded ``host=``.
    ``via``: our pseudonym (non-empty); ``version``: the client's protocol
    version (``b"1.1"``/``b"1.0"``), both for Via. ``trusted``: whether the peer
    is in :class:`TrustedProxies`. ``host_override``: the backend's Host, if any.
    ``listener``: the listener's name, sent as Forwarded ``by=_name``; b"" omits it.
    ``strip``: a lower-cased field name the gateway itself vouches for (the
    verified client-certificate subject): incoming copies are dropped so no
    client can forge it; b"" drops nothing. ``forwarded``: our Forwarded element
    when the caller already has it (a connection keeps it across its requests);
    b"" computes it from the arguments above.

    Rules, in one pass:

    - Hop-by-hop fields (:func:`is_hop_by_hop`) and fields named in
      ``connection`` are dropped (RFC 9110 §7.6.1). That includes Connection and
      Transfer-Encoding; Content-Length is kept, once (:func:`_one_length`). The caller adds its own framing
      for the upstream hop (Transfer-Encoding: chunked when it streams a body of
      unknown length) and its own Connection if any.
    - Host: the first Host stays in place (name as received) with the value
      ``host_override`` if non-empty, else ``host``. For an origin-form target
      ``host`` is the received value, so the client's Host goes through as is;
      for an absolute-form target it is the target's authority, which RFC 9112
      §3.2.2 says must replace the received Host. (An empty ``host`` keeps the
      received value.) Later Host fields are dropped (RFC 9112 §3.2 makes more
      than one invalid; the parser rejects that before us). A missing Host is
      added first (``host_override`` or ``host``, possibly empty, as RFC 9112
      §3.2 allows). Host is never dropped for being named in Connection.
    - X-Forwarded-For: trusted peer: the received values (all fields, joined)
      followed by ``peer_ip``; untrusted: ``peer_ip`` alone.
    - X-Forwarded-Proto, X-Forwarded-Host: a trusted peer's are kept in place;
      otherwise ours (``proto``, ``host``; no X-Forwarded-Host when ``host`` is
      empty) are added.
    - Forwarded (RFC 7239): trusted peer: the received elements, then ours;
      untrusted: ours alone. Ours is ``for=NODE;proto=P;host=H;by=_LISTENER``
      (see :func:`forwarded_element`).
    - Via (RFC 9110 §7.6.3): received Via values (from anyone: Via records the
      chain of protocols, not an identity) followed by ``<version> <via>``.
    - A forwarding field or Via named in Connection counts as not received.

    Generated fields are appended after the passed-through ones, in the order
    X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded, Via.
    """
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    host_seen = False
    xfp_seen = False
    xfh_seen = False
    xff: list[bytes] | None = None
    fwd: list[bytes] | None = None
    via_in: list[bytes] | None = None

    length_seen = False

    for pair in headers:
        name = pair[0].lower()
        if name in _REQUEST_RULED:
            if name == b"content-length":
                if not length_seen:
                    length_seen = True
                    append(_one_length(*pair))
                continue
            if name == b"host":
                if not host_seen:
                    host_seen = True
                    authority = host_override or host
                    append((pair[0], authority) if authority else pair)
                continue
            if name in connection:
                continue
            value = pair[1]
            if name == b"via":
                if value:
                    if via_in is None:
                        via_in = [value]
                    else:
                        via_in.append(value)
            elif not trusted:
                # RFC 7239 §8.1: an untrusted peer's forwarding fields are lies
                # until proven otherwise; ours replace them below.
                continue
            elif name == b"x-forwarded-for":
                if value:
                    if xff is None:
                        xff = [value]
                    else:
                        xff.append(value)
            elif name == b"forwarded":
                if value:
                    if fwd is None:
                        fwd = [value]
                    else:
                        fwd.append(value)
            elif name == b"x-forwarded-proto":
                xfp_seen = True
                append(pair)
            else:  # x-forwarded-host
                xfh_seen = True
                append(pair)
            continue
        # RFC 9110 §7.6.1: hop-by-hop fields and Connection-listed fields stop here.
        if (
            name in HOP_BY_HOP
            or name in connection
            or name.startswith(_PROXY_PREFIX)
            or name == strip
        ):
            continue
        append(pair)

    if not host_seen:
        # RFC 9112 §3.2: a client MUST send Host in every HTTP/1.1 request, and
        # SHOULD send it first; we are the client on the upstream hop.
        out.insert(0, (b"Host", host_override or host))

    peer = peer_ip.encode("ascii") if peer_ip else b"unknown"
    append((b"X-Forwarded-For", _extended(xff, peer)))
    if not xfp_seen:
        append((b"X-Forwarded-Proto", proto))
    if not xfh_seen and host:
        append((b"X-Forwarded-Host", host))

    # RFC 7239 §4: Forwarded is a comma-separated list, one element per hop.
    element = forwarded or forwarded_element(peer_ip, peer_port, proto, host, listener)
    append((b"Forwarded", _extended(fwd, element)))

    # RFC 9110 §7.6.3: "a proxy MUST send an appropriate Via header field ... in
    # each message that it forwards"; received-protocol omits "HTTP/".
    append((b"Via", _extended(via_in, version + b" " + via)))
    return out


def _extended(received: list[bytes] | None, ours: bytes) -> bytes:
    """A hop-by-hop list field (Via, Forwarded, X-Forwarded-For) with our hop last.

    RFC 9110 §5.3: several field lines of one list field are one comma-joined
    value, so the received lines are joined and ours is appended.
    """
    if received is None:
        return ours
    received.append(ours)
    return b", ".join(received)


def forwarded_element(peer_ip: str, peer_port: int, proto: bytes, host: bytes, listener: bytes) -> bytes:
    """One RFC 7239 forwarded-element: ``for=NODE;proto=P[;host=H][;by=_L]``.

    RFC 7239 §6: a node is an address with an optional port; an IPv6 address is
    bracketed, and a node with ``:`` or ``[`` is not a token, so it is quoted
    (``for="[2001:db8::1]"``, ``for="192.0.2.1:4711"``). ``peer_port`` 0 leaves
    the port out; an empty ``peer_ip`` becomes ``unknown`` (§6.1). ``host`` is
    quoted when it is not a token (§4), and left out when empty. ``listener``
    becomes the obfuscated identifier ``by=_name`` (§6.3; characters outside the
    obfnode alphabet become ``_``), and is left out when empty.
    """
    if not peer_ip:
        node = b"unknown"
    else:
        node = peer_ip.encode("ascii")
        if b":" in node:
            node = b"[" + node + b"]"
        if peer_port:
            node = b'"%s:%d"' % (node, peer_port)
        elif node[0] == 0x5B:  # "["
            node = b'"' + node + b'"'
    parts = [b"for=", node, b";proto=", proto]
    if host:
        parts.append(b";host=")
        parts.append(host if not host.translate(None, _TCHAR) else _quote(host))
    if listener:
        parts.append(b";by=_")
        parts.append(listener.translate(_OBF_FIX))
    return b"".join(parts)


def _quote(value: bytes) -> bytes:
    """RFC 9110 §5.6.4 quoted-string: backslash-escape ``\\`` and ``"``."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def response_headers(
    headers: Headers,
    *,
    connection: frozenset[bytes],
    via: bytes,
    version: bytes,
    server: bytes,
    date: bytes,
    hsts: bytes | None = None,
) -> list[tuple[bytes, bytes]]:
    """The header list to send to the client for an upstream response with ``headers``.

    ``connection``: lower-cased tokens of the response's Connection header.
    ``via``/``version``: our pseudonym and the upstream response's protocol
    version (``b"1.1"``/``b"1.0"``). ``server``: our Server value; b"" sends none.

    - Hop-by-hop fields and fields named in ``connection`` are dropped (RFC 9110
      §7.6.1). Framing left in the list: Content-Length only, once
      (:func:`_one_length`).
      Removed: Connection, Keep-Alive, Transfer-Encoding, Trailer, TE, Upgrade,
      Proxy-Connection and every ``proxy-*`` field. The front end adds its own
      framing (Content-Length or Transfer-Encoding: chunked) and Connection, and
      must drop Content-Length itself if it re-frames the body.
    - Server: the backend's is replaced in place of the first Server field by
      ``server`` (added last if there was none), or removed when ``server`` is
      b"", so the backend's software is never shown.
    - Via (RFC 9110 §7.6.3): received values followed by ``<version> <via>``,
      appended last as one field.
    - Date (RFC 9110 §6.6.1): a recipient with a clock forwarding a response
      without Date MUST append one; ``date`` is that IMF-fixdate.
    - Strict-Transport-Security: with ``hsts`` (the listener's policy) every
      received one is replaced by ours, appended last; without, they pass.
    """
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    server_done = not server
    via_in: list[bytes] | None = None
    dated = False
    length_seen = False

    kinds = _response_kinds
    for pair in headers:
        name = pair[0]
        kind = kinds.get(name)
        if kind is None:
            kind = _response_kind(name)
        if kind == _PASS:
            # RFC 9110 §7.6.1: fields named in Connection are hop-by-hop too.
            if not connection or name.lower() not in connection:
                append(pair)
        elif kind == _LENGTH:
            if not length_seen:
                length_seen = True
                append(_one_length(*pair))
        elif kind == _SERVER:
            if not server_done:
                server_done = True
                append((b"Server", server))
        elif kind == _DATE:
            dated = True
            append(pair)
        elif kind == _STS:
            if hsts is None and (not connection or name.lower() not in connection):
                append(pair)
        elif kind == _VIA:
            if pair[1] and (not connection or name.lower() not in connection):
                if via_in is None:
                    via_in = [pair[1]]
                else:
                    via_in.append(pair[1])
        # _DROP: RFC 9110 §7.6.1 hop-by-hop fields stop here.

    if not server_done:
        append((b"Server", server))
    if not dated:
        append((b"Date", date))
    append((b"Via", _extended(via_in, version + b" " + via)))
    if hsts is not None:
        append((b"Strict-Transport-Security", hsts))
    return out


def serialize_head(first_line: bytes, headers: Headers) -> bytes:
    """``first_line CRLF (name ": " value CRLF)* CRLF`` as one bytes, with one join.

    RFC 9112 §2.1 message format. Names and values are written as given; they
    must be free of CR, LF and NUL (see the module invariants).
    """
    parts = [first_line, b"\r\n"]
    extend = parts.extend
    for name, value in headers:
        extend((name, b": ", value, b"\r\n"))
    parts.append(b"\r\n")
    return b"".join(parts)
