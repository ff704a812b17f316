"""HTTP/1.1 message heads (RFC 9112), parsed without I/O on the proxy's hot path.

Invariants:

- Input is a complete head: the bytes up to and including the ``CRLF CRLF`` that
  :func:`head_end` found. Bodies are framed by the caller from the
  ``content_length`` / ``chunked`` values computed here (bodies never pass here).
- Every rejection raises :class:`~gateway.errors.ParseError` with the status the
  client should get (400, 414, 431, 505). The upstream side maps any ParseError
  to 502; response-side errors carry the hint 502 already.
- Validation is done by whole-head C-level scans (``re`` and ``bytes`` methods);
  there is no per-byte Python loop. Only the slow path that explains *why* a
  head was rejected walks lines one by one.
- Line endings are strictly CRLF: a bare CR or bare LF anywhere is an error, as
  is obs-fold. Lenient parsing of either is what request smuggling feeds on
  (RFC 9112 §11.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence

from gateway.compat import SLOTS
from gateway.errors import ParseError

__all__ = [
    "CHUNKED",
    "FIELD_LINE_SYNTAX",
    "HeadLimits",
    "Headers",
    "Request",
    "Response",
    "UNTIL_CLOSE",
    "check_partial_head",
    "connection_tokens",
    "field_line_error",
    "head_end",
    "parse_request",
    "parse_response",
]

Headers = list[tuple[bytes, bytes]]

# ``content_length`` values that are not lengths.
CHUNKED = -1
UNTIL_CLOSE = -2  # responses only: the body ends when the server closes


@dataclass(frozen=True, **SLOTS)
class HeadLimits:
    """Size limits for one head; each is tested at the bound and one over.

    ``max_line`` bounds the request line or status line (without CRLF),
    ``max_size`` the whole head including every CRLF, ``max_count`` the number
    of field lines.
    """

    max_line: int = 8192
    max_size: int = 32768
    max_count: int = 100


# --- grammar ----------------------------------------------------------------
# RFC 9110 §5.6.2: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" /
#   "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
# RFC 9110 §5.5: field-value = *field-content;
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ];
#   field-vchar = VCHAR / obs-text
# The value group runs greedily over the line and then backs off only over
# trailing whitespace (the look-behind), so values come out OWS-stripped in
# linear time even on hostile runs of whitespace (a lazy ``.*?`` followed by
# ``[ \t]*`` would be quadratic).
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*(?<![ \t])"

# One field line, anchored on the LF that ends the previous line and ending on
# the CR of its own CRLF. RFC 9112 §5: field-line = field-name ":" OWS
# field-value OWS. The OWS is outside the group, so values come out stripped.
_FIELD_LINES = re.compile(
    rb"\n([" + _TCHAR + rb"]+):[ \t]*(" + _VALUE + rb")[ \t]*\r(?=\n)"
)
# The same grammar for one line on its own (trailer fields, error diagnosis).
FIELD_LINE_SYNTAX = re.compile(rb"[" + _TCHAR + rb"]+:[ \t]*" + _VALUE + rb"[ \t]*")

# The fields that decide framing and routing. Most messages spell them one of
# two ways, so a dict lookup finds them; other spellings are lower-cased, but
# only when the length matches one of the five (a cheap filter).
_HOST, _CONNECTION, _CL, _TE, _EXPECT = range(5)
_FRAMING_NAMES = {
    b"Host": _HOST,
    b"Connection": _CONNECTION,
    b"Content-Length": _CL,
    b"Transfer-Encoding": _TE,
    b"Expect": _EXPECT,
}
_FRAMING_NAMES.update({name.lower(): kind for name, kind in _FRAMING_NAMES.items()})
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING_NAMES)

_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
# The target may hold no SP, CTL or DEL; obs-text is let through as most
# servers do (browsers send raw UTF-8 in paths now and then).
_REQUEST_LINE = re.compile(
    rb"([" + _TCHAR + rb"]+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])"
)
# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT; HTTP-name is
# case-sensitive. A well-formed version we don't speak is 505, anything else 400.
_ANY_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
# "A client SHOULD ignore the reason-phrase content" -- and real servers drop
# the SP before an empty reason, so that is accepted as well.
_STATUS_LINE = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"
)

# RFC 9112 §3.2.2: absolute-form = absolute-URI; only http(s) is proxied.
# RFC 9110 §4.2.1: "A recipient that processes such a URI reference [with an
# empty host] MUST reject it as invalid." -> the authority must be non-empty.
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]+)(?:[/?#].*)?", re.DOTALL)
# RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host = IP-literal / IPv4address
# / reg-name (RFC 3986 §3.2.2). An empty Host is legal (no authority).
_HOST_VALUE = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=-]+\]|[0-9A-Za-z._~%!$&'()*+,;=-]*)(?::[0-9]*)?"
)
# RFC 9110 §8.6: Content-Length = 1*DIGIT. Capped at 18 digits so the value
# always fits a 64-bit integer downstream.
_DIGITS = re.compile(rb"[0-9]{1,18}")

_EMPTY: frozenset[bytes] = frozenset()
# Connection values that nearly every message carries, so parsing them is a
# dict lookup. Anything else goes the general way.
_COMMON_CONNECTION = {
    v: frozenset([v.lower()])
    for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade")
}


def connection_tokens(values: Sequence[bytes]) -> frozenset[bytes]:
    """Lower-cased connection options from the Connection field values.

    RFC 9110 §7.6.1: Connection = #connection-option; options are
    case-insensitive. Empty list elements are ignored (RFC 9110 §5.6.1).
    """
    if len(values) == 1:
        common = _COMMON_CONNECTION.get(values[0])
        if common is not None:
            return common
    tokens: set[bytes] = set()
    for value in values:
        common = _COMMON_CONNECTION.get(value)
        if common is not None:
            tokens.update(common)
            continue
        for part in value.split(b","):
            part = part.strip(b" \t")
            if part:
                tokens.add(part.lower())
    return frozenset(tokens)


class Request:
    """A parsed request head. Built by :func:`parse_request`; treat as read-only.

    ``content_length`` is the body length: 0 when there is no body, -1 when the
    body is chunked. ``host`` is the Host field value, or the authority of an
    absolute-form target (RFC 9112 §3.2.2), or ``b""`` for HTTP/1.0 without Host.
    """

    __slots__ = ("method", "target", "version", "headers", "content_length", "chunked",
                 "keep_alive", "expect_continue", "host", "connection")  # fmt: skip

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        content_length: int,
        chunked: bool,
        keep_alive: bool,
        expect_continue: bool,
        host: bytes,
        connection: frozenset[bytes],
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.host = host
        self.connection = connection

    def __repr__(self) -> str:
        return (
            f"<Request {self.method!r} {self.target!r} {self.version!r} "
            f"host={self.host!r} length={self.content_length} "
            f"keep_alive={self.keep_alive}>"
        )


class Response:
    """A parsed response head. Built by :func:`parse_response`; treat as read-only.

    ``content_length``: -1 chunked, -2 read until the server closes, otherwise
    the exact length (0 also for the responses that never have a body).
    """

    __slots__ = ("version", "status", "reason", "headers", "content_length", "chunked",
                 "keep_alive", "connection")  # fmt: skip

    def __init__(
        self,
        version: bytes,
        status: int,
        reason: bytes,
        headers: Headers,
        content_length: int,
        chunked: bool,
        keep_alive: bool,
        connection: frozenset[bytes],
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.connection = connection

    def __repr__(self) -> str:
        return (
            f"<Response {self.version!r} {self.status} {self.reason!r} "
            f"length={self.content_length} keep_alive={self.keep_alive}>"
        )


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the ``CRLF CRLF`` that ends a head, or -1.

    To avoid rescanning, pass ``start = max(0, previously_scanned_length - 3)``:
    the terminator may straddle two reads.
    """
    i = buf.find(b"\r\n\r\n", start)
    return -1 if i < 0 else i + 4


