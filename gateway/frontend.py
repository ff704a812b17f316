"""The HTTP/1.1 server side: accept, parse, enforce limits, route, answer errors.

Invariants:
- Requests on one connection are handled strictly one at a time, so pipelined
  requests are answered in order (RFC 9112 §9.3.2). While one is in flight, at
  most ``max_header_size`` bytes of what follows are buffered; then reading
  pauses until the exchange is done.
- Every byte of memory per connection is bounded: the head buffer by
  ``max_header_size``, bodies by backpressure (``gateway.pauses``).
- Only this module turns a :class:`GatewayError` into a response, always with the
  gateway's own page (``gateway.pages``).
- A bug never reaches the reactor: an unexpected exception is logged with its
  traceback and answered with 500, and the process keeps serving.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import accesslog
from gateway.chunked import ChunkedDecoder
from gateway.deadline import Deadline
from gateway.headers import forwarded_element
from gateway.cache.flow import CacheExchange
from gateway.cache.purge import handle_purge
from gateway.errors import (
    GatewayError,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    ParseError,
    RequestTimeout,
)
from gateway.exchange import Exchange
from gateway.fastwrite import file_sender_for, writer_for
from gateway.httpdate import http_date
from gateway.pages import error_response
from gateway.parser import Request, check_partial_head, head_end, parse_request
from gateway.pauses import Pauses
from gateway.redirect import location, redirect_response
from gateway.routing import split_target
from gateway.tls import client_subject

if TYPE_CHECKING:
    from gateway.config import ListenerConfig
    from gateway.runtime import Runtime
    from gateway.upstream import Reactor

log = Logger()

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ConnState(enum.Enum):
    """States of :class:`ClientConnection`.

    - IDLE: between requests, nothing buffered; ``timeout_idle`` runs.
    - HEAD: part of a request head has arrived; ``timeout_header`` runs (408).
    - ACTIVE: an exchange is running; ``timeout_client`` runs while the gateway
      waits for body bytes or the client is not reading, ``timeout_request``
      caps the whole exchange.
    - CLOSING: the last answer is written; the transport closes after flushing.
    - CLOSED: the transport is gone.
    """

    IDLE = "idle"
    HEAD = "head"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


class ClientConnection(Protocol):
    """One client connection on one listener."""

    factory: GatewayFactory

    def __init__(self, factory: GatewayFactory, peer_ip: str, peer_port: int) -> None:
        self.factory = factory
        self.reactor = factory.reactor
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.proto = factory.proto
        self.listener_name = factory.listener_name.encode("ascii")
        self.peer_trusted = False
        #: The verified client-certificate subject (mTLS), read at the first request.
        self.client_subject: bytes | None = None
        #: (lower-cased, as configured) name of the header that carries it.
        self.subject_header: tuple[bytes, bytes] = (b"", b"")
        self._subject_read = False
        self.state = ConnState.IDLE
        #: Requests begun on this connection (0: new, nothing asked yet).
        self.requests = 0
        self.pauses: Pauses
        self._buf = b""
        self._scan = 0
        self._request: Request | None = None
        self._exchange: Exchange | CacheExchange | None = None
        self._started = 0.0
        self._body_open = False
        self._body_remaining = 0
        self._body_received = 0
        self._decoder: ChunkedDecoder | None = None
        #: timeout_idle, timeout_header or timeout_client, by state (see ConnState).
        self._deadline = Deadline(self.reactor)
        #: timeout_request: caps one whole exchange.
        self._request_deadline = Deadline(self.reactor)
        self._in_data = False
        self._parsing = False
        self._forwarded: tuple[bytes, bytes] = (b"", b"")

    @property
    def accepting(self) -> bool:
        """False once the service is shutting down: answers then close the connection."""
        return self.factory.accepting

    def forwarded_element(self, host: bytes) -> bytes:
        """Our RFC 7239 Forwarded element for a request to ``host``, kept per connection."""
        known_host, element = self._forwarded
        if element and known_host == host:
            return element
        element = forwarded_element(self.peer_ip, self.peer_port, self.proto, host, self.listener_name)
        self._forwarded = (host, element)
        return element

    # -- Twisted callbacks ---------------------------------------------------

    def connectionMade(self) -> None:
        self.write, self.write_sequence = writer_for(self.transport)
        self.send_file = file_sender_for(self.transport)
        self.pauses = Pauses(self.transport.pauseProducing, self.transport.resumeProducing)
        self.peer_trusted = self.peer_ip in self.factory.runtime().trusted
        self._deadline.arm(self._listener().timeout_idle, self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self._in_data = True
        try:
            state = self.state
            if state is ConnState.ACTIVE:
                if self._body_open:
                    self._feed_body(data)
                else:
                    self._buf += data
                    if len(self._buf) > self._listener().max_header_size:
                        self.pauses.add("pipeline")
            elif state is ConnState.IDLE or state is ConnState.HEAD:
                self._buf = self._buf + data if self._buf else data
                self._read_heads()
        except Exception:
            log.failure("unexpected error handling a request from {peer}", peer=self.peer_ip)
            self._crashed()
        finally:
            self._in_data = False

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.state = ConnState.CLOSED
        self._deadline.stop()
        self._request_deadline.stop()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.abandon()
            # 499: nginx's "client closed request", so operators recognise it.
            self._log(exchange, 499, note="client closed connection")
        self.factory.connection_closed(self)

    # -- request heads -----------------------------------------------------------

    def _read_heads(self) -> None:
        """Start every complete request head in the buffer, one after the other.

        The only loop over pipelined requests: an answer that completes inside
        ``_begin`` (a cache hit, a redirect, a 404) comes back here through
        :meth:`_next` rather than recursing, so a client's pipeline depth never
        becomes stack depth.
        """
        self._parsing = True
        try:
            self._read_each_head()
        finally:
            self._parsing = False

    def _read_each_head(self) -> None:
        listener = self._listener()
        limits = self.factory.runtime().limits[self.factory.listener_name]
        while self.state is ConnState.IDLE or self.state is ConnState.HEAD:
            buf = self._buf
            if self.state is ConnState.IDLE:
                # RFC 9112 §2.2: a server SHOULD ignore at least one empty line
                # received prior to the request-line.
                while buf[:2] == b"\r\n":
                    buf = self._buf = buf[2:]
                if not buf:
                    return
            end = head_end(buf, self._scan)
            if end < 0:
                if self.state is ConnState.IDLE:
                    self.state = ConnState.HEAD
                    self._deadline.arm(listener.timeout_header, self._header_timeout)
                try:
                    check_partial_head(buf, limits)
                except ParseError as exc:
                    self._reject(exc, None)
                    return
                self._scan = max(0, len(buf) - 3)
                return
            self._buf = buf[end:]
            self._scan = 0
            try:
                request = parse_request(buf[:end], limits)
            except ParseError as exc:
                self._reject(exc, None)
                return
            self._begin(request, listener)

    def _begin(self, request: Request, listener: ListenerConfig) -> None:
        """Route the request and start its exchange."""
        self.state = ConnState.ACTIVE
        self.requests += 1
        self._request = request
        self._started = self.reactor.seconds()
        self._deadline.disarm()
        limit = listener.max_body_size
        if limit and request.content_length > limit:
            self._reject(ParseError("Content-Length over max_body_size", 413), request)
            return
        self._body_received = 0
        self._body_remaining = request.content_length
        self._decoder = ChunkedDecoder() if request.chunked else None
        target = request.target
        if target[:1] == b"/" or target == b"*":
            host, path = request.host, target
        else:
            # RFC 9112 §3.2.2: with an absolute-form target, the Host field is
            # replaced by the target's authority.
            host, path = split_target(target)
        runtime = self.factory.runtime()
        self.subject_header = runtime.subject_headers[self.factory.listener_name]
        if not self._subject_read and listener.tls_client_auth != "off":
            # The handshake is complete once a request has been decrypted.
            self._subject_read = True
            self.client_subject = client_subject(self.transport)
        if listener.redirect_https:
            self._redirect(request, listener, runtime)
            return
        if request.method == b"PURGE" and runtime.cache is not None:
            self._purge(request, host, path, runtime)
            return
        route = runtime.routes[self.factory.listener_name].match(
            host, path, request.method, request.headers
        )
        if route is None:
            self._reject(NotFound("no route"), request)
            return
        backend = runtime.backends[route.backend]
        exchange: Exchange | CacheExchange
        if route.cache and runtime.cache is not None:
            exchange = CacheExchange(self, request, path, host, route, backend, runtime)
        else:
            exchange = Exchange(self, request, path, host, route, backend, runtime)
        self._exchange = exchange
        if listener.timeout_request:
            self._request_deadline.arm(listener.timeout_request, self._request_timeout)
        exchange.start()

    def _redirect(self, request: Request, listener: ListenerConfig, runtime: Runtime) -> None:
        """``redirect_https``: answer 301/308 to the same host and target on HTTPS.

        Nothing is read of a body, so a request with one is answered and the
        connection closed. No Strict-Transport-Security: RFC 6797 §7.2 forbids
        it over plain HTTP.
        """
        where = location(request, listener.redirect_https_port)
        if where is None:
            self._reject(ParseError("no host to redirect to", 400), request)
            return
        close = request.chunked or request.content_length > 0 or not request.keep_alive
        status, head = redirect_response(
            request,
            where,
            server=runtime.server_header,
            date=http_date(self.reactor.seconds()),
            close=close or not self.accepting,
        )
        self._end_request()
        self.write(head)
        self._log_line(request, status, 0, "-", -1.0)
        self._next(not close)

    def _purge(self, request: Request, host: bytes, path: bytes, runtime: Runtime) -> None:
        """PURGE a URL, or a URL prefix (``/prefix*``): from ``cache_purge_from`` only, else 405."""
        purged = handle_purge(
            runtime, self.factory.listener_name, self.peer_ip, request, host, path,
            now=self.reactor.seconds(), accepting=self.accepting,
        )  # fmt: skip
        if purged is None:
            self._reject(MethodNotAllowed("PURGE from an address not in cache_purge_from"), request)
            return
        self._end_request()
        self.write(purged.answer)
        self._log_line(request, 200, purged.body_length, "-", -1.0)
        self._next(purged.keep_alive)

    # -- request bodies ----------------------------------------------------------

    def body_wanted(self, exchange: Exchange) -> None:
        """The upstream is ready: let the request body flow to ``exchange``."""
        if exchange is not self._exchange:
            return
        request = self._request
        assert request is not None
        self._body_open = True
        buf, self._buf = self._buf, b""
        if request.expect_continue and not buf:
            # RFC 9110 §10.1.1: the client waits for 100 before sending the body.
            self.write(CONTINUE)
        self.pauses.discard("pipeline")
        self._deadline.arm(self._listener().timeout_client, self._client_timeout)
        if buf:
            self._feed_body(buf)

    def _feed_body(self, data: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._deadline.arm(self._listener().timeout_client, self._client_timeout)
        remaining = self._body_remaining
        if remaining > 0:
            if len(data) < remaining:
                self._body_remaining = remaining - len(data)
                exchange.request_body(data)
                return
            self._body_remaining = 0
            exchange.request_body(data[:remaining] if len(data) > remaining else data)
            self._body_complete(data[remaining:])
            return
        decoder = self._decoder
        assert decoder is not None
        try:
            pieces, leftover = decoder.feed(data)
            limit = self._listener().max_body_size
            for piece in pieces:
                self._body_received += len(piece)
                if limit and self._body_received > limit:
                    raise ParseError("chunked body over max_body_size", 413)
                exchange.request_body(piece)
        except ParseError as exc:
            self._body_open = False
            self._exchange = None
            exchange.abandon()
            self._reject(exc, self._request, exchange)
            return
        if leftover is not None:
            self._body_complete(leftover)

    def _body_complete(self, rest: bytes) -> None:
        self._body_open = False
        self._decoder = None
        self._buf = rest
        self._deadline.disarm()
        exchange = self._exchange
        if exchange is not None:
            exchange.request_body_end()

    # -- exchange results ----------------------------------------------------------

    def exchange_done(self, exchange: Exchange, *, keep_alive: bool) -> None:
        """The response has been written in full."""
        if exchange is not self._exchange:
            return
        self._exchange = None
        self._end_request()
        self._log(exchange, exchange.status)
        self._next(keep_alive)

    def exchange_failed(
        self, exchange: Exchange, error: GatewayError, *, response_started: bool
    ) -> None:
        """The exchange failed; answer with our page, or cut a started response."""
        if exchange is not self._exchange:
            return
        self._exchange = None
        self._end_request()
        self._log(exchange, error.status if not response_started else exchange.status, error.reason)
        if response_started:
            self.state = ConnState.CLOSING
            self.transport.abortConnection()
            return
        request = self._request
        assert request is not None
        keep_alive = request.keep_alive and not self._body_open and self._body_pending() == 0
        self._body_open = False
        self._write_error(error.status, request, keep_alive, error.headers)
        self._next(keep_alive)

    # -- errors ----------------------------------------------------------------------

    def _reject(
        self, error: GatewayError, request: Request | None, exchange: Exchange | None = None
    ) -> None:
        """Answer a client-side error with our page and a log line."""
        self._end_request()
        if error.status < 500:
            log.info(
                "rejected request from {peer}: {status} {reason}",
                peer=self.peer_ip,
                status=error.status,
                reason=error.reason,
            )
        if exchange is not None:
            self._log(exchange, error.status, error.reason)
        else:
            self._log_line(request, error.status, 0, "-", -1.0)
        # Keep the connection only when the request is fully read and sane.
        keep_alive = (
            request is not None
            and request.keep_alive
            and error.status == 404
            and not request.chunked
            and request.content_length == 0
        )
        self._write_error(error.status, request, keep_alive, error.headers)
        self._next(keep_alive)

    def _write_error(
        self,
        status: int,
        request: Request | None,
        keep_alive: bool,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        runtime = self.factory.runtime()
        self.write(
            error_response(
                status,
                server=runtime.server_header,
                close=not keep_alive,
                head_only=request is not None and request.method == b"HEAD",
                extra_headers=self._error_headers(runtime, extra),
            )
        )

    def _error_headers(
        self, runtime: Runtime, extra: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[tuple[bytes, bytes], ...]:
        """Date, HSTS on TLS listeners that set it, and the error's own fields."""
        date = (b"Date", http_date(self.reactor.seconds()))
        hsts = runtime.hsts[self.factory.listener_name]
        if hsts is None:
            return (date, *extra)
        return (date, (b"Strict-Transport-Security", hsts), *extra)

    def _crashed(self) -> None:
        """A bug: answer 500 when nothing was sent yet, then close."""
        exchange, self._exchange = self._exchange, None
        started = exchange is not None and exchange.responding
        if exchange is not None:
            exchange.abandon()
        if self.state is ConnState.CLOSED:
            return
        if not started:
            self._write_error(500, None, False)
        self.state = ConnState.CLOSING
        self.transport.loseConnection()

    # -- timers ------------------------------------------------------------------------

    def await_first_request(self) -> None:
        """Shutdown: a new connection gets ``timeout_header`` for its first request, then closes."""
        self._deadline.arm(self._listener().timeout_header, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.state = ConnState.CLOSING
        self.transport.loseConnection()

    def _header_timeout(self) -> None:
        self._reject(RequestTimeout("request head not received within timeout_header"), None)

    def _client_timeout(self) -> None:
        """The client stopped sending its body or stopped reading our answer."""
        self._give_up(RequestTimeout("client stalled past timeout_client"))

    def _request_timeout(self) -> None:
        self._give_up(GatewayTimeout("timeout_request reached"))

    def _give_up(self, error: GatewayError) -> None:
        """Drop the running exchange; answer ``error`` if no response began."""
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        responding = exchange.responding
        exchange.abandon()
        self._body_open = False
        if responding:
            self._end_request()
            self._log(exchange, exchange.status, error.reason)
            self.state = ConnState.CLOSING
            self.transport.abortConnection()
        else:
            self._reject(error, self._request, exchange)

    def client_write_blocked(self) -> None:
        """The client's socket buffer is full: start its inactivity clock."""
        self._deadline.arm(self._listener().timeout_client, self._client_timeout)

    def client_write_unblocked(self) -> None:
        """The client is reading again."""
        if not self._body_open:
            self._deadline.disarm()

    # -- helpers ---------------------------------------------------------------------

    def _next(self, keep_alive: bool) -> None:
        """After an answer: close, or go back to reading the next request."""
        if self.state is ConnState.CLOSED:
            return
        if not keep_alive or not self.accepting:
            self.state = ConnState.CLOSING
            self.transport.loseConnection()
            return
        self.state = ConnState.IDLE
        self._request = None
        self.pauses.discard("pipeline")
        self._deadline.arm(self._listener().timeout_idle, self._idle_timeout)
        if self._buf and not self._parsing:  # (parsing: its loop takes the next head)
            if self._in_data:
                self._read_heads()
            else:
                # Called from the upstream's callbacks: parse the pipelined
                # request on a fresh stack rather than inside theirs.
                self.reactor.callLater(0, self._resume_pipeline)

    def _resume_pipeline(self) -> None:
        if self.state is ConnState.IDLE and self._buf:
            try:
                self._read_heads()
            except Exception:
                log.failure("unexpected error handling a request from {peer}", peer=self.peer_ip)
                self._crashed()

    def _body_pending(self) -> int:
        """Body bytes the client still owes (-1: unknown, chunked in progress)."""
        if self._decoder is not None:
            return -1
        return self._body_remaining

    def _end_request(self) -> None:
        self._request_deadline.disarm()
        self._deadline.disarm()

    def _listener(self) -> ListenerConfig:
        return self.factory.runtime().listeners[self.factory.listener_name]

    def _log(self, exchange: Exchange, status: int, note: str | None = None) -> None:
        """The access line, preceded by a note on what went wrong, if anything did.

        Notes on gateway-made 5xx answers and on cut-off responses are warnings;
        a client that went away is ordinary (info).
        """
        if note is not None:
            emit = log.warn if status >= 500 or exchange.responding else log.info
            emit(
                "{method} {path} from {peer}: {status} {note}",
                method=exchange.request.method.decode("latin-1"),
                path=exchange.path.decode("latin-1"),
                peer=self.peer_ip,
                status=status,
                note=note,
            )
        self._log_line(
            exchange.request, status, exchange.body_bytes, exchange.upstream_address,
            exchange.upstream_time,
        )

    def _log_line(
        self, request: Request | None, status: int, body_bytes: int, upstream: str,
        upstream_time: float,
    ) -> None:
        if not self.factory.runtime().access_log:
            return
        now = self.reactor.seconds()
        referer = user_agent = None
        if request is not None:
            request_line = b"%s %s %s" % (request.method, request.target, request.version)
            for name, value in request.headers:
                lower = name.lower()
                if lower == b"referer":
                    referer = value
                elif lower == b"user-agent":
                    user_agent = value
            total = now - self._started
        else:
            request_line = b"-"
            total = 0.0
        accesslog.emit(
            accesslog.combined_line(
                peer=self.peer_ip,
                request_line=request_line,
                status=status,
                body_bytes=body_bytes,
                referer=referer,
                user_agent=user_agent,
                upstream=upstream,
                upstream_time=upstream_time,
                total_time=total,
                now=now,
            )
        )


@implementer(IProtocolNegotiationFactory)
class GatewayFactory(Factory):
    """Builds client connections for one listener; counts them against its limit.

    ``runtime`` is a callable returning the live :class:`Runtime`, so a reload
    that swaps it reaches every connection at its next request. Listeners with
    ``redirect_https`` use it too: their connections answer with redirects.
    """

    noisy = False

    def __init__(
        self,
        reactor: Reactor,
        runtime: Callable[[], Runtime],
        listener_name: str,
        proto: bytes = b"http",
    ) -> None:
        self.reactor = reactor
        self.runtime = runtime
        self.listener_name = listener_name
        self.proto = proto
        self.accepting = True
        self.connections: set[ClientConnection] = set()

    def buildProtocol(self, addr: object) -> ClientConnection | None:
        listener = self.runtime().listeners[self.listener_name]
        if len(self.connections) >= listener.max_connections:
            log.warn(
                "listener {name}: max_connections ({limit}) reached; refusing {addr}",
                name=self.listener_name,
                limit=listener.max_connections,
                addr=addr,
            )
            return None
        if isinstance(addr, (IPv4Address, IPv6Address)):
            conn = ClientConnection(self, addr.host, addr.port)
        else:
            conn = ClientConnection(self, "unix", 0)
        self.connections.add(conn)
        return conn

    def connection_closed(self, conn: ClientConnection) -> None:
        """Forget a connection once its transport is gone."""
        self.connections.discard(conn)

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN (RFC 7301): HTTP/1.1 only, for now.

        Twisted's TLS for ``ssl:`` endpoints asks the wrapped factory; without
        this a client that offers ALPN (curl, browsers) gets an internal-error
        alert instead of a handshake.
        """
        return [b"http/1.1"]

    def stop_accepting(self) -> None:
        """Shutdown: idle keep-alive connections close now, busy ones after their answer.

        A new connection that has asked nothing yet is given ``timeout_header``
        instead: its first request may already be on the wire (it was
        accepted just before the listener closed), and unlike a request on a
        reused connection (RFC 9112 §9.3.1) the client has no cause to retry it.
        """
        self.accepting = False
        for conn in list(self.connections):
            if conn.state is not ConnState.IDLE:
                continue
            if conn.requests:
                conn.state = ConnState.CLOSING
                conn.transport.loseConnection()
            else:
                conn.await_first_request()
