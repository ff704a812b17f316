"""Where a ``redirect_https = true`` listener sends each request, and the answer. Pure.

Each request is answered with a redirect to ``https://HOST[:PORT]TARGET``: the
host the client asked for (without its port), the listener's
``redirect_https_port`` (left out when 443) and the request target as sent,
query included.  GET and HEAD get 301; other methods get 308, which tells the
client to repeat the same method and body (RFC 9110 §15.4.9), where after a
301 a client may turn a POST into a GET (§15.4.2).

The front end (:mod:`gateway.frontend`) reads such requests with the same
parser, limits and timeouts as any other and answers with
:func:`redirect_response`; nothing is forwarded.
"""

from __future__ import annotations

from gateway.headers import serialize_head
from gateway.parser import Request
from gateway.routing import split_target


def location(request: Request, port: int) -> bytes | None:
    """Where ``request`` goes on HTTPS, or None when it names no host.

    Pure.  The host comes from Host (or an absolute-form target's authority,
    as the parser decided), less any port; IPv6 literals keep their brackets.
    """
    host = request.host
    target = request.target
    if target[:1] != b"/":
        authority, target = split_target(target)
        if target == b"*":
            target = b"/"  # OPTIONS *: the server itself, which is "/" on HTTPS
        host = authority or host
    if host[:1] == b"[":
        host = host[: host.find(b"]") + 1]
    else:
        host = host.partition(b":")[0]
    if not host or host == b"[]":
        return None
    suffix = b"" if port == 443 else b":%d" % port
    return b"https://" + host.lower() + suffix + target


def redirect_response(
    request: Request, where: bytes, *, server: bytes, date: bytes, close: bool
) -> tuple[int, bytes]:
    """``(status, bytes)`` of the redirect: 301 for GET/HEAD, 308 otherwise. Pure."""
    status, phrase = (301, b"Moved Permanently")
    if request.method not in (b"GET", b"HEAD"):
        status, phrase = (308, b"Permanent Redirect")
    headers = [(b"Location", where), (b"Content-Length", b"0"), (b"Date", date)]
    if server:
        headers.append((b"Server", server))
    if close:
        headers.append((b"Connection", b"close"))
    return status, serialize_head(b"HTTP/1.1 %d %s" % (status, phrase), headers)