def check_partial_head(buf: bytes | bytearray, limits: HeadLimits) -> None:
    """Fail early on a head that can no longer be valid once it completes.

    Called while :func:`head_end` finds no end yet. Raises 431 when the buffer
    already exceeds ``max_size``, 414 when the first line is unfinished and
    already longer than ``max_line``, and 400 when the first line ends in a bare
    LF (an LF-only client would otherwise wait for a CRLF CRLF that never comes).
    """
    # Used for responses too (the upstream side maps any hint to 502), hence
    # the neutral wording.
    if len(buf) > limits.max_size:
        raise ParseError("head too large", status=431)
    max_line = limits.max_line
    # The first LF within reach of the longest legal line (line + CRLF).
    lf = buf.find(b"\n", 0, max_line + 2)
    if lf >= 0:
        if lf == 0 or buf[lf - 1] != 0x0D:
            raise ParseError("bare LF ends the first line")
        return
    if len(buf) > max_line + 1 or (len(buf) == max_line + 1 and buf[max_line] != 0x0D):
        raise ParseError("first line too long", status=414)


def parse_request(head: bytes, limits: HeadLimits) -> Request:
    """Parse a request head (through its final CRLF CRLF) into a :class:`Request`."""
    if len(head) > limits.max_size:
        raise ParseError("request head too large", status=431)
    if head[:2] == b"\r\n":
        head = _skip_empty_lines(head)
    eol = head.find(b"\r\n")
    if eol > limits.max_line:
        raise ParseError("request line too long", status=414)
    if eol < 0 or head[-4:] != b"\r\n\r\n":
        raise ParseError("request head does not end in CRLF CRLF")

    m = _REQUEST_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise _request_line_error(head[:eol])
    method, target, minor = m.groups()
    version = b"HTTP/1.1" if minor == b"1" else b"HTTP/1.0"
    absolute_host = None
    if target[0] != 0x2F:  # not origin-form "/..."
        absolute_host = _check_target(method, target)

    headers = _fields(head, eol, limits, 400)

    host: bytes | None = None
    content_length = 0
    chunked = False
    connection = _EMPTY
    expect_continue = False
    if headers:
        host_values, conn_values, cl_values, te_values, expect_values = _framing_fields(headers)
        if host_values is not None:
            # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request)
            # status code to any HTTP/1.1 request message that lacks a Host
            # header field and to any request message that contains more than
            # one Host header field line or a Host header field with an invalid
            # field value."
            if len(host_values) > 1:
                raise ParseError("more than one Host field")
            host = host_values[0]
            if _HOST_VALUE.fullmatch(host) is None:
                raise ParseError("invalid Host field value")
        if conn_values is not None:
            connection = connection_tokens(conn_values)
        if te_values is not None:
            _check_request_te(te_values, cl_values, minor)
            content_length = CHUNKED
            chunked = True
        elif cl_values is not None:
            content_length = _content_length(cl_values, 400)
        # RFC 9110 §10.1.1: "A server that receives a 100-continue expectation
        # in an HTTP/1.0 request MUST ignore that expectation."
        if expect_values is not None and minor == b"1":
            expect_continue = b"100-continue" in _list_lower(b",".join(expect_values))

    if host is None and minor == b"1":
        raise ParseError("HTTP/1.1 request without Host")  # RFC 9112 §3.2, above
    if absolute_host is not None:
        # RFC 9112 §3.2.2: "When an origin server receives a request with an
        # absolute-form of request-target, the origin server MUST ignore the
        # received Host header field (if any) and instead use the host
        # information of the request-target."
        host = absolute_host

    # RFC 9112 §9.3: "If the received protocol is HTTP/1.1 (or later), the
    # connection will persist after the current response" unless "close" is
    # present; "If the received protocol is HTTP/1.0, the "keep-alive"
    # connection option is present [...] the connection will persist".
    if minor == b"1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection and b"close" not in connection

    return Request(
        method, target, version, headers, content_length, chunked, keep_alive,
        expect_continue, host if host is not None else b"", connection,
    )  # fmt: skip


