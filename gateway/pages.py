"""The gateway's own error responses: small, fixed, and free of request data.

Invariants:

- A page names only its status code and reason phrase. It never echoes the
  request (no reflected input to escape), never shows a traceback, and never
  names a backend, server or upstream error: those go to the log only.
- Bodies depend on the status alone and are rendered once per status.
- Nothing here reads a clock, a socket or the reactor, so there is no Date
  field; a caller with a clock passes one in ``extra_headers``
  (RFC 9110 §6.6.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.headers import serialize_head

__all__ = ["REASONS", "error_response", "reason"]

# RFC 9110 §15 reason phrases (413 and 422 under their RFC 9110 names), plus
# RFC 6585's 428, 429, 431 and 511. Reason phrases are advisory (RFC 9112 §4):
# clients must not act on them, so the wording is ours to pick.
REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    305: b"Use Proxy",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    511: b"Network Authentication Required",
}

_CONTENT_TYPE = (b"Content-Type", b"text/html; charset=utf-8")
# The page describes this response only; a shared cache must not serve it to
# someone else later (RFC 9111 §5.2.2.5).
_CACHE_CONTROL = (b"Cache-Control", b"no-store")
_CLOSE = (b"Connection", b"close")

# status -> (reason, body, Content-Length value); at most 200 entries (400-599).
_RENDERED: dict[int, tuple[bytes, bytes, bytes]] = {}


def reason(status: int) -> bytes:
    """The reason phrase for ``status``; a generic one for codes not in :data:`REASONS`."""
    known = REASONS.get(status)
    if known is not None:
        return known
    return b"Client Error" if status < 500 else b"Server Error"


def _rendered(status: int) -> tuple[bytes, bytes, bytes]:
    cached = _RENDERED.get(status)
    if cached is None:
        phrase = reason(status)
        title = b"%d %s" % (status, phrase)
        body = (
            b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title></head>\n"
            b"<body><h1>%s</h1></body></html>\n" % (title, title)
        )
        cached = _RENDERED[status] = (phrase, body, b"%d" % len(body))
    return cached


def error_response(
    status: int,
    *,
    server: bytes,
    close: bool,
    head_only: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete HTTP/1.1 error response for ``status`` (400-599), ready to write.

    Fields, in order: Content-Type, Content-Length, Cache-Control: no-store,
    Server (left out when ``server`` is b""), Connection: close (when
    ``close``), then ``extra_headers`` as given (Allow for 405, Retry-After for
    503, Date, ...; they must not repeat a field above). ``head_only`` (a HEAD
    request) leaves the body out but keeps its Content-Length, as RFC 9110
    §9.3.2 asks.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"error_response needs a 4xx or 5xx status, got {status}")
    phrase, body, length = _rendered(status)
    headers = [_CONTENT_TYPE, (b"Content-Length", length), _CACHE_CONTROL]
    if server:
        headers.append((b"Server", server))
    if close:
        headers.append(_CLOSE)
    headers.extend(extra_headers)
    head = serialize_head(b"HTTP/1.1 %d %s" % (status, phrase), headers)
    return head if head_only else head + body
