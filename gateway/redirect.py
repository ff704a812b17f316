"""A plain-HTTP listener that sends every request to HTTPS (``redirect_https = true``).

Each request is answered with a redirect to ``https://HOST[:PORT]TARGET``: the
host the client asked for (without its port), the listener's
``redirect_https_port`` (left out when 443) and the request target as sent,
query included.  GET and HEAD get 301; other methods get 308, which tells the
client to repeat the same method and body (RFC 9110 §15.4.9), where after a
301 a client may turn a POST into a GET (§15.4.2).

Requests are read with the same parser and limits as a proxying listener
(:mod:`gateway.parser`; ``max_request_line``, ``max_header_size``,
``max_header_count``, ``timeout_header``, ``timeout_idle``, ``max_connections``)
and malformed ones get the gateway's error page.  A request with a body is
answered and the connection closed, since nothing here reads bodies.  No
Strict-Transport-Security here: RFC 6797 §7.2 forbids it over plain HTTP.

Invariants: nothing is forwarded and nothing is buffered beyond one head
(``max_header_size``); the reactor is injected; one connection's state is in
:class:`RedirectConnection`, the listener's in :class:`RedirectFactory`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import accesslog
from gateway.errors import ParseError
from gateway.frontend import ListenerFactory
from gateway.headers import serialize_head
from gateway.httpdate import http_date
from gateway.pages import error_response
from gateway.parser import Request, check_partial_head, head_end, parse_request
from gateway.routing import split_target

if TYPE_CHECKING:
    from gateway.config import ListenerConfig
    from gateway.runtime import Runtime

log = Logger()


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


class State(enum.Enum):
    """States of :class:`RedirectConnection`.

    - IDLE: between requests, nothing buffered; ``timeout_idle`` runs.
    - HEAD: part of a head has arrived; ``timeout_header`` runs (408).
    - CLOSING: the last answer is written; the transport closes after flushing.
    - CLOSED: the transport is gone.
    """

    IDLE = "idle"
    HEAD = "head"
    CLOSING = "closing"
    CLOSED = "closed"


class RedirectConnection(Protocol):
    """One client connection on a redirecting listener."""

    def __init__(self, factory: RedirectFactory, peer_ip: str) -> None:
        self.factory = factory
        self.peer_ip = peer_ip
        self.state = State.IDLE
        self._buf = b""
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._arm(self._listener().timeout_idle, self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.state is not State.IDLE and self.state is not State.HEAD:
            return  # closing: whatever follows is not read
        self._buf += data
        try:
            self._read_heads()
        except Exception:
            log.failure("unexpected error answering a redirect for {peer}", peer=self.peer_ip)
            self._answer_error(500, None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.state = State.CLOSED
        self._cancel()
        self.factory.connection_closed(self)

    def _read_heads(self) -> None:
        runtime = self.factory.runtime()
        limits = runtime.limits[self.factory.listener_name]
        listener = self._listener()
        while self.state is State.IDLE or self.state is State.HEAD:
            buf = self._buf
            if self.state is State.IDLE:
                # RFC 9112 §2.2: ignore at least one empty line before a request.
                while buf[:2] == b"\r\n":
                    buf = self._buf = buf[2:]
                if not buf:
                    return
            end = head_end(buf)
            if end < 0:
                if self.state is State.IDLE:
                    self.state = State.HEAD
                    self._arm(listener.timeout_header, self._header_timeout)
                try:
                    check_partial_head(buf, limits)
                except ParseError as exc:
                    self._answer_error(exc.status, None)
                return
            self._buf = buf[end:]
            try:
                request = parse_request(buf[:end], limits)
            except ParseError as exc:
                self._answer_error(exc.status, None)
                return
            self._answer(request, runtime, listener)

    def _answer(self, request: Request, runtime: Runtime, listener: ListenerConfig) -> None:
        where = location(request, listener.redirect_https_port)
        if where is None:
            self._answer_error(400, request)
            return
        has_body = request.chunked or request.content_length > 0
        close = has_body or not request.keep_alive or not self.factory.accepting
        now = self.factory.reactor.seconds()
        status, head = redirect_response(
            request, where, server=runtime.server_header, date=http_date(now), close=close
        )
        self.transport.write(head)
        self._log(request, status, runtime)
        if close:
            self._close()
        else:
            self.state = State.IDLE
            self._arm(listener.timeout_idle, self._idle_timeout)

    def _answer_error(self, status: int, request: Request | None) -> None:
        runtime = self.factory.runtime()
        now = self.factory.reactor.seconds()
        self.transport.write(
            error_response(
                status,
                server=runtime.server_header,
                close=True,
                head_only=request is not None and request.method == b"HEAD",
                extra_headers=((b"Date", http_date(now)),),
            )
        )
        self._log(request, status, runtime)
        self._close()

    def _log(self, request: Request | None, status: int, runtime: Runtime) -> None:
        if not runtime.access_log:
            return
        line = b"-"
        user_agent = referer = None
        if request is not None:
            line = b"%s %s %s" % (request.method, request.target, request.version)
            for name, value in request.headers:
                lower = name.lower()
                if lower == b"user-agent":
                    user_agent = value
                elif lower == b"referer":
                    referer = value
        accesslog.emit(
            accesslog.combined_line(
                peer=self.peer_ip, request_line=line, status=status, body_bytes=0,
                referer=referer, user_agent=user_agent, upstream="-", upstream_time=-1.0,
                total_time=0.0, now=self.factory.reactor.seconds(),
            )
        )

    def _close(self) -> None:
        self._cancel()
        self.state = State.CLOSING
        self.transport.loseConnection()

    def _idle_timeout(self) -> None:
        self._timer = None
        self._close()

    def _header_timeout(self) -> None:
        self._timer = None
        self._answer_error(408, None)

    def _listener(self) -> ListenerConfig:
        return self.factory.runtime().listeners[self.factory.listener_name]

    def _arm(self, seconds: float, call: Callable[[], None]) -> None:
        self._cancel()
        self._timer = self.factory.reactor.callLater(seconds, call)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class RedirectFactory(ListenerFactory):
    """Builds redirecting connections for one listener, within ``max_connections``."""

    def connect(self, peer_ip: str, peer_port: int) -> RedirectConnection:
        return RedirectConnection(self, peer_ip)

    def stop_accepting(self) -> None:
        """Shutdown: every connection closes; a redirect is never worth waiting for."""
        self.accepting = False
        for conn in list(self.connections):
            if conn.state is not State.CLOSED:
                conn.state = State.CLOSING
                conn.transport.loseConnection()