def parse_response(head: bytes, limits: HeadLimits, request_method: bytes) -> Response:
    """Parse a response head and decide its body framing (RFC 9112 §6.3).

    ``request_method`` is the method of the request this answers (HEAD responses
    have no body). Every error carries the hint 502. CONNECT is never forwarded
    by the gateway, so rule 2 of §6.3 (2xx to CONNECT is a tunnel) has no case.
    """
    if len(head) > limits.max_size:
        raise ParseError("response head too large", status=502)
    eol = head.find(b"\r\n")
    if eol > limits.max_line:
        raise ParseError("status line too long", status=502)
    if eol < 0 or head[-4:] != b"\r\n\r\n":
        raise ParseError("response head does not end in CRLF CRLF", status=502)
    m = _STATUS_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise ParseError(f"malformed status line {head[:eol][:80]!r}", status=502)
    minor, code, reason = m.groups()
    status = int(code)
    # RFC 9110 §15: "Values outside the range 100..599 are invalid."
    if status < 100 or status > 599:
        raise ParseError(f"status code {status} out of range", status=502)
    version = b"HTTP/1.1" if minor == b"1" else b"HTTP/1.0"

    headers = _fields(head, eol, limits, 502)

    if headers:
        _, conn_values, cl_values, te_values, _ = _framing_fields(headers)
    else:
        conn_values = cl_values = te_values = None
    connection = connection_tokens(conn_values) if conn_values is not None else _EMPTY
    if minor == b"1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection and b"close" not in connection

    chunked = False
    # RFC 9112 §6.3 rule 1: "Any response to a HEAD request and any response
    # with a 1xx (Informational), 204 (No Content), or 304 (Not Modified) status
    # code is always terminated by the first empty line after the header fields,
    # regardless of the header fields present in the message, and thus cannot
    # contain a message body or trailer section."
    if status < 200 or status == 204 or status == 304 or request_method == b"HEAD":
        length = 0
        # RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in
        # any response with a status code of 1xx (Informational) or 204 (No
        # Content)." A server that frames a body there anyway may send one; we
        # read none, so the connection is not trusted with the next response.
        if (status < 200 or status == 204) and (
            te_values is not None or (cl_values is not None and any(v != b"0" for v in cl_values))
        ):
            keep_alive = False
    elif te_values is not None:
        codings = _list_lower(b",".join(te_values))
        # RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message
        # containing a Transfer-Encoding header field MUST treat the message as
        # if the framing is faulty, even if a Content-Length is present, and
        # close the connection after processing the message."
        # RFC 9112 §6.3 rule 3: "If a message is received with both a
        # Transfer-Encoding and a Content-Length header field, the
        # Transfer-Encoding overrides the Content-Length. Such a message might
        # indicate an attempt to perform request smuggling [...] and ought to be
        # handled as an error." -> the connection is not reused.
        if cl_values is not None or minor == b"0":
            keep_alive = False
        if codings and codings[-1] == b"chunked":
            # RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding
            # more than once to a message body". Decoding once would forward
            # chunk syntax as payload, so such a response is refused.
            if codings.count(b"chunked") > 1:
                raise ParseError("chunked applied more than once", status=502)
            length = CHUNKED
            chunked = True
        else:
            # RFC 9112 §6.3 rule 4: "If a Transfer-Encoding header field is
            # present in a response and the chunked transfer coding is not the
            # final encoding, the message body length is determined by reading
            # the connection until it is closed by the server."
            length = UNTIL_CLOSE
            keep_alive = False
    elif cl_values is not None:
        length = _content_length(cl_values, 502)
    else:
        # RFC 9112 §6.3 rule 8: "Otherwise, this is a response message without
        # a declared message body length, so the message body length is
        # determined by the number of octets received prior to the server
        # closing the connection."
        length = UNTIL_CLOSE
        keep_alive = False
    return Response(version, status, reason or b"", headers, length, chunked, keep_alive, connection)


# --- helpers ------------------------------------------------------------------


def _framing_fields(headers: Headers) -> list[list[bytes] | None]:
    """Values of Host, Connection, Content-Length, Transfer-Encoding and Expect.

    Indexed by ``_HOST`` ... ``_EXPECT``; None where the field is absent.
    Field names are case-insensitive (RFC 9110 §5.1).
    """
    found: list[list[bytes] | None] = [None, None, None, None, None]
    for name, value in headers:
        kind = _FRAMING_NAMES.get(name)
        if kind is None:
            if len(name) not in _FRAMING_LENGTHS:
                continue
            kind = _FRAMING_NAMES.get(name.lower())
            if kind is None:
                continue
        values = found[kind]
        if values is None:
            found[kind] = [value]
        else:
            values.append(value)
    return found


def _skip_empty_lines(head: bytes) -> bytes:
    """Drop CRLFs before the request line.

    RFC 9112 §2.2: "a server that is expecting to receive and parse a
    request-line SHOULD ignore at least one empty line (CRLF) received prior to
    the request-line." Only whole CRLF pairs are skipped: a bare CR or LF stays
    and fails the request-line check.
    """
    rest = head.lstrip(b"\r\n")
    skipped = len(head) - len(rest)
    if head[:skipped] != b"\r\n" * (skipped // 2) or skipped % 2:
        raise ParseError("bare CR or LF before the request line")
    return rest


def _fields(head: bytes, eol: int, limits: HeadLimits, status: int) -> Headers:
    """Validate and extract every field line after the start line ending at ``eol``.

    Each match of ``_FIELD_LINES`` spans LF, the line, CR with an LF next,
    and no match can hold a CR or LF inside. So if there are as many matches as
    LFs that start a line (all but the two of the final CRLF CRLF), every line
    is a valid field line and no bare CR or LF is hiding anywhere.
    """
    headers: Headers = _FIELD_LINES.findall(head, eol + 1)
    if len(headers) != head.count(b"\n", eol + 1) - 2:
        raise field_line_error(head[eol + 2 : -4].split(b"\r\n"), status)
    if len(headers) > limits.max_count:
        raise ParseError(
            f"more than {limits.max_count} header fields",
            status=431 if status == 400 else status,
        )
    return headers


def field_line_error(lines: list[bytes], status: int = 400) -> ParseError:
    """Explain why one of ``lines`` (CRLF-split field lines) is not a field line.

    The slow path, taken only for a head that already failed the fast scan.
    """
    for line in lines:
        if FIELD_LINE_SYNTAX.fullmatch(line):
            continue
        if b"\n" in line or b"\r" in line:
            # RFC 9112 §2.2: "A sender MUST NOT generate a bare CR [...]" and
            # field lines end in CRLF; a lone LF terminator is not accepted here.
            reason = "bare CR or LF in header section"
        elif not line:
            reason = "empty line inside header section"
        elif line[0] in b" \t":
            # RFC 9112 §5.2: "A server that receives an obs-fold in a request
            # message [...] MUST either reject the message by sending a 400 (Bad
            # Request) [...]"; a proxy receiving one in a response "MUST either
            # discard the message and replace it with a 502 (Bad Gateway)".
            reason = "obs-fold (line folding) is not allowed"
        else:
            name, colon, _ = line.partition(b":")
            if not colon:
                reason = "header line without colon"
            elif not name:
                reason = "empty header field name"
            elif name[-1] in b" \t":
                # RFC 9112 §5.1: "No whitespace is allowed between the field
                # name and colon. [...] A server MUST reject, with a response
                # status code of 400 (Bad Request), any received request message
                # that contains whitespace between a header field name and colon."
                reason = "whitespace between header field name and colon"
            elif _TOKEN.fullmatch(name) is None:
                reason = "invalid character in header field name"
            else:
                # RFC 9110 §5.5: "Field values containing CR, LF, or NUL
                # characters are invalid and dangerous [...] a recipient MUST
                # either reject the message or replace each of those characters
                # with SP"; other CTLs are not field-vchar either.
                reason = "invalid character in header field value"
        return ParseError(f"{reason}: {line[:80]!r}", status=status)
    return ParseError("malformed header section", status=status)


def _request_line_error(line: bytes) -> ParseError:
    """Explain why ``line`` is not ``method SP request-target SP HTTP/1.x``."""
    if b"\r" in line or b"\n" in line:
        return ParseError("bare CR or LF in request line")
    parts = line.split(b" ")
    # RFC 9112 §3: "No whitespace is allowed in the request-target." and the
    # three components are separated by exactly one SP each.
    if len(parts) != 3 or not all(parts):
        return ParseError(f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        return ParseError("invalid method")
    if re.fullmatch(rb"[\x21-\x7e\x80-\xff]+", target) is None:
        return ParseError("invalid character in request target")
    if _ANY_VERSION.fullmatch(version) is not None:
        # RFC 9110 §15.6.6: 505 "indicates that the server does not support,
        # or refuses to support, the major version of HTTP that was used".
        return ParseError(f"unsupported HTTP version {version!r}", status=505)
    return ParseError(f"malformed HTTP version {version[:20]!r}")


def _check_target(method: bytes, target: bytes) -> bytes | None:
    """Check a target that is not origin-form; return the authority if absolute-form.

    RFC 9112 §3.2: request-target = origin-form / absolute-form /
    authority-form / asterisk-form. CONNECT (authority-form) is rejected with
    400: a reverse proxy does not tunnel, and 400 needs no Allow field, which a
    405 would (RFC 9110 §15.5.6).
    """
    if method == b"CONNECT":
        raise ParseError("CONNECT is not supported")
    if target == b"*":
        # RFC 9112 §3.2.4: "The asterisk-form of request-target is only used
        # for a server-wide OPTIONS request".
        if method != b"OPTIONS":
            raise ParseError("asterisk-form target is only allowed with OPTIONS")
        return None
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ParseError(f"invalid request target {target[:80]!r}")
    authority = m.group(1)
    # RFC 9110 §4.2.4: a recipient "SHOULD parse for userinfo and treat its
    # presence as an error"; RFC 9110 §4.2.1 forbids an empty host.
    if b"@" in authority or _HOST_VALUE.fullmatch(authority) is None or authority[0] == 0x3A:
        raise ParseError("invalid authority in absolute-form target")
    return authority


def _check_request_te(te_values: list[bytes], cl_values: list[bytes] | None, minor: bytes) -> None:
    """Accept only ``Transfer-Encoding: chunked`` on an HTTP/1.1 request without CL."""
    # RFC 9112 §6.1: "A server MAY reject a request that contains both
    # Content-Length and Transfer-Encoding or process such a request in
    # accordance with the Transfer-Encoding alone." -> rejected: the
    # disagreement is the classic smuggling vector.
    if cl_values is not None:
        raise ParseError("both Transfer-Encoding and Content-Length")
    # RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message
    # containing a Transfer-Encoding header field MUST treat the message as if
    # the framing is faulty" -- for a request we cannot frame it at all.
    if minor == b"0":
        raise ParseError("Transfer-Encoding in an HTTP/1.0 request")
    # RFC 9112 §6.3 rule 4: "If a Transfer-Encoding header field is present in
    # a request and the chunked transfer coding is not the final encoding, the
    # message body length cannot be determined reliably; the server MUST
    # respond with the 400 (Bad Request) status code and then close the
    # connection." We decode no other coding, so exactly one "chunked" it is.
    if len(te_values) != 1 or te_values[0].lower() != b"chunked":
        raise ParseError(f"unsupported Transfer-Encoding {b', '.join(te_values)[:80]!r}")


def _content_length(values: list[bytes], status: int) -> int:
    """The one Content-Length that all ``values`` agree on.

    RFC 9112 §6.3 rule 5: an invalid Content-Length is an unrecoverable error
    "unless the field value can be successfully parsed as a comma-separated
    list [...], all values in the list are valid, and all values in the list
    are identical (in which case, the message is processed with that single
    value used as the Content-Length field value)." Repeated fields are
    treated as one list (RFC 9110 §5.3).
    """
    if len(values) == 1:
        value = values[0]
        if _DIGITS.fullmatch(value) is not None:
            return int(value)
    found = -1
    for value in values:
        for part in value.split(b","):
            part = part.strip(b" \t")
            if _DIGITS.fullmatch(part) is None:
                raise ParseError(f"invalid Content-Length {value[:40]!r}", status=status)
            n = int(part)
            if found >= 0 and n != found:
                raise ParseError("conflicting Content-Length values", status=status)
            found = n
    return found


def _list_lower(value: bytes) -> list[bytes]:
    """Non-empty, lower-cased elements of a comma-separated list (RFC 9110 §5.6.1)."""
    return [p for p in (part.strip(b" \t").lower() for part in value.split(b",")) if p]
